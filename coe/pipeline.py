"""The seam between the front doors (REST, CLI, benchmarks) and the machinery.

embed -> route -> one job per chosen expert -> (aggregate if k > 1) -> answer.
The API, the CLI and `coe bench` all go through here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from coe import metrics
from coe.aggregation import aggregation_messages, last_user_text
from coe.embed_batcher import EmbedBatcher
from coe.embedder import Embedder
from coe.core.registry import ExpertConfig, Registry
from coe.core.routes import load_routes_if_present
from coe.core.settings import Settings
from routers import RouteDecision, Router, RouterContext, build_router
from workers.jobs import GenerationRequest, Job, JobResult
from workers.queue import Delta, JobQueue, QueueFull, QueueUnavailable

ROUTED_MODEL = "coe"


class PipelineError(Exception):
    """A failure the API turns into an OpenAI-style error with this status."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class UnknownModel(PipelineError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class BadRequest(PipelineError):
    status, type, code = 400, "invalid_request_error", None


class ExpertFailed(PipelineError):
    status, type, code = 502, "server_error", "expert_failed"


class Unavailable(PipelineError):
    status, type, code = 503, "server_error", "unavailable"


class TimedOut(PipelineError):
    status, type, code = 504, "server_error", "timeout"


@dataclass
class ChatInput:
    model: str
    messages: list[dict]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    k: int | None = None
    router: str | None = None
    choices: list[str] | None = None  # score these continuations instead of generating (benchmarks, profiles)


@dataclass
class ExpertAnswer:
    expert: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    queue_s: float
    generate_s: float


@dataclass
class Outcome:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    decision: RouteDecision
    answers: list[ExpertAnswer]
    aggregator: str | None
    timings: dict[str, float]
    fallback_after_error: str | None = None


@dataclass
class Plan:
    decision: RouteDecision
    jobs: list[Job]
    timings: dict[str, float]


