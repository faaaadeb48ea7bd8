"""Baseline routers behind the same interface: random, single best expert, kNN on embeddings, oracle.

Each predicts a category from the label set of the trained two-stage artifact (or from
options) and maps it to experts with the same stage-2 map, so routers differ only in
stage 1. Options (ctx.options):
  labels, train_embeddings, train_labels   training data (default: the artifact's neighbors)
  k_neighbors (knn, 10)   gold: {text: label} (oracle)   seed (random)
"""

from __future__ import annotations

import numpy as np

from routers.base import RouteDecision, Router, RouterContext, register
from routers.two_stage.artifact import load_artifact
from routers.two_stage.router import make_expert_map


class LabelRouter(Router):
    """Shared plumbing: a label set, the stage-2 map, and decisions from label probabilities."""

    def __init__(self, ctx: RouterContext, labels: list[str], train_labels: np.ndarray | None,
                 train_embeddings: np.ndarray | None, parents: dict | None = None):
        self.labels = list(labels)
        self.train_labels = train_labels
        self.train_embeddings = train_embeddings
        counts = np.bincount(train_labels, minlength=len(labels)) if train_labels is not None else np.ones(len(labels))
        self.prior = counts / counts.sum()
        weights = {lab: float(self.prior[i]) for i, lab in enumerate(self.labels)}
        self.map = make_expert_map(ctx, self.labels, parents, weights)
        self.options = ctx.options

    @classmethod
    def build(cls, ctx: RouterContext) -> "LabelRouter":
        opts = ctx.options
        if "labels" in opts and "train_labels" in opts:
            labels = list(opts["labels"])
            y = np.asarray(opts["train_labels"])
            if y.dtype.kind in "US" or (y.dtype == object):
                y = np.array([labels.index(v) for v in y])
            x = opts.get("train_embeddings")
            return cls(ctx, labels, y, None if x is None else np.asarray(x, dtype=np.float32), opts.get("parents"))
        art = load_artifact(ctx.artifacts_dir, opts.get("artifact"), encoder_id=ctx.embedder.id)
        x, y = art.neighbors()
        return cls(ctx, art.labels, y.astype(int), x, art.manifest.get("parents"))

    def decisions(self, probs: np.ndarray, k: int, reason: str) -> list[RouteDecision]:
        out = []
        for p in probs:
            order = np.argsort(-p, kind="stable")
            cat = self.labels[order[0]]
            out.append(RouteDecision(self.map.experts_for(cat, k), self.name, cat, float(p[order[0]]),
                                     [(self.labels[j], float(p[j])) for j in order[:3]], False, reason))
        return out

    def predict_proba(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def route(self, texts: list[str], embeddings: np.ndarray, k: int = 1) -> list[RouteDecision]:
        if len(texts) == 0:
            return []
        return self.decisions(self.predict_proba(texts, embeddings), k, self.reason)


@register("random")
class RandomRouter(LabelRouter):
    reason = "uniformly random category"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rng = np.random.default_rng(int(self.options.get("seed", 0)))

    def predict_proba(self, texts, embeddings):
        probs = np.full((len(texts), len(self.labels)), 0.0)
        probs[np.arange(len(texts)), self.rng.integers(0, len(self.labels), len(texts))] = 1.0
        return probs


@register("single_best")
class SingleBestRouter(LabelRouter):
    """Every query to the one expert that is best overall: the map's expert for the most frequent category."""

    reason = "single best expert (most frequent training category)"

    def predict_proba(self, texts, embeddings):
        return np.tile(self.prior, (len(texts), 1))


@register("knn")
class KnnRouter(LabelRouter):
    """Majority vote (cosine-weighted) of the k nearest training questions."""
    serving = True

    reason = "k nearest training questions"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_embeddings is None:
            raise ValueError("knn router needs training embeddings (train_embeddings option or a trained artifact)")
        self.k = int(self.options.get("k_neighbors", 10))

    def predict_proba(self, texts, embeddings):
        sims = embeddings @ self.train_embeddings.T
        k = min(self.k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        probs = np.zeros((len(texts), len(self.labels)))
        for row in range(len(texts)):
            np.add.at(probs[row], self.train_labels[idx[row]], np.maximum(sims[row, idx[row]], 0.0) + 1e-6)
        return probs / probs.sum(axis=1, keepdims=True)


@register("oracle")
class OracleRouter(LabelRouter):
    """The gold category (options['gold']: text -> label); the upper bound for stage 1."""

    reason = "gold label (oracle)"

    def predict_proba(self, texts, embeddings):
        gold = self.options.get("gold")
        if gold is None:
            raise ValueError("oracle router needs options['gold']: a mapping text -> gold label")
        probs = np.zeros((len(texts), len(self.labels)))
        for row, t in enumerate(texts):
            probs[row, self.labels.index(gold[t])] = 1.0
        return probs
