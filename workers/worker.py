"""The worker loop: one per device, draining the queues of the experts placed there.

Each turn: ask the scheduler for the next weights group, make it resident,
claim up to a batch of its jobs (oldest first, across the group's experts),
run them in one engine call off the event loop, publish results, acknowledge.
When every engine takes jobs one by one (vLLM's AsyncLLM, a remote server), the
worker serves them continuously instead (workers/continuous.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from coe.core.assets import AssetError, is_local_ref
from coe.core.model_parts import is_parts_ref
from coe.core.registry import CPU_ENGINES, ExpertConfig, Registry
from workers.choice_jobs import is_scoring, score_jobs
from workers.continuous import ContinuousLoop
from workers.engines import create_engine
from workers.engines.base import Engine, EngineOptions, EngineSpec
from workers.jobs import Job, JobResult
from workers.queue import JobQueue
from workers.scheduler import Group, Policy, Scheduler

log = logging.getLogger("coe.worker")


def engine_spec(registry: Registry, expert: ExpertConfig, options: EngineOptions) -> EngineSpec:
    """The engine's view of an expert. A split model (`parts:`) keeps no path here: the engine assembles
    it into its cache folder when it loads, so building a worker never copies a gigabyte."""
    path = None
    local = expert.engine in CPU_ENGINES or (expert.engine == "vllm" and is_local_ref(expert.model))
    if local and not is_parts_ref(expert.model):
        try:
            path = str(registry.model_path(expert))
        except AssetError:
            path = None
    return EngineSpec(
        key=expert.weights_key, engine=expert.engine, model=expert.model, model_path=path, device=expert.device,
        memory_gb=expert.memory_gb, max_batch=expert.max_batch, api_base=expert.api_base, api_key_env=expert.api_key_env,
        options=options,
    )


@dataclass
class Worker:
    registry: Registry
    queue: JobQueue
    device: str = "cpu"
    policy: Policy = "grouped"
    memory_budget_gb: float | None = None
    reclaim_idle_s: float = 60.0
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    engine_options: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        experts = self.registry.on_device(self.device)
        if not experts:
            raise ValueError(f"no experts are placed on device '{self.device}' in {self.registry.path}")
        groups: dict[str, Group] = {}
        self.engines: dict[str, Engine] = {}
        for e in experts:
            key = e.weights_key
            if key not in groups:
                self.engines[key] = create_engine(engine_spec(self.registry, e, self.engine_options))
                groups[key] = Group(key, [], e.memory_gb, e.max_batch, self.engines[key].supports_sleep)
            groups[key].experts.append(e.name)
            groups[key].max_batch = min(groups[key].max_batch, e.max_batch)
        budget = self.memory_budget_gb or sum(g.memory_gb for g in groups.values())
        self.scheduler = Scheduler(groups, budget, self.policy)
        self.experts = [e.name for e in experts]
        self.busy = False
        self.ready = asyncio.Event()
        self._next_registry: Registry | None = None
        self._leaving: set[str] = set()
        self._next_reclaim = 0.0
        self.continuous = ContinuousLoop(self)

    async def preload(self) -> None:
        """Make resident whatever fits, most-shared groups first, so the first request does not pay for a load.

        A model that fails to load is logged and left cold: its jobs fail with the error when they come,
        and every other expert keeps working.
        """
        for key in sorted(self.scheduler.groups, key=lambda k: -len(self.scheduler.groups[k].experts)):
            actions = self.scheduler.plan(key)
            if any(a.kind in ("sleep", "unload") for a in actions):
                break
            try:
                await self._apply(actions)
            except Exception:
                log.exception("could not load %s; its experts will answer with an error", key)
        self.ready.set()

    async def _apply(self, actions) -> None:
        for action in actions:
            engine = self.engines[action.key]
            started = time.perf_counter()
            await asyncio.to_thread(getattr(engine, action.kind))
            self.scheduler.applied(action, time.perf_counter() - started)
            log.info("%s %s in %.2fs", action.kind, action.key, time.perf_counter() - started)

    # --- registry changes at run time ---------------------------------------------
    def refresh(self, registry: Registry) -> None:
        """Serve `registry`'s experts from the next turn on (never in the middle of a batch).

        New weights get an engine (loaded when first needed); an expert that left keeps being served
        until its queued jobs are done, then its group is unloaded if no expert uses it any more.
        """
        self._next_registry = registry

    async def _reclaim(self) -> tuple[str | None, list[Job]]:
        """Jobs a dead worker left behind, one expert at a time, ahead of fresh work (they are older).

        Looked for every few seconds, busy or not, so a steady stream of new work cannot starve them.
        """
        now = time.monotonic()
        if now < self._next_reclaim:
            return None, []
        for expert in self.experts:
            key = self._group_of(expert)
            jobs = await self.queue.reclaim_stale(expert, self.name, self.reclaim_idle_s, self.scheduler.batch_size(key))
            if jobs:
                return key, jobs
        self._next_reclaim = now + min(5.0, self.reclaim_idle_s / 4)
        return None, []

    def _group_of(self, expert: str) -> str:
        return next(k for k, g in self.scheduler.groups.items() if expert in g.experts)

    def _adopt(self, registry: Registry) -> None:
        self._next_registry = None
        wanted = registry.on_device(self.device)
        groups = self.scheduler.groups
        for e in wanted:
            key = e.weights_key
            for other_key, g in groups.items():  # an expert whose weights changed moves to its new group
                if other_key != key and e.name in g.experts:
                    g.experts.remove(e.name)
            if key not in groups:
                self.engines[key] = create_engine(engine_spec(registry, e, self.engine_options))
                groups[key] = Group(key, [], e.memory_gb, e.max_batch, self.engines[key].supports_sleep)
            if e.name not in groups[key].experts:
                groups[key].experts.append(e.name)
        names = [e.name for e in wanted]
        self._leaving = {n for n in self.experts if n not in names} | (self._leaving - set(names))
        self.experts = names + sorted(self._leaving)
        if self.memory_budget_gb is None:
            self.scheduler.memory_budget_gb = max(self.scheduler.memory_budget_gb,
                                                  sum(g.memory_gb for g in groups.values()))
        self.registry = registry

    async def _drop_idle_leavers(self, stats) -> None:
        """Forget experts that left once nothing of theirs is queued; unload groups no expert uses."""
        for name in [n for n in self._leaving if not stats.get(n) or not stats[n].count]:
            self._leaving.discard(name)
            self.experts.remove(name)
            for g in self.scheduler.groups.values():
                if name in g.experts:
                    g.experts.remove(name)
        for key in [k for k, g in self.scheduler.groups.items() if not g.experts]:
            await asyncio.to_thread(self.engines[key].unload)
            del self.scheduler.groups[key], self.engines[key]
            log.info("unloaded %s: no expert uses it any more", key)

    async def run(self, stop: asyncio.Event) -> None:
        if not self.ready.is_set():
            await self.preload()
        while not stop.is_set():
            if self.continuous.applies():
                await self.continuous.run(stop)  # returns at stop, or when an engine that serves batches joins
                continue
            served = await self.step()
            if not served:
                await self.wait_or_reclaim(stop)

    async def wait_or_reclaim(self, stop: asyncio.Event) -> None:
        waiter = asyncio.create_task(self.queue.wait_for_work(self.experts, timeout=1.0))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (waiter, stopper):
            t.cancel()

    async def step(self) -> bool:
        """Serve one batch; False when there was nothing to do."""
        if self._next_registry is not None:
            self._adopt(self._next_registry)
        stats = await self.queue.pending(self.experts)
        if self._leaving:
            await self._drop_idle_leavers(stats)
        key, jobs = await self._reclaim()
        if key is None:
            key = self.scheduler.pick(stats)
            if key is None:
                return False
        try:
            await self._apply(self.scheduler.plan(key))
        except Exception as exc:
            load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not make %s resident", key)
        else:
            load_error = None
        group = self.scheduler.groups[key]
        limit = self.scheduler.batch_size(key)
        if not jobs:
            by_age = sorted(group.experts, key=lambda e: stats[e].oldest_enqueued_at or float("inf"))
            for expert in by_age:
                if len(jobs) >= limit:
                    break
                jobs += await self.queue.claim(expert, self.name, limit - len(jobs))
        if not jobs:
            return False
        if load_error:
            await self._fail(jobs, f"model could not be loaded: {load_error}")
        else:
            await self._serve_batch(key, jobs)
        return True

    async def _fail(self, jobs: list[Job], error: str) -> None:
        for job in jobs:
            await self.queue.complete(job, JobResult(job_id=job.id, expert=job.expert, error=error,
                                                     error_type="engine_error", worker=self.name))

    async def _serve_batch(self, key: str, jobs: list[Job]) -> None:
        """Scoring jobs (request.choices) to the engine's choice_logprobs, the others to generate."""
        scoring = [j for j in jobs if is_scoring(j)]
        if scoring:
            self.busy = True
            try:
                results = await score_jobs(self.engines[key], scoring, self.name)
            finally:
                self.busy = False
            self.scheduler.served(key, len(scoring))
            for job, result in zip(scoring, results):
                await self.queue.complete(job, result)
        if len(scoring) < len(jobs):
            await self._serve(key, [j for j in jobs if not is_scoring(j)])

    async def _serve(self, key: str, jobs: list[Job]) -> None:
        engine = self.engines[key]
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()

        def on_delta(row: int, text: str) -> None:
            if jobs[row].stream:
                loop.call_soon_threadsafe(deltas.put_nowait, (jobs[row].id, text))

        async def publish_in_order() -> None:
            while (item := await deltas.get()) is not None:
                await self.queue.publish_delta(*item)

        publisher = asyncio.create_task(publish_in_order())
        started = time.time()
        self.busy = True
        try:
            completions = await asyncio.to_thread(engine.generate, [j.request for j in jobs], on_delta)
            error = None
        except Exception as exc:  # an engine failure fails its own jobs, never the worker
            log.exception("engine %s failed on a batch of %d", key, len(jobs))
            completions, error = [None] * len(jobs), f"{type(exc).__name__}: {exc}"
        finally:
            self.busy = False
            loop.call_soon_threadsafe(deltas.put_nowait, None)
            await publisher
        elapsed = time.time() - started
        self.scheduler.served(key, len(jobs))
        for job, completion in zip(jobs, completions):
            result = JobResult(
                job_id=job.id, expert=job.expert, completion=completion, error=error,
                error_type="engine_error" if error else None, worker=self.name,
                queue_s=max(0.0, started - job.enqueued_at), generate_s=elapsed, batch_size=len(jobs),
            )
            await self.queue.complete(job, result)