class Pipeline:
    """The one seam between the front doors (REST, CLI, benchmarks) and the machinery: embed, route, dispatch, merge."""

    def __init__(self, registry: Registry, embedder: Embedder, queue: JobQueue, settings: Settings, default_router: str):
        self.registry = registry
        self.embedder = embedder
        self.queue = queue
        self.settings = settings
        self.routers: dict[str, Router] = {}
        self.default_router = default_router
        self.batcher = EmbedBatcher(embedder)
        self._router_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    async def create(cls, registry: Registry, embedder: Embedder, queue: JobQueue, settings: Settings,
                     default_router: str) -> "Pipeline":
        """A pipeline with its default router built (errors of that router propagate as they are)."""
        pipeline = cls(registry, embedder, queue, settings, default_router)
        pipeline._loop = asyncio.get_running_loop()
        ctx = pipeline.router_context(default_router)
        pipeline.routers[default_router] = await asyncio.to_thread(build_router, default_router, ctx)
        return pipeline

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
                    try:
                        self.routers[name] = await asyncio.to_thread(build_router, name, self.router_context(name))
                    except (KeyError, FileNotFoundError, ValueError) as exc:
                        raise BadRequest(f"router '{name}' is not available: {exc}", "coe.router") from None
        return self.routers[name]

    def generate_for_router(self, expert: str, chats: list[list[dict]], max_tokens: int) -> list[str]:
        """A router's LLM call (e.g. keywords for skills), run as ordinary jobs on the queue.

        Routers run in a thread off the event loop, so this blocks that thread, not the loop."""
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
        for job in jobs:
            await self._submit(job)
        results = await asyncio.gather(*(self._result(j, self._deadline_left(started)) for j in jobs))
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
        decisions = await asyncio.to_thread(chosen.route, texts, np.asarray(vectors), k)  # off the event loop
        t2 = time.perf_counter()
        metrics.STAGE_SECONDS.labels("embed").observe(t1 - t0)
        metrics.STAGE_SECONDS.labels("route").observe(t2 - t1)
        for d in decisions:
            for e in d.experts:
                metrics.ROUTED.labels(e, d.router).inc()
            if d.fallback:
                metrics.FALLBACKS.inc()
        return decisions, {"embed": t1 - t0, "route": t2 - t1}

    # --- jobs -------------------------------------------------------------------
    def _request(self, expert: ExpertConfig, inp: ChatInput, messages: list[dict], seed_offset: int = 0) -> GenerationRequest:
        gen = expert.generation
        if expert.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": expert.system_prompt}, *messages]
        max_tokens = min(inp.max_tokens or gen.max_tokens, self.settings.max_tokens_cap)
        seed = None if inp.seed is None else inp.seed + seed_offset
        return GenerationRequest(
            messages=messages, max_tokens=max_tokens,
            temperature=gen.temperature if inp.temperature is None else inp.temperature,
            top_p=gen.top_p if inp.top_p is None else inp.top_p,
            repetition_penalty=gen.repetition_penalty, seed=seed, stop=list(inp.stop), choices=inp.choices,
        )

    async def _submit(self, job: Job) -> None:
        try:
            await self.queue.submit(job)
        except QueueFull as exc:
            raise Unavailable(f"the service is at capacity ({exc}); retry later") from None
        except QueueUnavailable as exc:
            raise Unavailable(f"the job queue is unavailable ({exc}); retry later") from None
        try:
            metrics.QUEUE_DEPTH.set(await self.queue.depth())
        except QueueUnavailable:
            pass  # the job is in; the gauge can wait

    async def plan(self, inp: ChatInput) -> Plan:
        if not inp.messages:
            raise BadRequest("messages must not be empty", "messages")
        timings: dict[str, float] = {}
        if inp.model == ROUTED_MODEL:
            k = max(1, min(inp.k or self.settings.default_k, self.settings.max_k))
            decisions, timings = await self.route([last_user_text(inp.messages)], k=k, router=inp.router)
            decision = decisions[0]
        elif inp.model in self.registry.experts:
            decision = RouteDecision([inp.model], "bypass", reason="model names an expert")
        else:
            raise UnknownModel(f"The model '{inp.model}' does not exist; use 'coe' or one of {self.registry.names}", "model")
        jobs = []
        for i, name in enumerate(decision.experts):
            expert = self.registry.experts[name]
            stream = inp.stream and len(decision.experts) == 1
            jobs.append(Job(expert=name, request=self._request(expert, inp, inp.messages, seed_offset=i), stream=stream))
        return Plan(decision, jobs, timings)

    async def _result(self, job: Job, timeout: float) -> JobResult:
        try:
            return await self.queue.wait_result(job.id, timeout)
        except TimeoutError:
            raise TimedOut(f"expert '{job.expert}' did not answer within {timeout:.0f}s") from None
        except QueueUnavailable as exc:
            raise Unavailable(f"the job queue is unavailable ({exc}); retry later") from None

    def _deadline_left(self, started: float) -> float:
        return max(0.1, self.settings.request_timeout_s - (time.perf_counter() - started))

    async def _answer(self, job: Job, started: float, may_fall_back: bool = True) -> tuple[ExpertAnswer, str | None]:
        """Run a submitted job; on an engine error of a routed job, the fallback expert answers instead."""
        result = await self._result(job, self._deadline_left(started))
        replaced = None
        fallback = self.registry.fallback
        if not result.ok and may_fall_back and fallback is not None and fallback.name != job.expert:
            replaced = job.expert
            retry = Job(expert=fallback.name, request=job.request, stream=False)
            await self._submit(retry)
            result = await self._result(retry, self._deadline_left(started))
        if not result.ok:
            raise ExpertFailed(f"expert '{result.expert}' failed: {result.error}")
        c = result.completion
        metrics.TOKENS.labels(result.expert, "prompt").inc(c.prompt_tokens)
        metrics.TOKENS.labels(result.expert, "completion").inc(c.completion_tokens)
        return ExpertAnswer(result.expert, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason,
                            result.queue_s, result.generate_s), replaced

    def _aggregation_job(self, inp: ChatInput, answers: list[ExpertAnswer], decision: RouteDecision | None = None) -> Job | None:
        """The merge job: to the router's measured aggregator if it names one, else the expert marked `aggregator`."""
        chosen = decision.aggregator if decision is not None else None
        agg = self.registry.experts.get(chosen) if chosen else None
        agg = agg or self.registry.aggregator
        if agg is None or len(answers) < 2:
            return None
        messages = aggregation_messages(inp.messages, [(a.expert, a.text) for a in answers])
        return Job(expert=agg.name, request=self._request(agg, inp, messages), stream=inp.stream)

    def _outcome(self, plan: Plan, answers: list[ExpertAnswer], final: ExpertAnswer, aggregator: str | None,
                 started: float, replaced: str | None) -> Outcome:
        timings = dict(plan.timings)
        timings["queue"] = max(a.queue_s for a in answers)
        timings["generate"] = max(a.generate_s for a in answers)
        timings["aggregate"] = final.queue_s + final.generate_s if aggregator else 0.0
        timings["total"] = time.perf_counter() - started
        for stage in ("queue", "generate", "aggregate"):
            metrics.STAGE_SECONDS.labels(stage).observe(timings[stage])
        everyone = answers + ([final] if aggregator else [])
        return Outcome(
            text=final.text, finish_reason=final.finish_reason,
            prompt_tokens=sum(a.prompt_tokens for a in everyone),
            completion_tokens=sum(a.completion_tokens for a in everyone),
            decision=plan.decision, answers=answers, aggregator=aggregator, timings=timings,
            fallback_after_error=replaced,
        )

    async def run(self, inp: ChatInput) -> Outcome:
        started = time.perf_counter()
        plan = await self.plan(inp)
        for job in plan.jobs:
            await self._submit(job)
        routed = plan.decision.router != "bypass"  # a client that names an expert gets that expert or an error
        pairs = await asyncio.gather(*(self._answer(j, started, routed) for j in plan.jobs))
        answers = [a for a, _ in pairs]
        replaced = next((r for _, r in pairs if r), None)
        agg_job = self._aggregation_job(inp, answers, plan.decision)
        if agg_job is None:
            return self._outcome(plan, answers, answers[0], None, started, replaced)
        await self._submit(agg_job)
        final, _ = await self._answer(agg_job, started)
        return self._outcome(plan, answers, final, agg_job.expert, started, replaced)

    async def stream(self, inp: ChatInput) -> AsyncIterator[RouteDecision | str | Outcome]:
        """Yields the routing decision, then text deltas of the final answer, then the Outcome."""
        started = time.perf_counter()
        plan = await self.plan(inp)
        for job in plan.jobs:
            await self._submit(job)
        yield plan.decision
        if len(plan.jobs) > 1:
            pairs = await asyncio.gather(*(self._answer(j, started) for j in plan.jobs))
            answers = [a for a, _ in pairs]
            final_job = self._aggregation_job(inp, answers, plan.decision)
            if final_job is None:
                yield answers[0].text
                yield self._outcome(plan, answers, answers[0], None, started, None)
                return
            await self._submit(final_job)
        else:
            answers, final_job = [], plan.jobs[0]
        result = None
        try:
            async for event in self.queue.events(final_job.id, self._deadline_left(started)):
                if isinstance(event, Delta):
                    yield event.text
                else:
                    result = event
        except TimeoutError:
            raise TimedOut(f"expert '{final_job.expert}' did not answer within {self.settings.request_timeout_s:.0f}s") from None
        except QueueUnavailable as exc:
            raise Unavailable(f"the job queue is unavailable ({exc}); retry later") from None
        if not result.ok:
            raise ExpertFailed(f"expert '{result.expert}' failed: {result.error}")
        c = result.completion
        final = ExpertAnswer(result.expert, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason,
                             result.queue_s, result.generate_s)
        if answers:
            yield self._outcome(plan, answers, final, final_job.expert, started, None)
        else:
            yield self._outcome(plan, [final], final, None, started, None)
