"""Per-query quality and cost, learnt from measured outcomes: which expert will answer *this* query right, and at
what compute.

The data are the quality benchmark's validation answers (`coe bench quality` writes them as an outcomes file):
every expert, a (model, strategy) pair, answered every item, and each answer was graded, counted in tokens and
given a confidence. From them, as RouteLLM learns a win-rate per query rather than per category:

  quality   per expert, a logistic regression of "answered right" on the query embedding (RouteLLM's
            classifier routers; kNN on the same embedding is the alternative, `predictor: knn`);
  compute   per expert, the mean compute (active parameters x tokens read and written, all attempts) of the
            query's nearest validation items: a program's and an answer's lengths depend on the question.

`choose` then takes, per query, the expert with the highest predicted quality minus a cost weight times its
predicted compute (relative to the dearest expert's mean). `calibrate_cascade` sets a cascade's thresholds on
the stored confidences so that the cascade keeps a target quality at the least compute.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEIGHBOURS = 15
QUANTILES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Outcomes:
    """Graded answers of every expert to the same items: rows are items, columns experts."""

    texts: list[str]
    domains: list[str]
    experts: list[str]
    correct: np.ndarray  # (n, E) bool
    compute: np.ndarray  # (n, E) B·tok, every attempt counted
    confidence: np.ndarray  # (n, E), NaN where the engine could not tell

    def subset(self, experts: list[str]) -> "Outcomes":
        cols = [self.experts.index(e) for e in experts]
        return Outcomes(self.texts, self.domains, list(experts), self.correct[:, cols], self.compute[:, cols],
                        self.confidence[:, cols])


def outcomes_from_records(records: list[dict], params_b: dict[str, float]) -> Outcomes:
    """Records as the quality benchmark stores them ({text, domain, answers: {expert: {correct, prompt_tokens,
    completion_tokens, confidence}}}), for the experts in `params_b` that every record answers."""
    experts = [e for e in params_b if all(e in r["answers"] for r in records)]
    correct = np.array([[bool(r["answers"][e]["correct"]) for e in experts] for r in records], dtype=bool)
    compute = np.array([[params_b[e] * (r["answers"][e]["prompt_tokens"] + r["answers"][e]["completion_tokens"])
                         for e in experts] for r in records], dtype=float)
    conf = np.array([[np.nan if r["answers"][e].get("confidence") is None else r["answers"][e]["confidence"]
                      for e in experts] for r in records], dtype=float)
    return Outcomes([r["text"] for r in records], [r["domain"] for r in records], experts, correct, compute, conf)


def load_outcomes(path: Path, params_b: dict[str, float] | None = None) -> Outcomes:
    """An outcomes file: {"experts": {name: {"params_b": ...}}, "records": [...]}; `params_b` (the registry's)
    overrides the file's and restricts the experts to those registered."""
    data = json.loads(Path(path).read_text())
    params = {e: float(v["params_b"]) for e, v in data["experts"].items()}
    if params_b is not None:
        params = {e: params_b[e] for e in params if e in params_b}
    if not params:
        raise ValueError(f"{path}: none of its experts is registered here")
    return outcomes_from_records(data["records"], params)


class QualityPredictor:
    """Predicted probability of a right answer and predicted compute, per query and expert."""

    def __init__(self, kind: str = "logistic", c: float = 1.0):
        if kind not in ("logistic", "knn"):
            raise ValueError(f"predictor '{kind}': choose logistic or knn")
        self.kind, self.c = kind, c
        self.models: list = []
        self.train_x: np.ndarray | None = None
        self.train: Outcomes | None = None

    def fit(self, x: np.ndarray, outcomes: Outcomes) -> "QualityPredictor":
        from sklearn.linear_model import LogisticRegression

        self.train_x, self.train = _unit(x), outcomes
        self.models = []
        for j in range(len(outcomes.experts)):
            y = outcomes.correct[:, j]
            if self.kind == "knn" or y.all() or not y.any():
                self.models.append(float(y.mean()))  # constant: nothing to separate
            else:
                self.models.append(LogisticRegression(C=self.c, max_iter=2000).fit(self.train_x, y))
        return self

    def _neighbours(self, x: np.ndarray) -> np.ndarray:
        sims = _unit(x) @ self.train_x.T
        k = min(NEIGHBOURS, sims.shape[1])
        return np.argpartition(-sims, k - 1, axis=1)[:, :k]

    def quality(self, x: np.ndarray) -> np.ndarray:
        """(n, E) probability that each expert answers each query right."""
        nb = self._neighbours(x) if self.kind == "knn" else None
        cols = []
        for j, m in enumerate(self.models):
            if nb is not None:
                cols.append(self.train.correct[:, j][nb].mean(axis=1))
            elif isinstance(m, float):
                cols.append(np.full(len(x), m))
            else:
                cols.append(m.predict_proba(_unit(x))[:, 1])
        return np.stack(cols, axis=1)

    def compute(self, x: np.ndarray) -> np.ndarray:
        """(n, E) expected compute of each expert on each query: the mean over its nearest validation items."""
        return self.train.compute[self._neighbours(x)].mean(axis=1)

    @property
    def reference_compute(self) -> float:
        """The dearest expert's mean compute: cost weights are relative to it."""
        return float(self.train.compute.mean(axis=0).max())


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def choose(quality: np.ndarray, compute: np.ndarray, cost_weight: float, reference: float) -> np.ndarray:
    """Per query, the expert maximising predicted quality - cost_weight x compute / reference."""
    return np.argmax(quality - cost_weight * compute / max(reference, 1e-12), axis=1)


@dataclass
class Cascade:
    """Experts tried in order; step i's answer is kept when its confidence >= thresholds[i] (the last always)."""

    chain: list[int]
    thresholds: list[float]

    def run(self, outcomes: Outcomes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Replay on stored answers: (correct, compute, index of the step that answered) per item."""
        n = len(outcomes.texts)
        correct = np.zeros(n, dtype=bool)
        compute = np.zeros(n)
        step = np.full(n, len(self.chain) - 1)
        open_ = np.ones(n, dtype=bool)
        for i, j in enumerate(self.chain):
            compute[open_] += outcomes.compute[open_, j]
            last = i == len(self.chain) - 1
            conf = np.nan_to_num(outcomes.confidence[:, j], nan=-1.0)
            keep = open_ & (last | (conf >= self.thresholds[i]))
            correct[keep] = outcomes.correct[keep, j]
            step[keep] = i
            open_ &= ~keep
        return correct, compute, step


def calibrate_cascade(outcomes: Outcomes, target: float, max_len: int = 3) -> tuple[Cascade, float, float]:
    """The cascade (chain in increasing mean compute, thresholds from the confidences' quantiles) with the least
    mean compute whose quality on `outcomes` reaches `target`; else the one of highest quality. Returns it with
    its quality and mean compute there."""
    order = list(np.argsort(outcomes.compute.mean(axis=0)))
    best, best_key = None, None
    for length in range(2, max_len + 1):
        for chain in itertools.combinations(order, length):
            grids = [sorted({float(np.nanquantile(outcomes.confidence[:, j], q)) if np.isfinite(outcomes.confidence[:, j]).any()
                             else 2.0 for q in QUANTILES} | {2.0}) for j in chain[:-1]]
            for ts in itertools.product(*grids):
                cascade = Cascade(list(chain), [*ts, 0.0])
                correct, compute, _ = cascade.run(outcomes)
                quality, cost = float(correct.mean()), float(compute.mean())
                key = (0, cost, -quality) if quality >= target else (1, -quality, cost)
                if best_key is None or key < best_key:
                    best, best_key = (cascade, quality, cost), key
    return best
