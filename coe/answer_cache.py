"""A request's way through the semantic cache: looked up once it is routed, answered from the cache on a hit, its
answer kept on a miss (coe/cache_policy.py says which requests and under which bucket; coe/semantic_cache.py keeps
the answers).

The key is the counted turns' embeddings the router already computed (a request that names its expert is not routed,
so its turns are embedded here, once). A streamed hit sends the cached answer as one delta, then the final chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import replace

import numpy as np

from coe import cache_policy, metrics
from coe.conversation_routing import ConversationPolicy, counted
from coe.core.registry import Registry
from coe.core.settings import Settings
from coe.embed_batcher import EmbedBatcher
from coe.embedder import Embedder
from coe.pipeline_types import CacheMark, ChatInput, Outcome, Plan
from coe.semantic_cache import SemanticCache
from routers import RouteDecision

Event = RouteDecision | str | Outcome


class AnswerCache:
    def __init__(self, store: SemanticCache, registry: Registry, embedder: Embedder, batcher: EmbedBatcher,
                 settings: Settings):
        self.store = store
        self.registry = registry
        self.encoder = f"{embedder.id}/{embedder.runtime_id}"  # vectors of two encoders never meet in one bucket
        self.batcher = batcher
        self.settings = settings

    def _turns(self, plan: Plan, inp: ChatInput) -> list[str]:
        return [inp.messages[i]["content"] for i in plan.positions]

    def _bucket(self, plan: Plan, inp: ChatInput) -> str:
        scope = None if self.settings.cache_shared else inp.caller
        return cache_policy.bucket(plan, inp.messages, plan.positions, self.registry, self.encoder, scope)

    async def look_up(self, plan: Plan, inp: ChatInput, started: float) -> tuple[CacheMark | None, Outcome | None]:
        """(the request's cache mark, the cached outcome on a hit); (None, None) when it did not ask for the cache."""
        if not inp.cache:
            return None, None
        why_not = cache_policy.refusal(plan, inp, self.registry)
        if why_not is not None:
            metrics.CACHE_LOOKUPS.labels("skipped").inc()
            return CacheMark(hit=False, note=why_not), None
        t0 = time.perf_counter()
        plan.positions = counted(inp.messages, ConversationPolicy.from_settings(self.settings))
        if plan.vectors is None:
            plan.vectors = np.asarray(await self.batcher.encode(self._turns(plan, inp)))
        hit = await self.store.lookup(self._bucket(plan, inp), self._turns(plan, inp), plan.vectors)
        lookup_s = time.perf_counter() - t0
        metrics.observe_cache_lookup(lookup_s, hit is not None)
        if hit is None:
            return CacheMark(hit=False), None
        timings = {**plan.timings, "cache": lookup_s, "total": time.perf_counter() - started}
        return None, cache_policy.answered(hit, plan, timings)

    async def keep(self, plan: Plan, inp: ChatInput, mark: CacheMark | None, outcome: Outcome) -> Outcome:
        """The outcome with its cache mark; kept in the cache when it was looked up there and is a whole answer."""
        if mark is not None and not mark.note:
            if cache_policy.keepable(outcome):
                await self.store.store(self._bucket(plan, inp), self._turns(plan, inp), plan.vectors,
                                       cache_policy.kept(outcome))
                metrics.CACHE_STORES.inc()
                mark = replace(mark, stored=True)
            else:
                mark = replace(mark, note="not kept: a degraded answer (an expert failed)")
        return replace(outcome, cache=mark)

    async def run(self, plan: Plan, inp: ChatInput, started: float,
                  produce: Callable[[Plan, ChatInput, float], Awaitable[Outcome]]) -> Outcome:
        """The cached outcome on a hit; else `produce(plan, inp, started)`'s, kept."""
        mark, hit = await self.look_up(plan, inp, started)
        return hit or await self.keep(plan, inp, mark, await produce(plan, inp, started))

    async def stream(self, plan: Plan, inp: ChatInput, started: float,
                     produce: Callable[[Plan, ChatInput, float], AsyncIterator[Event]]) -> AsyncIterator[Event]:
        """The events of `produce(plan, inp, started)`, or the cached answer's on a hit; the outcome kept on a miss."""
        mark, hit = await self.look_up(plan, inp, started)
        if hit is not None:
            yield plan.decision
            yield hit.text
            yield hit
            return
        async with aclosing(produce(plan, inp, started)) as events:
            async for event in events:
                yield await self.keep(plan, inp, mark, event) if isinstance(event, Outcome) else event
