"""Nearest-centroid routing over what each expert declares in experts.yaml.

Each expert's description, categories and skills are embedded; the expert whose
centroid is closest to the query wins. It needs no training data, so it is the
router a fresh deployment starts with.
"""

from __future__ import annotations

import numpy as np

from routers.base import RouteDecision, Router, RouterContext, register


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = (x - x.max(axis=-1, keepdims=True)) / temperature
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@register("centroid")
class CentroidRouter(Router):
    serving = True

    def __init__(self, ctx: RouterContext):
        self.temperature = float(ctx.options.get("temperature", 0.05))
        self.tau = float(ctx.options.get("tau", 0.0))
        registry = ctx.registry
        self.fallback = registry.fallback.name if registry.fallback else None
        labels: list[tuple[str, str]] = []
        for e in registry.experts.values():
            if e.aggregator and not e.categories:
                continue
            for text in [e.description, *e.categories, *e.skills]:
                if text.strip():
                    labels.append((e.name, text.strip()))
        if not labels:
            raise ValueError("centroid router needs at least one expert with a description, categories or skills")
        self.label_expert = [name for name, _ in labels]
        self.label_text = [text for _, text in labels]
        self.label_vecs = ctx.embedder.encode(self.label_text)
        self.experts = sorted(set(self.label_expert), key=self.label_expert.index)
        centroids = []
        for name in self.experts:
            rows = self.label_vecs[[i for i, n in enumerate(self.label_expert) if n == name]]
            c = rows.mean(axis=0)
            centroids.append(c / (np.linalg.norm(c) or 1.0))
        self.centroids = np.stack(centroids)

    def route(self, texts: list[str], embeddings: np.ndarray, k: int = 1) -> list[RouteDecision]:
        if len(texts) == 0:
            return []
        sims = embeddings @ self.centroids.T
        probs = softmax(sims, self.temperature)
        label_sims = embeddings @ self.label_vecs.T
        decisions = []
        for row, p in enumerate(probs):
            order = np.argsort(-p)
            best = self.experts[order[0]]
            own = [i for i, n in enumerate(self.label_expert) if n == best]
            category = self.label_text[max(own, key=lambda i: label_sims[row, i])]
            confidence = float(p[order[0]])
            top = [(self.experts[j], float(p[j])) for j in order[:3]]
            if confidence < self.tau and self.fallback:
                decisions.append(RouteDecision([self.fallback], self.name, category, confidence, top, True,
                                               f"confidence {confidence:.2f} < tau {self.tau:.2f}"))
                continue
            chosen = [self.experts[j] for j in order[: max(1, k)]]
            decisions.append(RouteDecision(chosen, self.name, category, confidence, top, False,
                                           f"nearest expert centroid (cos {sims[row, order[0]]:.2f})"))
        return decisions
