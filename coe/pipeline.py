"""The seam between the front doors (REST, CLI, benchmarks) and the machinery.

embed -> route -> one job per chosen expert, as its strategy asks it -> (aggregate if k > 1) -> answer;
or, for a cascade decision, experts in turn until one answers with enough confidence.
The API, the CLI and `coe bench` all go through here; coe/dispatch.py carries each expert's jobs.

A job is submitted only when a live worker serves its expert's device (else 503). With k > 1 the
answers that succeeded are kept (the failed experts are named); if every expert failed, the
fallback expert answers with its own request (a stream too, when its expert failed before its first
token; after that the stream ends with the error); if the aggregator fails, the first routed answer is
the answer. Jobs a request leaves unanswered (client gone, deadline) are cancelled. A request with a payer is
admitted on, charged to, and as it runs low routed for, that key's budget (coe/budget_gate.py).

Routers run in a thread pool of their own (ROUTING_THREADS): a router that asks an LLM blocks its thread
until jobs are answered, and those need the default pool's threads (the encoder's batches, the embedded
worker's engine calls), so a routing thread never holds a thread that the work it waits on would need.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from coe import conversation_routing, metrics
from coe.answer_cache import AnswerCache
from coe.aggregation import aggregation_messages
from coe.budget_gate import BudgetGate, Standing
from coe.bandit import ANONYMOUS
from coe.conversation_cues import CONTINUATIONS
from coe.embed_batcher import EmbedBatcher
from coe.embedder import Embedder
from coe.core.registry import Registry
from coe.core.routes import load_routes_if_present
from coe.core.settings import Settings
from coe.dispatch import Dispatch, refuse_too_long
from coe.pipeline_stores import Stores
from coe.strategies import Ask
from coe.pipeline_types import (
    BadRequest, ChatInput, ExpertAnswer, ExpertFailed, Outcome, Plan, TimedOut, Unavailable, UnknownModel,
)
from routers import RouteDecision, Router, RouterContext, build_router
from routers.base import get_router_class, serving_routers
from workers.jobs import GenerationRequest, Job, JobResult
from workers.queue import Delta, JobQueue, QueueUnavailable

ROUTED_MODEL = "coe"
ROUTING_THREADS = 8  # decisions routed at once; more wait their turn (routing an ordinary batch takes milliseconds)


class Pipeline:
    """The one seam between the front doors (REST, CLI, benchmarks) and the machinery: embed, route, dispatch, merge."""

    def __init__(self, registry: Registry, embedder: Embedder, queue: JobQueue, settings: Settings, default_router: str,
                 stores: Stores | None = None):
        self.registry = registry
        self.embedder = embedder
        self.queue = queue
        self.settings = settings
        self.routers: dict[str, Router] = {}
        self.default_router = default_router
        self.batcher = EmbedBatcher(embedder)
        self._cues: np.ndarray | None = None  # the continuation phrases' embeddings, on the first chat routed
        self.stores = stores or Stores.from_settings(settings)
        self.sessions, self.bandit = self.stores.sessions, self.stores.bandit
        self.cached = AnswerCache(self.stores.cache, registry, embedder, self.batcher, settings)
        self._router_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._routing = ThreadPoolExecutor(ROUTING_THREADS, thread_name_prefix="coe-route")
        self.dispatch = Dispatch(registry, queue, settings)
        self.gate = BudgetGate(self.stores.budgets, self)

    @classmethod
    async def create(cls, registry: Registry, embedder: Embedder, queue: JobQueue, settings: Settings,
                     default_router: str, stores: Stores | None = None) -> "Pipeline":
        """A pipeline with its default router built (its errors propagate); `stores`: the replaced pipeline's."""
        pipeline = cls(registry, embedder, queue, settings, default_router, stores)
        pipeline._loop = asyncio.get_running_loop()
        ctx = pipeline.router_context(default_router)
        pipeline.routers[default_router] = await asyncio.to_thread(build_router, default_router, ctx)
        return pipeline

    async def close(self) -> None:
        """Stop the routing pool (routing in progress is not waited for) and let go of the stores."""
        self._routing.shutdown(wait=False, cancel_futures=True)
        await self.stores.close()

    def router_context(self, name: str) -> RouterContext:
        """What router `name` gets from the service: the registry, the encoder, its options from the settings,
        and an LLM through the queue."""
        return RouterContext(self.registry, self.embedder, self.settings.artifacts_dir,
                             options=dict(self.settings.router_options.get(name, {})),
                             cost_weight=self.settings.router_cost_weight, budget_b=self.settings.router_budget_b,
                             generate=self.generate_for_router, routes=load_routes_if_present(self.settings.routes_path))

    # --- routing --------------------------------------------------------------
    async def get_router(self, name: str | None) -> Router:
        name = name or self.default_router
        if name not in self.routers:
            async with self._router_lock:
                if name not in self.routers:
                    self.routers[name] = await asyncio.to_thread(self._build_for_client, name)
        return self.routers[name]

    def _build_for_client(self, name: str) -> Router:
        """A router a client picked: only a serving one, and one that can be built here (400 otherwise)."""
        from routers.two_stage.artifact import ArtifactError  # trained routers say what is missing with it

        allowed = f"choose one of: {', '.join(serving_routers())}"
        try:
            cls = get_router_class(name)
        except KeyError:
            raise BadRequest(f"unknown router '{name}'; {allowed}", "coe.router") from None
        if not cls.serving:
            raise BadRequest(f"router '{name}' is for benchmarks only; {allowed}", "coe.router")
        try:
            return cls.build(self.router_context(name))
        except (ArtifactError, OSError, KeyError, ValueError) as exc:
            fix = "" if "coe train" in str(exc) else f"; train it first: coe train --router {name}"
            raise BadRequest(f"router '{name}' is not available here: {exc}{fix}", "coe.router") from None

    def generate_for_router(self, expert: str, chats: list[list[dict]], max_tokens: int) -> list[str]:
        """A router's LLM call (e.g. keywords for skills), run as ordinary jobs on the queue.

        Routers run in the routing pool, so this blocks a routing thread, never the loop or the default pool."""
        if self._loop is None:
            raise RuntimeError("the pipeline was not created with Pipeline.create")
        future = asyncio.run_coroutine_threadsafe(self.complete(expert, chats, max_tokens), self._loop)
        return future.result()

    async def complete(self, expert: str, chats: list[list[dict]], max_tokens: int) -> list[str]:
        """Greedy completions of `chats` by `expert`, through the queue and the worker that holds it."""
        if expert not in self.registry.experts:
            raise UnknownModel(f"expert '{expert}' is not registered", "model")
        started = time.perf_counter()
        jobs = [Job(expert=expert, request=GenerationRequest(messages=m, max_tokens=max_tokens, temperature=0.0))
                for m in chats]
        metrics.ROUTER_LLM_JOBS.labels(expert).inc(len(jobs))
        open_jobs: set[str] = set()
        try:
            for job in jobs:
                await self.dispatch.submit(job, open_jobs)
            results = await asyncio.gather(*(self.dispatch.result(j, self.dispatch.deadline_left(started), open_jobs) for j in jobs))
        finally:
            self.dispatch.cancel(open_jobs)
        failed = [r for r in results if not r.ok]
        if failed:
            raise ExpertFailed(f"expert '{expert}' failed: {failed[0].error}")
        for r in results:
            metrics.TOKENS.labels(expert, "prompt").inc(r.completion.prompt_tokens)
            metrics.TOKENS.labels(expert, "completion").inc(r.completion.completion_tokens)
        return [r.completion.text for r in results]

    async def route(self, texts: list[str], k: int = 1, router: str | None = None) -> tuple[list[RouteDecision], dict[str, float]]:
        chosen = await self.get_router(router)
        t0 = time.perf_counter()
        vectors = await self.batcher.encode(texts)
        t1 = time.perf_counter()
        decisions = await asyncio.get_running_loop().run_in_executor(
            self._routing, chosen.route, texts, np.asarray(vectors), k)
        t2 = time.perf_counter()
        metrics.observe_routing(t1 - t0, t2 - t1, decisions)
        return decisions, {"embed": t1 - t0, "route": t2 - t1}

    async def route_conversation(self, messages: list[dict], k: int = 1, router: str | None = None, session: str | None = None,
                                 learner: str | None = None) -> tuple[RouteDecision, dict[str, float], np.ndarray]:
        """A chat's decision and the embeddings of the turns the routing policy counts (coe/conversation_routing.py;
        the earlier turns' come from the batcher's cache). The bandit, if on, chooses for a `learner` (the key a
        completion is for: coe/bandit.py). A named session keeps its route unless the topic changed."""
        chosen = await self.get_router(router)
        policy = conversation_routing.ConversationPolicy.from_settings(self.settings)
        turns = conversation_routing.human_turns(messages, policy)
        if self._cues is None:
            self._cues = np.asarray(await self.batcher.encode(list(CONTINUATIONS)))
        t0 = time.perf_counter()
        vectors = np.asarray(await self.batcher.encode(turns))
        t1 = time.perf_counter()
        decision, is_new = await asyncio.get_running_loop().run_in_executor(
            self._routing, conversation_routing.decide, chosen, turns, vectors, k, policy, self._cues)
        if learner is not None and self.bandit is not None:  # routing for a completion: feedback can follow
            decision = await self.bandit.choose(decision, learner)
        if session is not None:
            decision = await conversation_routing.session_route(self.sessions, session, decision, is_new)
        t2 = time.perf_counter()
        metrics.observe_routing(t1 - t0, t2 - t1, [decision])
        return decision, {"embed": t1 - t0, "route": t2 - t1}, vectors

    # --- jobs -------------------------------------------------------------------
    async def plan(self, inp: ChatInput, low: Standing | None = None) -> Plan:
        if not inp.messages:
            raise BadRequest("messages must not be empty", "messages")
        timings, cheaper = {}, None
        if inp.model == ROUTED_MODEL:
            k = max(1, min(inp.k or self.settings.default_k, self.settings.max_k))
            decision, timings, vectors = await self.route_conversation(inp.messages, k, inp.router, inp.session, inp.caller or ANONYMOUS)
            decision, cheaper = await self.gate.cheaper(decision, inp, k, low)
        elif inp.model in self.registry.experts:
            decision, vectors = RouteDecision([inp.model], "bypass", reason="model names an expert"), None
        else:
            raise UnknownModel(f"The model '{inp.model}' does not exist; use 'coe' or one of {self.registry.names}", "model")
        if decision.cascade:  # its thresholds read each step's confidence
            inp = replace(inp, confidence=True)
        jobs, asks = [], []
        for i, name in enumerate(decision.experts):
            job, ask = self.dispatch.strategy_job(name, inp, seed_offset=i)
            job.stream = inp.stream and len(decision.experts) == 1 and ask is None and not decision.cascade
            jobs.append(job)
            asks.append(ask)
        return Plan(decision, jobs, timings, asks, cheaper, vectors=vectors)

    async def _answers(self, plan: Plan, inp: ChatInput, started: float,
                       open_jobs: set[str]) -> tuple[list[ExpertAnswer], dict[str, str], str | None]:
        """(answers that succeeded, failed expert -> error, the expert the fallback replaced) for submitted jobs.

        If every routed expert failed, the fallback expert answers with its own request; a client that named
        the expert gets that expert or an error."""
        async def one(job: Job, ask: Ask | None) -> JobResult | ExpertAnswer:
            result = await self.dispatch.result(job, self.dispatch.deadline_left(started), open_jobs)
            return await self.dispatch.settle(job, ask, result, inp, started, open_jobs)

        settled = await asyncio.gather(*(one(j, a) for j, a in zip(plan.jobs, plan.asks or [None] * len(plan.jobs))))
        answers = [a for a in settled if isinstance(a, ExpertAnswer)]
        failed = {r.expert: r.error or "failed" for r in settled if isinstance(r, JobResult)}
        replaced = None
        retry = None if answers else self._fallback_job(plan, inp, failed, stream=False)
        if retry is not None:
            replaced = plan.jobs[0].expert
            await self.dispatch.submit(retry, open_jobs)
            result = await self.dispatch.result(retry, self.dispatch.deadline_left(started), open_jobs)
            if result.ok:
                answers = [self.dispatch.answer(result)]
            else:
                failed[retry.expert] = result.error or "failed"
        if not answers:
            expert, error = next(iter(failed.items()))
            raise ExpertFailed(f"expert '{expert}' failed: {error}")
        return answers, failed, replaced

    def _fallback_job(self, plan: Plan, inp: ChatInput, failed: dict[str, str], stream: bool) -> Job | None:
        """The fallback expert's own job when every routed expert failed; None for a client that named the expert,
        or when the fallback is one of those that failed."""
        fallback = self.registry.fallback
        if plan.decision.router == "bypass" or fallback is None or fallback.name in failed:
            return None
        return Job(expert=fallback.name, request=self.dispatch.request(fallback, inp, inp.messages), stream=stream)

    def _aggregation_job(self, inp: ChatInput, answers: list[ExpertAnswer], decision: RouteDecision | None = None) -> Job | None:
        """The merge job: to the router's measured aggregator if it names one, else the expert marked `aggregator`."""
        chosen = decision.aggregator if decision is not None else None
        agg = (self.registry.experts.get(chosen) if chosen else None) or self.registry.aggregator
        if agg is None or len(answers) < 2:
            return None
        messages = aggregation_messages(inp.messages, [(a.expert, a.text) for a in answers])
        return Job(expert=agg.name, request=self.dispatch.request(agg, inp, messages), stream=inp.stream)

    def _outcome(self, plan: Plan, answers: list[ExpertAnswer], final: ExpertAnswer, aggregator: str | None,
                 started: float, replaced: str | None, failed: dict[str, str], aggregation_error: str | None = None) -> Outcome:
        timings = dict(plan.timings)
        timings["queue"] = max(a.queue_s for a in answers)
        timings["generate"] = max(a.generate_s for a in answers)
        timings["aggregate"] = final.queue_s + final.generate_s if aggregator else 0.0
        timings["total"] = time.perf_counter() - started
        for stage in ("queue", "generate", "aggregate") if aggregator else ("queue", "generate"):
            metrics.STAGE_SECONDS.labels(stage).observe(timings[stage])  # nothing merged: no 0 s merge
        everyone = answers + ([final] if aggregator else [])
        return Outcome(
            text=final.text, finish_reason=final.finish_reason,
            prompt_tokens=sum(a.prompt_tokens for a in everyone),
            completion_tokens=sum(a.completion_tokens for a in everyone),
            decision=plan.decision, answers=answers, aggregator=aggregator, timings=timings,
            fallback_after_error=replaced, failed_experts=failed, aggregation_error=aggregation_error, cheaper=plan.cheaper)

    async def run(self, inp: ChatInput) -> Outcome:
        return await self.gate.run(inp, lambda plan, inp, started: self.cached.run(plan, inp, started, self._run_plan))

    async def _cascade(self, plan: Plan, inp: ChatInput, started: float, open_jobs: set[str]) -> Outcome:
        """Experts tried in order: an answer is kept when its confidence reaches its step's threshold, else the next
        expert answers; every attempt is paid and listed. An expert that fails hands over like a doubtful one."""
        attempts: list[ExpertAnswer] = []
        failed: dict[str, str] = {}
        steps = plan.decision.cascade
        inp = replace(inp, confidence=True)
        for i, (name, need) in enumerate(steps):
            job, ask = (plan.jobs[0], plan.asks[0]) if i == 0 else self.dispatch.strategy_job(name, inp)
            await self.dispatch.submit(job, open_jobs)
            result = await self.dispatch.result(job, self.dispatch.deadline_left(started), open_jobs)
            settled = await self.dispatch.settle(job, ask, result, inp, started, open_jobs)
            if isinstance(settled, JobResult):
                failed[name] = settled.error or "failed"
                continue
            attempts.append(settled)
            if i == len(steps) - 1 or (settled.confidence is not None and settled.confidence >= need):
                break
        if not attempts:
            expert, error = next(iter(failed.items()))
            raise ExpertFailed(f"expert '{expert}' failed: {error}")
        return self._outcome(plan, attempts, attempts[-1], None, started, None, failed)

    async def _run_plan(self, plan: Plan, inp: ChatInput, started: float) -> Outcome:
        open_jobs: set[str] = set()
        try:
            if plan.decision.cascade:
                return await self._cascade(plan, inp, started, open_jobs)
            for job in plan.jobs:
                await self.dispatch.submit(job, open_jobs)
            answers, failed, replaced = await self._answers(plan, inp, started, open_jobs)
            agg_job = self._aggregation_job(inp, answers, plan.decision)
            if agg_job is None:
                return self._outcome(plan, answers, answers[0], None, started, replaced, failed)
            try:
                await self.dispatch.submit(agg_job, open_jobs)
                result = await self.dispatch.result(agg_job, self.dispatch.deadline_left(started), open_jobs)
                error = None if result.ok else result.error
            except Unavailable as exc:
                error = exc.message
            if error is not None:  # k good answers are not thrown away: the first routed one is the answer
                return self._outcome(plan, answers, answers[0], None, started, replaced, failed,
                                     f"aggregator '{agg_job.expert}' failed: {error}")
            return self._outcome(plan, answers, self.dispatch.answer(result), agg_job.expert, started, replaced, failed)
        finally:
            self.dispatch.cancel(open_jobs)

    async def _relay(self, job: Job, started: float, open_jobs: set[str]) -> AsyncIterator[str | JobResult]:
        """A streaming job's text as it comes, then its result."""
        try:
            async for event in self.queue.events(job.id, self.dispatch.deadline_left(started)):
                if isinstance(event, Delta):
                    yield event.text
                else:
                    open_jobs.discard(job.id)
                    yield refuse_too_long(event)
        except TimeoutError:
            raise TimedOut(f"expert '{job.expert}' did not answer within {self.settings.request_timeout_s:.0f}s") from None
        except QueueUnavailable as exc:
            raise Unavailable(f"the job queue is unavailable ({exc}); retry later") from None

    def stream(self, inp: ChatInput) -> AsyncIterator[RouteDecision | str | Outcome]:
        """Yields the routing decision, the final answer's text deltas (a cache hit's: one), then the Outcome."""
        return self.gate.stream(inp, lambda plan, inp, started: self.cached.stream(plan, inp, started, self._stream_plan))

    async def _stream_plan(self, plan: Plan, inp: ChatInput, started: float) -> AsyncIterator[RouteDecision | str | Outcome]:
        if plan.buffered:  # the answer exists only once its attempt (or the cascade) is over: it comes in one piece
            yield plan.decision
            outcome = await self._run_plan(plan, inp, started)
            yield outcome.text
            yield outcome
            return
        open_jobs: set[str] = set()
        try:
            for job in plan.jobs:
                await self.dispatch.submit(job, open_jobs)
            yield plan.decision
            answers, failed, final_job, agg_error = [], {}, plan.jobs[0], None
            if len(plan.jobs) > 1:
                answers, failed, replaced = await self._answers(plan, inp, started, open_jobs)
                final_job = self._aggregation_job(inp, answers, plan.decision)
                try:
                    if final_job is not None:
                        await self.dispatch.submit(final_job, open_jobs)
                except Unavailable as exc:
                    final_job, agg_error = None, exc.message
                if final_job is None:
                    yield answers[0].text
                    yield self._outcome(plan, answers, answers[0], None, started, replaced, failed, agg_error)
                    return
            result, sent, replaced = None, False, None
            while True:
                async for event in self._relay(final_job, started, open_jobs):
                    if isinstance(event, str):
                        sent = True
                        yield event
                    else:
                        result = event
                if result.ok or sent or answers:
                    break
                failed[result.expert] = result.error or "failed"  # before its first token: the fallback answers
                retry = self._fallback_job(plan, inp, failed, stream=True)
                if retry is None:
                    break
                replaced, final_job = result.expert, retry
                await self.dispatch.submit(retry, open_jobs)
            if not result.ok:
                if answers and not sent:  # the aggregator failed before any text: the first routed answer stands
                    yield answers[0].text
                    yield self._outcome(plan, answers, answers[0], None, started, None, failed,
                                        f"aggregator '{final_job.expert}' failed: {result.error}")
                    return
                expert, error = (result.expert, result.error) if sent else next(iter(failed.items()))
                raise ExpertFailed(f"expert '{expert}' failed: {error}")
            final = self.dispatch.answer(result)
            if answers:
                yield self._outcome(plan, answers, final, final_job.expert, started, None, failed)
            else:
                yield self._outcome(plan, [final], final, None, started, replaced, failed)
        finally:
            self.dispatch.cancel(open_jobs)
