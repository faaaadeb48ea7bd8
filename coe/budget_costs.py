"""What a request costs a key's budget: tokens, and cost from each expert's price.

An expert's price is its `price_per_1k_input` / `price_per_1k_output` (experts.yaml), else `cost_per_1k_tokens`
for both, else, for a local expert with no price, its active parameters x tokens (the B·tok the benchmarks count)
at `COE_BUDGET_PRICE_PER_BTOK`. Before a request runs, its plan is priced at a bound (`plan_bound`): every call it
may make, each at the UTF-8 bytes of its messages (a byte-level tokenizer never makes more tokens than bytes) plus
a few template tokens per message, plus its max_tokens. After it, the real counts are charged (`outcome_charge`).
"""

from __future__ import annotations

from dataclasses import dataclass

from coe.core.registry import ExpertConfig, Registry
from coe.pipeline_types import Outcome, Plan
from routers import RouteDecision
from workers.jobs import GenerationRequest

TEMPLATE_TOKENS = 8  # a chat template's special tokens around one message, and once around the whole prompt


@dataclass(frozen=True)
class Charge:
    tokens: int
    cost: float

    def __add__(self, other: "Charge") -> "Charge":
        return Charge(self.tokens + other.tokens, self.cost + other.cost)


NOTHING = Charge(0, 0.0)


def call_charge(expert: ExpertConfig, prompt_tokens: int, completion_tokens: int, price_per_btok: float) -> Charge:
    """One call of `expert`: its tokens, and their cost at the expert's price."""
    tokens = prompt_tokens + completion_tokens
    if expert.price_per_1k_input is not None or expert.price_per_1k_output is not None:
        cost = (prompt_tokens * (expert.price_per_1k_input or 0.0)
                + completion_tokens * (expert.price_per_1k_output or 0.0)) / 1000
    elif expert.cost_per_1k_tokens > 0:
        cost = tokens * expert.cost_per_1k_tokens / 1000
    else:
        cost = expert.params_b * tokens * price_per_btok
    return Charge(tokens, cost)


def unit_price(expert: ExpertConfig, price_per_btok: float) -> float:
    """What 1,000 prompt and 1,000 completion tokens cost with `expert`: how experts compare on price."""
    return call_charge(expert, 1000, 1000, price_per_btok).cost


def prompt_bound(messages: list[dict]) -> int:
    return sum(len(str(m.get("content", "")).encode()) + TEMPLATE_TOKENS for m in messages) + TEMPLATE_TOKENS


def request_bound(registry: Registry, expert: str, request: GenerationRequest, price_per_btok: float) -> Charge:
    return call_charge(registry.experts[expert], prompt_bound(request.messages), request.max_tokens, price_per_btok)


def plan_bound(plan: Plan, registry: Registry, aggregator: ExpertConfig | None, price_per_btok: float) -> Charge:
    """The most `plan` may spend: each job (twice for a strategy that may fall back to a direct answer), each later
    step of a cascade, and the aggregation of k answers (the question plus every answer, then its own answer)."""
    total = NOTHING
    for job, ask in zip(plan.jobs, plan.asks or [None] * len(plan.jobs)):
        once = request_bound(registry, job.expert, job.request, price_per_btok)
        total += once + once if ask is not None else once
    first = plan.jobs[0].request
    for name, _ in plan.decision.cascade[1:]:
        step = call_charge(registry.experts[name], prompt_bound(first.messages), first.max_tokens, price_per_btok)
        total += step + step
    if aggregator is not None and len(plan.jobs) > 1:
        answers = sum(j.request.max_tokens for j in plan.jobs)
        total += call_charge(aggregator, prompt_bound(first.messages) + answers, first.max_tokens, price_per_btok)
    return total


def outcome_charge(outcome: Outcome, registry: Registry, price_per_btok: float) -> Charge:
    """What an answered request really spent: every expert's counts at its price, and the aggregator's."""
    total = NOTHING
    for a in outcome.answers:
        if a.expert in registry.experts:
            total += call_charge(registry.experts[a.expert], a.prompt_tokens, a.completion_tokens, price_per_btok)
    rest_prompt = outcome.prompt_tokens - sum(a.prompt_tokens for a in outcome.answers)
    rest_completion = outcome.completion_tokens - sum(a.completion_tokens for a in outcome.answers)
    if outcome.aggregator in registry.experts:
        total += call_charge(registry.experts[outcome.aggregator], rest_prompt, rest_completion, price_per_btok)
    elif rest_prompt + rest_completion:
        total += Charge(rest_prompt + rest_completion, 0.0)
    return total


def cheapest_of_route(decision: RouteDecision, registry: Registry, price: dict[str, float]) -> list[str]:
    """The decision's experts, cheapest first among those serving its route: the experts that declare its category,
    else those sharing a category with the first chosen expert (a router whose category is no route)."""
    def serves(names: set[str]) -> list[str]:
        return [e.name for e in registry.experts.values() if names & {c.strip().lower() for c in e.categories}]

    category = (decision.category or "").strip().lower()
    route = serves({category})
    if not route and decision.experts and decision.experts[0] in registry.experts:
        route = serves({c.strip().lower() for c in registry.experts[decision.experts[0]].categories})
    cheapest = sorted(route, key=lambda e: price[e])[:len(decision.experts)]
    return cheapest + [e for e in decision.experts if e not in cheapest][:len(decision.experts) - len(cheapest)]
