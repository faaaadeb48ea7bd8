"""Stage 2: category -> expert, from a score table S[expert][category].

S comes from an evaluation run of the experts (a profile file written by `coe profile` or
`coe bench quality`: per-item records grouped by stage 1's predicted category and shrunk, see
stage2_fit.py; or per-category counts only, {"experts": {name: {"categories": {cat: {"correct", "total"}}}}})
or, when no run exists, from the categories each expert declares in experts.yaml.
The map maximises S[e][c] - cost_weight * cost(e) per category and, given an average
active-parameter budget, keeps the traffic-weighted mean of params_b under it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from routers.two_stage.stage2_fit import fit_profile

if TYPE_CHECKING:
    from coe.core.registry import Registry

DECLARED_SCORE = 1.0
PRIOR_SCORE = 0.1
FALLBACK_PRIOR = 0.15  # a label no expert declares goes to the fallback expert, not to the cheapest one


class Stage2Error(ValueError):
    """The registry or score table cannot produce a category -> expert map."""


@dataclass
class ScoreTable:
    experts: list[str]
    labels: list[str]
    scores: np.ndarray  # [expert, label]
    source: str
    notes: list[str] = field(default_factory=list)

    def score(self, expert: str, label: str) -> float:
        return float(self.scores[self.experts.index(expert), self.labels.index(label)])


def candidate_experts(registry: "Registry") -> list[str]:
    """Experts that answer queries: everyone except an aggregator that declares nothing to answer."""
    names = [e.name for e in registry.experts.values() if not (e.aggregator and not e.categories and not e.fallback)]
    if not names:
        raise Stage2Error(f"{registry.path}: no expert can answer queries (only an aggregator is declared)")
    return names


def declared_scores(registry: "Registry", labels: list[str], parents: dict[str, list[str]] | None = None) -> ScoreTable:
    """1.0 for a declared category, PRIOR_SCORE otherwise (FALLBACK_PRIOR for the fallback expert). For a
    coarse label (e.g. 'STEM') whose finer members are given in `parents`, the score is the share of members
    the expert declares."""
    experts = candidate_experts(registry)
    scores = np.full((len(experts), len(labels)), PRIOR_SCORE)
    for i, name in enumerate(experts):
        if registry.experts[name].fallback:
            scores[i, :] = FALLBACK_PRIOR
        declared = {c.strip().lower() for c in registry.experts[name].categories}
        for j, label in enumerate(labels):
            members = (parents or {}).get(label)
            if label.lower() in declared:
                scores[i, j] = DECLARED_SCORE
            elif members:
                share = sum(m.lower() in declared for m in members) / len(members)
                scores[i, j] = max(PRIOR_SCORE, share * DECLARED_SCORE)
    return ScoreTable(experts, labels, scores, "declared categories (experts.yaml); measure them with coe profile")


def profile_scores(registry: "Registry", labels: list[str], profile_path: Path,
                   parents: dict[str, list[str]] | None = None, artifact_version: str | None = None,
                   prior_strength: float | None = None) -> ScoreTable:
    """Measured, shrunk accuracy per expert and label from a profile file (stage2_fit.fit_profile); a label
    with no measured item, and an expert the profile does not hold, keep their declared score."""
    try:
        data = json.loads(Path(profile_path).read_text())
        if not isinstance(data["experts"], dict):
            raise TypeError("'experts' is not a mapping")
        table = declared_scores(registry, labels, parents)
        fit = fit_profile(data, table.experts, labels, parents, artifact_version, prior_strength)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise Stage2Error(f"{profile_path}: not a readable profile file ({exc})") from None
    for i, name in enumerate(fit.experts):
        row = table.experts.index(name)
        measured = ~np.isnan(fit.scores[i])
        table.scores[row, measured] = fit.scores[i, measured]
    unmeasured = [lab for lab, n in zip(labels, fit.items) if n == 0]
    table.notes = fit.notes + ([f"{len(unmeasured)} labels without profiled items keep declared scores: "
                                f"{', '.join(unmeasured[:8])}{' ...' if len(unmeasured) > 8 else ''}"] if unmeasured else [])
    table.source = f"profile {profile_path}: {fit.describe()}"
    return table


def load_scores(registry: "Registry", labels: list[str], profile_path: Path | None,
                parents: dict[str, list[str]] | None = None, artifact_version: str | None = None,
                prior_strength: float | None = None) -> ScoreTable:
    if profile_path is not None and Path(profile_path).exists():
        return profile_scores(registry, labels, Path(profile_path), parents, artifact_version, prior_strength)
    return declared_scores(registry, labels, parents)


def expert_costs(registry: "Registry", experts: list[str]) -> np.ndarray:
    """Cost in [0, 2]: active parameters relative to the largest, plus price relative to the priciest."""
    params = np.array([registry.experts[e].params_b for e in experts], dtype=float)
    price = np.array([registry.experts[e].cost_per_1k_tokens for e in experts], dtype=float)
    cost = params / params.max()
    if price.max() > 0:
        cost = cost + price / price.max()
    return cost


@dataclass
class ExpertMap:
    """The chosen expert per label, and every expert ranked per label."""

    assignment: dict[str, str]
    ranking: dict[str, list[str]]
    utility: dict[str, dict[str, float]]
    avg_params_b: float
    budget_b: float | None
    cost_weight: float
    source: str
    notes: list[str] = field(default_factory=list)
    score: dict[str, dict[str, float]] = field(default_factory=dict)  # S[label][expert], before cost

    def experts_for(self, label: str, k: int = 1) -> list[str]:
        return self.ranking[label][: max(1, k)]

    def to_json(self) -> dict:
        return {"assignment": self.assignment, "avg_params_b": round(self.avg_params_b, 4), "budget_b": self.budget_b,
                "cost_weight": self.cost_weight, "source": self.source, "notes": self.notes}


def build_map(table: ScoreTable, registry: "Registry", cost_weight: float = 0.0,
              budget_b: float | None = None, label_weights: dict[str, float] | None = None) -> ExpertMap:
    """Per label, the expert maximising S - cost_weight * cost. With a budget on the traffic-weighted
    average params_b, a Lagrange multiplier on params_b is raised (bisection) until the map fits."""
    experts, labels = table.experts, table.labels
    params = np.array([registry.experts[e].params_b for e in experts], dtype=float)
    base = table.scores - cost_weight * expert_costs(registry, experts)[:, None]
    w = np.array([(label_weights or {}).get(c, 1.0) for c in labels], dtype=float)
    w = w / w.sum()

    def assign(mu: float) -> np.ndarray:
        util = base - mu * params[:, None]
        # ties: cheaper expert first, then registry order
        order = np.lexsort((np.arange(len(experts)), params))
        return order[np.argmax(util[order], axis=0)]

    def avg_params(choice: np.ndarray) -> float:
        return float((params[choice] * w).sum())

    mu = 0.0
    choice = assign(0.0)
    notes = list(table.notes)
    if budget_b is not None and avg_params(choice) > budget_b:
        hi = 1.0
        while avg_params(assign(hi)) > budget_b and hi < 1e9:
            hi *= 4
        if avg_params(assign(hi)) > budget_b:
            notes.append(f"budget {budget_b}B is below the cheapest possible map; using the cheapest experts")
            mu = hi
        else:
            lo = 0.0
            for _ in range(60):
                mid = (lo + hi) / 2
                if avg_params(assign(mid)) > budget_b:
                    lo = mid
                else:
                    hi = mid
            mu = hi
        choice = assign(mu)
    util = base - mu * params[:, None]
    assignment = {c: experts[choice[j]] for j, c in enumerate(labels)}
    ranking = {}
    for j, c in enumerate(labels):
        rest = sorted((i for i in range(len(experts)) if i != choice[j]), key=lambda i: (-util[i, j], params[i], i))
        ranking[c] = [experts[choice[j]]] + [experts[i] for i in rest]
    utility = {c: {experts[i]: float(util[i, j]) for i in range(len(experts))} for j, c in enumerate(labels)}
    score = {c: {experts[i]: float(table.scores[i, j]) for i in range(len(experts))} for j, c in enumerate(labels)}
    return ExpertMap(assignment, ranking, utility, avg_params(choice), budget_b, cost_weight, table.source, notes, score)
