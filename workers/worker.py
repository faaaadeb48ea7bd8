"""The worker loop: one per device, draining the queues of the experts placed there.

Each turn: ask the scheduler for the next weights group, make it resident,
claim up to a batch of its jobs (oldest first, across the group's experts),
run them in one engine call off the event loop, publish results, acknowledge.
When every engine takes jobs one by one (vLLM's AsyncLLM, a remote server), the
worker serves them continuously instead (workers/continuous.py).
Every claimed job is completed or released, whatever fails. While it runs, the
worker announces its device, so the API knows someone will serve its experts.
When the queue cannot be reached, the worker keeps its models resident and tries
again with backoff until it can: an outage of Redis costs no reload.
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
from coe.core.registry import CPU_ENGINES, ExpertConfig, Registry, served_as
from workers.choice_jobs import is_scoring, score_jobs
from workers.continuous import ContinuousLoop
from workers.engines import create_engine
from workers.batch import run_batch
from workers.engines.base import Engine, EngineOptions, EngineSpec
from workers.jobs import ENGINE_ERROR, Job, JobResult
from workers.load_failures import LoadFailures
from workers.queue import JobQueue, QueueUnavailable, watch_for_work
from workers.scheduler import Group, Policy, Scheduler, Tier

log = logging.getLogger("coe.worker")

OUTAGE_RETRY_MAX_S = 10.0
"""Longest wait between two tries to reach the queue during an outage (the first is `Worker.outage_retry_s`)."""


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
        options=options, chat_template=expert.chat_template, completion=expert.completion,
        experts=tuple(e.name for e in registry.experts.values() if e.weights_key == expert.weights_key),
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
    load_retry_s: float = 5.0  # a model that failed to load is tried again after this, doubling up to 5 minutes
    announce_s: float = 5.0  # how often the worker tells the queue it is alive (it counts as gone after 3 times this)
    outage_retry_s: float = 0.5  # first wait before trying the queue again after it failed; doubles while it stays down

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
        self._next_registries: list[Registry] = []
        self._leaving: set[str] = set()
        self._next_reclaim = 0.0
        self.continuous = ContinuousLoop(self)
        self.load_failures = LoadFailures(first_s=self.load_retry_s)

    def failed_loads(self) -> dict[str, str]:
        """Weights groups whose last load failed, with the error (their jobs fail at once until the next try)."""
        return self.load_failures.errors()

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
            except Exception as exc:
                wait = self.load_failures.failed(key, f"{type(exc).__name__}: {exc}")
                log.exception("could not load %s; its experts answer with an error (next try in %.0fs)", key, wait)
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
        until its queued jobs are done, then its group is unloaded if no expert uses it any more (so is the old
        group of an expert moved to other weights, at the next turn). That
        holds for an expert added and removed again while a batch ran: its jobs were accepted meanwhile.
        """
        self._next_registries.append(registry)

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

    def _adopt(self, registries: list[Registry]) -> None:
        """Take up the newest registry, keeping every expert of the ones before it until its queue is empty."""
        self._next_registries = []
        groups = self.scheduler.groups
        for registry in registries:
            for e in registry.on_device(self.device):
                key = e.weights_key
                for other_key, g in groups.items():  # an expert whose weights changed moves to its new group
                    if other_key != key and e.name in g.experts:
                        g.experts.remove(e.name)
                if key not in groups:
                    self.engines[key] = create_engine(engine_spec(registry, e, self.engine_options))
                    groups[key] = Group(key, [], e.memory_gb, e.max_batch, self.engines[key].supports_sleep)
                if e.name not in groups[key].experts:
                    groups[key].experts.append(e.name)
        names = [e.name for e in registries[-1].on_device(self.device)]
        seen = {e.name for registry in registries for e in registry.on_device(self.device)}
        self._leaving = (set(self.experts) | seen | self._leaving) - set(names)
        self.experts = names + sorted(self._leaving)
        if self.memory_budget_gb is None:
            self.scheduler.memory_budget_gb = max(self.scheduler.memory_budget_gb,
                                                  sum(g.memory_gb for g in groups.values()))
        self.registry = registries[-1]

    def has_leftovers(self) -> bool:
        """Experts that left, or weights groups no expert uses any more (an expert moved to another model)."""
        return bool(self._leaving) or any(not g.experts for g in self.scheduler.groups.values())

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
        """Serve until `stop`; announced as a live consumer of the device from the start (models loading included)."""
        announcer = asyncio.create_task(self._announce(), name=f"announce-{self.device}")
        try:
            if not self.ready.is_set():
                await self.preload()
            while not stop.is_set():
                try:
                    await self._turn(stop)
                except QueueUnavailable as exc:
                    await self._wait_for_queue(stop, exc)
        finally:
            announcer.cancel()
            try:
                for served in self._served_as():
                    await self.queue.withdraw(served, self.name)
            except QueueUnavailable:
                pass  # the announcements expire on their own
            await self._release_engines()

    async def _turn(self, stop: asyncio.Event) -> None:
        if self.continuous.applies():
            await self.continuous.run(stop)  # returns at stop, or when an engine that serves batches joins
        elif not await self.step():
            await self.wait_or_reclaim(stop)

    async def _wait_for_queue(self, stop: asyncio.Event, exc: QueueUnavailable) -> None:
        """The queue went away: wait, doubling the wait, until it answers again or `stop`. The models stay resident;
        the jobs of the interrupted turn were completed or released, so none is held by nobody meanwhile."""
        wait = self.outage_retry_s
        log.warning("queue unavailable (%s); models stay loaded, trying again in %.1fs", exc, wait)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), wait)
                return
            except TimeoutError:
                pass
            try:
                await self.queue.ping()
            except QueueUnavailable:
                wait = min(OUTAGE_RETRY_MAX_S, wait * 2)
                continue
            log.info("queue reachable again")
            return

    async def _release_engines(self) -> None:
        """Unload what is resident when the worker stops: a vLLM engine left to the interpreter's exit dies
        with EngineDeadError in its background process instead of shutting down."""
        for key, group in self.scheduler.groups.items():
            if group.tier is Tier.COLD or key not in self.engines:
                continue
            try:
                await asyncio.to_thread(self.engines[key].unload)
                group.tier = Tier.COLD
            except Exception as exc:  # noqa: BLE001 - stopping anyway; say what could not be released
                log.warning("could not unload %s at stop: %s", key, exc)

    def _served_as(self) -> list[str]:
        """The device, and `auto:<name>` for each `device: auto` expert placed here (the API checks those)."""
        experts = self.registry.experts
        return [self.device, *sorted({served_as(experts[n]) for n in self.experts if n in experts} - {self.device})]

    async def _announce(self) -> None:
        while True:
            try:
                for served in self._served_as():
                    await self.queue.announce(served, self.name, ttl_s=3 * self.announce_s)
            except QueueUnavailable as exc:
                log.debug("cannot announce %s: %s", self.device, exc)
            await asyncio.sleep(self.announce_s)

    async def wait_or_reclaim(self, stop: asyncio.Event) -> None:
        waiter = watch_for_work(self.queue, self.experts, timeout=1.0)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (waiter, stopper):
            t.cancel()

    async def step(self) -> bool:
        """Serve one batch; False when there was nothing to do."""
        if self._next_registries:
            self._adopt(self._next_registries)
        stats = await self.queue.pending(self.experts)
        if self.has_leftovers():
            await self._drop_idle_leavers(stats)
        key, jobs = await self._reclaim()
        if key is None:
            key = self.scheduler.pick(stats)
            if key is None:
                return False
        load_error = self.load_failures.blocked(key)
        if load_error is None:
            try:
                await self._apply(self.scheduler.plan(key))
                self.load_failures.loaded(key)
            except Exception as exc:
                load_error = f"{type(exc).__name__}: {exc}"
                wait = self.load_failures.failed(key, load_error)
                log.exception("could not make %s resident (next try in %.0fs)", key, wait)
        try:  # from the first claim on: e.g. Redis went away, what was not completed goes back for any worker
            if not jobs:
                await self._claim_batch(key, stats, jobs)
            if not jobs:
                return False
            if load_error:
                await self._fail(jobs, f"model could not be loaded: {load_error}")
            else:
                await self._serve_batch(key, jobs)
        except BaseException:
            await self.queue.release(jobs)
            raise
        return True

    async def _claim_batch(self, key: str, stats, jobs: list[Job]) -> None:
        """Claim into `jobs` (in place: what was claimed before a failure is there to release) up to a batch of the
        group's oldest jobs, across its experts."""
        limit = self.scheduler.batch_size(key)
        by_age = sorted(self.scheduler.groups[key].experts, key=lambda e: stats[e].oldest_enqueued_at or float("inf"))
        for expert in by_age:
            if len(jobs) >= limit:
                break
            jobs += await self.queue.claim(expert, self.name, limit - len(jobs))

    async def _fail(self, jobs: list[Job], error: str) -> None:
        """Answer every job with `error`; those not answered when the queue fails are released."""
        for i, job in enumerate(jobs):
            try:
                await self.queue.complete(job, JobResult(job_id=job.id, expert=job.expert, error=error,
                                                         error_type=ENGINE_ERROR, worker=self.name))
            except BaseException:
                await self.queue.release(jobs[i:])
                raise

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
        self.busy = True
        try:
            results = await run_batch(self.engines[key], jobs, self.queue, self.name)
        finally:
            self.busy = False
        self.scheduler.served(key, len(jobs))
        for job, result in zip(jobs, results):
            await self.queue.complete(job, result)
