"""Where the pipeline meets a key's budget: admission before any job is queued, the charge after, and the one place
a budget running low changes routing.

run, stream
        read the payer's standing, plan the request (cheaper when less than COE_BUDGET_LOW_SHARE is left),
        reserve the plan's bound (coe/budget_costs.py; BudgetExceededError, a 429, if a cap would pass), and when
        the request ends charge it: an answer's real counts; nothing for a failure or a semantic-cache hit; the
        whole reservation for a request whose client left (its jobs may have run).
cheaper a router that weighs each query's cost (`per_query_cost`, the quality router) decides again as a copy built
        with COE_BUDGET_COST_WEIGHT; for the others each chosen expert gives way to the cheapest of its route.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from coe import conversation_routing, metrics
from coe.budget_costs import NOTHING, cheapest_of_route, outcome_charge, plan_bound, unit_price
from coe.budgets import Ledger, Standing, Ticket
from coe.conversation_cues import CONTINUATIONS
from coe.core.registry import Registry
from coe.core.settings import Settings
from coe.embed_batcher import EmbedBatcher
from coe.pipeline_types import ChatInput, Cheaper, Outcome, Plan
from routers import RouteDecision, Router, RouterContext, build_router


class Planner(Protocol):
    """What the gate uses of the pipeline (coe/pipeline.py)."""

    registry: Registry
    settings: Settings
    default_router: str
    batcher: EmbedBatcher

    async def plan(self, inp: ChatInput, low: Standing | None = None) -> Plan: ...

    async def get_router(self, name: str | None) -> Router: ...

    def router_context(self, name: str) -> RouterContext: ...


@dataclass
class Admission:
    """An admitted request: its plan, its reservation, and its outcome once there is one."""

    plan: Plan
    ticket: Ticket | None
    outcome: Outcome | None = None


class BudgetGate:
    def __init__(self, ledger: Ledger, pipeline: Planner):
        self.ledger = ledger
        self.pipeline = pipeline
        self.registry = pipeline.registry
        self.settings = pipeline.settings
        self._frugal: dict[str, Router] = {}  # per router name: a copy built with COE_BUDGET_COST_WEIGHT

    async def run(self, inp: ChatInput, run_plan: Callable[[Plan, ChatInput, float], Awaitable[Outcome]]) -> Outcome:
        """`run_plan(plan, inp, started)` for the admitted plan."""
        started = time.perf_counter()
        async with self._admit(inp) as admission:
            admission.outcome = await run_plan(admission.plan, inp, started)
        return admission.outcome

    async def stream(self, inp: ChatInput, stream_plan: Callable[[Plan, ChatInput, float], AsyncIterator]
                     ) -> AsyncIterator:
        """`stream_plan(plan, inp, started)`'s events for the admitted plan; a client that leaves closes both (its
        jobs are cancelled, its reservation charged)."""
        started = time.perf_counter()
        async with self._admit(inp) as admission, aclosing(stream_plan(admission.plan, inp, started)) as events:
            async for event in events:
                if isinstance(event, Outcome):
                    admission.outcome = event
                yield event

    @asynccontextmanager
    async def _admit(self, inp: ChatInput) -> AsyncIterator[Admission]:
        standing = await self.ledger.standing(inp.payer)
        low = standing if standing is not None and standing.left_share < self.settings.budget_low_share else None
        plan = await self.pipeline.plan(inp, low)
        bound = plan_bound(plan, self.registry, self.registry.aggregator, self.settings.budget_price_per_btok)
        admission = Admission(plan, await self.ledger.reserve(inp.payer, bound))
        abandoned = False
        try:
            yield admission
        except (asyncio.CancelledError, GeneratorExit):
            abandoned = admission.outcome is None
            raise
        finally:
            await self._charge(admission, abandoned)

    async def _charge(self, admission: Admission, abandoned: bool) -> None:
        ticket = admission.ticket
        if ticket is None:
            return
        if admission.outcome is not None and admission.outcome.cache is not None and admission.outcome.cache.hit:
            spent = NOTHING  # answered from the semantic cache: no expert ran
        elif admission.outcome is not None:
            spent = outcome_charge(admission.outcome, self.registry, self.settings.budget_price_per_btok)
        else:
            spent = ticket.held if abandoned else NOTHING
        await self.ledger.settle(ticket, spent)

    async def cheaper(self, decision: RouteDecision, inp: ChatInput, k: int,
                      low: Standing | None) -> tuple[RouteDecision, Cheaper | None]:
        """The decision for a key whose budget runs low (`low`; None: the decision as it is). Fallbacks and
        cascades stand; so does a decision nothing cheaper can replace."""
        if low is None or decision.fallback or decision.cascade:
            return decision, None
        name = inp.router or self.pipeline.default_router
        price = {n: unit_price(e, self.settings.budget_price_per_btok) for n, e in self.registry.experts.items()}
        if (await self.pipeline.get_router(name)).per_query_cost:
            cheaper = await self._decide_frugally(name, inp, k)
        else:
            cheaper = replace(decision, experts=cheapest_of_route(decision, self.registry, price))
        if sum(price.get(e, 0.0) for e in cheaper.experts) >= sum(price.get(e, 0.0) for e in decision.experts):
            return decision, None
        metrics.BUDGET_CHEAPER.labels(low.identity).inc()
        reason = f"budget {low.left_share:.0%} left, cheaper than {', '.join(decision.experts)}: {cheaper.reason}"
        return replace(cheaper, reason=reason), Cheaper(list(decision.experts), low.left_share)

    async def _decide_frugally(self, name: str, inp: ChatInput, k: int) -> RouteDecision:
        """The conversation decided by router `name` built with COE_BUDGET_COST_WEIGHT (the encodings are cached)."""
        if name not in self._frugal:
            ctx = self.pipeline.router_context(name)
            ctx.options["cost_weight"] = self.settings.budget_cost_weight
            self._frugal[name] = await asyncio.to_thread(build_router, name, ctx)
        policy = conversation_routing.ConversationPolicy.from_settings(self.settings)
        turns = conversation_routing.human_turns(inp.messages, policy)
        vectors = np.asarray(await self.pipeline.batcher.encode(turns))
        cues = np.asarray(await self.pipeline.batcher.encode(list(CONTINUATIONS)))
        decision, _ = await asyncio.to_thread(conversation_routing.decide, self._frugal[name], turns, vectors, k,
                                              policy, cues)
        return decision
