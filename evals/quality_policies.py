"""Routing policies judged on the same held-out items: which expert(s) answer each item, at what compute.

Every expert has already answered every test item through the service's dispatch path (coe.expert_runs),
greedily, so a policy that sends an item to expert e gets exactly e's graded answer; only the aggregation
step of k > 1 policies runs new jobs. Compute of an answer is the expert's active parameters (billions)
times the tokens it read and wrote; an expert drawn twice by a k > 1 policy is paid twice, as the
service would run it twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from coe.expert_runs import Answer, ItemRecord


@dataclass
class Choice:
    """What a policy did for one item."""

    experts: list[str]
    correct: bool
    compute: float  # active params (B) x tokens, summed over every model call
    engine_s: float
    aggregator: str | None = None


@dataclass
class PolicyRun:
    name: str
    kind: str  # single | random | two_stage | skills | oracle
    choices: list[Choice] = field(default_factory=list)
    setting: dict = field(default_factory=dict)


def cost(answer: Answer, params_b: dict[str, float]) -> float:
    return params_b[answer.expert] * answer.tokens


def single(records: list[ItemRecord], expert: str, params_b: dict[str, float]) -> PolicyRun:
    run = PolicyRun(expert, "single", setting={"expert": expert})
    for r in records:
        a = r.answers[expert]
        run.choices.append(Choice([expert], a.correct, cost(a, params_b), a.engine_s))
    return run


def routed(name: str, kind: str, records: list[ItemRecord], picks: list[str], params_b: dict[str, float],
           setting: dict | None = None) -> PolicyRun:
    """One expert per item, as a router decided."""
    run = PolicyRun(name, kind, setting=setting or {})
    for r, e in zip(records, picks):
        a = r.answers[e]
        run.choices.append(Choice([e], a.correct, cost(a, params_b), a.engine_s))
    return run


def uniform_random(records: list[ItemRecord], experts: list[str], params_b: dict[str, float], seed: int) -> PolicyRun:
    rng = random.Random(seed)
    return routed("random", "random", records, [rng.choice(experts) for _ in records], params_b, {"seed": seed})


def oracle(records: list[ItemRecord], experts: list[str], params_b: dict[str, float]) -> PolicyRun:
    """The cheapest expert that answers correctly, if any does (else the cheapest): the upper bound."""
    picks = []
    for r in records:
        by_cost = sorted(experts, key=lambda e: cost(r.answers[e], params_b))
        picks.append(next((e for e in by_cost if r.answers[e].correct), by_cost[0]))
    return routed("oracle", "oracle", records, picks, params_b)


def aggregated(name: str, records: list[ItemRecord], candidates: list[list[str]], merged: list[Answer],
               aggregator: str, params_b: dict[str, float], setting: dict) -> PolicyRun:
    """k candidates per item merged by the aggregator, as the service always does for k > 1."""
    run = PolicyRun(name, "skills", setting=setting)
    for r, cands, final in zip(records, candidates, merged):
        answers = [r.answers[e] for e in cands]
        compute = sum(cost(a, params_b) for a in answers)
        engine_s = sum(a.engine_s for a in answers)
        run.choices.append(Choice(cands, final.correct, compute + cost(final, params_b), engine_s + final.engine_s,
                                  aggregator))
    return run
