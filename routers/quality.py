"""Routers that decide per query from measured outcomes (routers/outcomes.py), not per category.

quality  the expert with the highest predicted chance of a right answer minus `cost_weight` x its predicted
         compute (relative to the dearest expert): RouteLLM's per-query routing over (model, strategy) pairs.
cascade  the cheapest expert of a chain answers first; a doubtful answer (confidence under the step's threshold)
         goes to the next: FrugalGPT's cascade. The chain and thresholds are calibrated on the outcomes to keep
         `target` x the best single expert's quality there at the least compute, unless options give them.

Both read an outcomes file: option `outcomes`, else `outcomes.json` beside experts.yaml (what `coe bench quality`
measured for the default experts). Experts it does not cover are never chosen; the start-up line says which.
Options: outcomes, cost_weight, predictor (logistic | knn), target (cascade), chain + thresholds (cascade).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routers.base import Arm, RouteDecision, Router, RouterContext, register
from routers.outcomes import Cascade, QualityPredictor, calibrate_cascade, choose, load_outcomes

OUTCOMES_FILE = "outcomes.json"


def outcomes_path(ctx: RouterContext) -> Path:
    return Path(ctx.options.get("outcomes") or ctx.registry.path.parent / OUTCOMES_FILE)


class OutcomeRouter(Router):
    """Shared plumbing: the outcomes of the registered experts, embedded with the service's encoder."""

    def __init__(self, ctx: RouterContext):
        path = outcomes_path(ctx)
        if not path.exists():
            raise FileNotFoundError(f"router '{self.name}' needs measured outcomes at {path} "
                                    f"(coe bench quality writes them; or set the router option 'outcomes')")
        params = {e.name: e.params_b for e in ctx.registry.experts.values()}
        self.outcomes = load_outcomes(path, params)
        self.options = ctx.options
        self.x = np.asarray(ctx.embedder.encode(self.outcomes.texts))
        uncovered = sorted(set(params) - set(self.outcomes.experts))
        self.source = (f"{path}: {len(self.outcomes.texts)} measured items of {', '.join(self.outcomes.experts)}"
                       + (f"; never chosen (not measured): {', '.join(uncovered)}" if uncovered else ""))


@register("quality")
class QualityRouter(OutcomeRouter):
    serving = True
    per_query_cost = True

    def __init__(self, ctx: RouterContext):
        super().__init__(ctx)
        self.cost_weight = float(ctx.options.get("cost_weight", ctx.cost_weight))
        self.predictor = QualityPredictor(ctx.options.get("predictor", "logistic")).fit(self.x, self.outcomes)

    def route(self, texts: list[str], embeddings: np.ndarray, k: int = 1) -> list[RouteDecision]:
        if len(texts) == 0:
            return []
        quality = self.predictor.quality(embeddings)
        compute = self.predictor.compute(embeddings)
        ref = self.predictor.reference_compute
        score = quality - self.cost_weight * compute / ref
        experts = self.outcomes.experts
        out = []
        for q, c, s in zip(quality, compute, score):
            ranked = np.argsort(-s, kind="stable")
            order = ranked[:max(1, k)]
            best = order[0]
            out.append(RouteDecision(
                [experts[j] for j in order], self.name, None, float(q[best]),
                [(experts[j], float(q[j])) for j in np.argsort(-q, kind="stable")[:3]], False,
                f"p(right)={q[best]:.2f} at ~{c[best]:.0f} B·tok (cost weight {self.cost_weight:g})",
                arms=[Arm(experts[j], float(q[j]), float(q[j] - s[j])) for j in ranked]))
        return out


@register("cascade")
class CascadeRouter(OutcomeRouter):
    serving = True

    def __init__(self, ctx: RouterContext):
        super().__init__(ctx)
        names = self.outcomes.experts
        if "chain" in ctx.options:
            chain = [names.index(e) for e in ctx.options["chain"]]
            thresholds = [float(t) for t in ctx.options.get("thresholds", [0.5] * (len(chain) - 1))] + [0.0]
            self.cascade = Cascade(chain, thresholds)
        else:
            best_single = float(self.outcomes.correct.mean(axis=0).max())
            target = float(ctx.options.get("target", 1.0)) * best_single
            self.cascade, quality, cost = calibrate_cascade(self.outcomes, target)
            self.source += f"; calibrated to quality {quality:.3f} (target {target:.3f}) at {cost:.0f} B·tok a query"
        self.steps = [(names[j], t) for j, t in zip(self.cascade.chain, self.cascade.thresholds)]

    def route(self, texts: list[str], embeddings: np.ndarray, k: int = 1) -> list[RouteDecision]:
        chain = " -> ".join(f"{e} (keep at {t:.2f})" for e, t in self.steps[:-1]) + f" -> {self.steps[-1][0]}"
        return [RouteDecision([self.steps[0][0]], self.name, None, 1.0, [], False, f"cascade {chain}",
                              cascade=list(self.steps)) for _ in texts]
