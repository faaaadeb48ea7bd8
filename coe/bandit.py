"""Online learning from feedback: Thompson sampling among the experts a decision chose among, with the router's own
estimate as the prior.

Each expert of a decision's `arms` (routers/base.py: the router's pick first, each with the router's chance of a good
answer and the penalty it weighs against it, e.g. cost) gets a Beta posterior: the prior has mean = the router's chance
and weight `prior_strength` feedback events; the evidence is the discounted feedback scores that expert was given on
this route (coe/bandit_store.py). One draw per expert, minus the router's penalty, picks the expert. With no
feedback the posterior means rank the experts exactly as the router did, so the router's pick is the best-looking
expert, and any other draw is exploration: a key may spend at most `explore_cap` of its routed requests per window on
it (else the best-looking expert answers). A route is the router and its category, or, for a router with no
categories (the per-query `quality` router), the router and its pick: "queries the router sends to X".

Only single-expert decisions with at least two arms are touched: not k > 1, cascades, fallbacks for low confidence,
or an expert named by the client. Statistics that cannot be read or written cost a request nothing: the router's
decision stands.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np

from coe import metrics
from coe.bandit_store import ArmStats, ArmStore, make_arm_store
from routers.base import Arm, BanditChoice, RouteDecision

log = logging.getLogger("coe.bandit")
ANONYMOUS = "anonymous"
"""The key whose share an open service's callers (no API keys configured) spend together."""
CHANCE_FLOOR = 0.01
"""A router's chance of exactly 0 or 1 would make a prior no feedback can move."""


def route_of(decision: RouteDecision) -> str:
    """The statistics a decision is learnt under: its router and category, or the router and its pick."""
    return f"{decision.router}:{decision.category or decision.experts[0]}"


def posterior(arm: Arm, stats: ArmStats, prior_strength: float) -> tuple[float, float, float]:
    """(alpha, beta, mean) of an expert's Beta posterior. The mean is the router's chance exactly when there is no
    evidence, so that ranking by mean - penalty reproduces the router's own order."""
    chance = min(max(arm.chance, 0.0), 1.0)
    n = stats.successes + stats.failures
    mean = chance + (stats.successes - chance * n) / (prior_strength + n)
    floored = min(max(chance, CHANCE_FLOOR), 1 - CHANCE_FLOOR)
    return prior_strength * floored + stats.successes, prior_strength * (1 - floored) + stats.failures, mean


class Bandit:
    def __init__(self, store: ArmStore, prior_strength: float = 10.0, explore_cap: float = 0.1,
                 window_s: float = 3600.0, rng: np.random.Generator | None = None):
        self.store = store
        self.prior_strength, self.explore_cap, self.window_s = prior_strength, explore_cap, window_s
        self.rng = rng or np.random.default_rng()
        self._warned = False

    @classmethod
    def from_settings(cls, settings) -> "Bandit":
        return cls(make_arm_store(settings, decay_for(settings.bandit_half_life)), settings.bandit_prior_strength,
                   settings.bandit_explore_cap, settings.bandit_window_s)

    def _unreachable(self, what: str, exc: Exception) -> None:
        if not self._warned:
            log.warning("bandit statistics cannot be %s (%s: %s); the router's choices stand", what,
                        type(exc).__name__, exc)
            self._warned = True

    async def choose(self, decision: RouteDecision, key: str) -> RouteDecision:
        """The decision with its expert drawn from the posteriors; `key` is the caller whose exploration share is
        spent. Decisions the bandit does not touch come back as they are."""
        arms = decision.arms
        if len(decision.experts) != 1 or decision.cascade or decision.fallback or len(arms) < 2:
            return decision
        route = route_of(decision)
        try:
            stats = await self.store.stats(route, [a.expert for a in arms])
            params = [posterior(a, stats[a.expert], self.prior_strength) for a in arms]
            best = int(np.argmax([mean - a.penalty for a, (_, _, mean) in zip(arms, params)]))
            drawn = int(np.argmax([self.rng.beta(al, be) - a.penalty for a, (al, be, _) in zip(arms, params)]))
            explored = await self.store.admit(key, drawn != best, self.explore_cap, self.window_s)
        except Exception as exc:  # noqa: BLE001 - statistics are an optimisation; the router's decision stands
            self._unreachable("read", exc)
            return decision
        self._warned = False
        chosen = arms[drawn if explored else best].expert
        pick = decision.experts[0]
        metrics.BANDIT_CHOICES.labels(decision.router, _outcome(chosen != pick, explored, drawn != best)).inc()
        reason = decision.reason if chosen == pick else (
            f"{decision.reason}; online bandit: {chosen} instead of {pick} ({'exploring' if explored else 'feedback'})")
        return replace(decision, experts=[chosen], reason=reason, bandit=BanditChoice(route, pick, explored))

    async def learn(self, completion_id: str, route: str, expert: str, score: float) -> bool:
        """Count a completion's feedback score for the expert that answered it on its route; a completion counts
        once. False when it had counted already or the statistics cannot be written."""
        try:
            return await self.store.record(completion_id, route, expert, score)
        except Exception as exc:  # noqa: BLE001 - the feedback itself is stored; only the statistics miss it
            self._unreachable("written", exc)
            return False

    async def close(self) -> None:
        await self.store.close()


def _outcome(changed: bool, explored: bool, wanted: bool) -> str:
    if explored:
        return "explored"
    if wanted:
        return "capped"  # the draw wanted to explore; the key's share was spent
    return "changed" if changed else "kept"


def decay_for(half_life: float | None) -> float:
    """The per-event discount for a half-life in feedback events (None or inf: no discount)."""
    return 1.0 if half_life is None or math.isinf(half_life) else 0.5 ** (1.0 / half_life)
