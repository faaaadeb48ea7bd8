"""Builds and owns the running parts: registry, embedder, router, queue, and the embedded workers.

The registry comes from its store (coe/registry_store.py): the experts file, or with Redis the copy every
process shares, which this service follows (another replica's change is running here within about a second).

Without Redis, one embedded worker serves each device that has experts (`cpu`, `remote`, `gpu:N`): a
`remote` worker only talks to servers, and a `gpu:N` worker on a machine without that GPU fails its
model's load, so its jobs fail with that error instead of waiting for nobody.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from coe.admin import RegistryEditor
from coe.budgets import Ledger, make_ledger
from coe.embedder import make_embedder
from coe.feedback import FeedbackStore, make_feedback_store
from coe.pipeline import Pipeline
from coe.pipeline_stores import Stores
from coe.registry_store import FeedStore, FileStore, make_store
from coe.core.registry import Registry
from coe.core.routes import load_routes_if_present
from coe.core.settings import Settings
from routers.quality import OUTCOMES_FILE
from workers.engines.base import EngineOptions
from workers.queue import JobQueue
from workers.queue_memory import MemoryQueue
from workers.worker import Worker

log = logging.getLogger("coe.service")


def measured_policy(settings: Settings, registry: Registry) -> tuple[str, dict] | None:
    """The routing policy chosen on validation (`default_policy` of the outcomes.json beside experts.yaml, which
    `coe bench quality` writes), when it measured every expert registered here: a policy chosen among other
    experts says nothing about the ones it never saw."""
    path = settings.experts_file.parent / OUTCOMES_FILE
    try:
        data = json.loads(path.read_text())
        policy = data["default_policy"]
        measured = set(data["experts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not set(registry.names) <= measured:
        return None
    return policy["router"], dict(policy.get("options") or {})


def choose_router(settings: Settings, policy: tuple[str, dict] | None = None) -> str:
    """'auto' means the policy measured for these experts (`measured_policy`), else the trained two-stage router
    when its artifact exists, else nearest centroid."""
    if settings.router != "auto":
        return settings.router
    if policy is not None:
        return policy[0]
    return "two_stage" if (settings.artifacts_dir / "two_stage").is_dir() else "centroid"


def make_queue(settings: Settings) -> JobQueue:
    if settings.redis_url:
        from workers.queue_redis import RedisQueue

        return RedisQueue(settings.redis_url, max_depth=settings.max_queue_depth)
    return MemoryQueue(max_depth=settings.max_queue_depth)


def engine_options(settings: Settings) -> EngineOptions:
    """What the engines of this process need from its settings, handed down when they are built."""
    return EngineOptions(cache_dir=settings.cache_dir, threads=settings.torch_threads,
                         openai_timeout_s=settings.openai_timeout_s, openai_retries=settings.openai_retries,
                         vllm_args=settings.vllm_engine_args)


@dataclass
class Service:
    settings: Settings
    registry: Registry | None = None
    pipeline: Pipeline | None = None
    queue: JobQueue | None = None
    workers: list[Worker] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    startup_error: str | None = None
    store: FileStore | FeedStore | None = None
    feedback: FeedbackStore | None = None
    budgets: Ledger | None = None

    _embedded: bool = False

    def __post_init__(self) -> None:
        self.editor = RegistryEditor(self)

    @property
    def registry_version(self) -> int:
        """The version of the registry running here (1 at start without Redis; Redis's version with it)."""
        return self.store.held.version

    @property
    def ready(self) -> bool:
        return self.pipeline is not None and all(w.ready.is_set() for w in self.workers)

    async def start(self, embedded_worker: bool = True) -> None:
        """Load everything; the embedded workers (no Redis) preload their models in the background."""
        settings = self.settings
        self.store = make_store(settings.experts_file, settings.redis_url)
        self.registry = await self.store.open(load_routes_if_present(settings.routes_path))
        embedder = make_embedder(settings)
        await asyncio.to_thread(lambda: embedder.dim)
        policy = measured_policy(settings, self.registry) if settings.router == "auto" else None
        name = choose_router(settings, policy)
        if policy is not None and name not in settings.router_options:  # options the user set win
            settings = self.settings = settings.model_copy(
                update={"router_options": {**settings.router_options, name: policy[1]}})
        self.queue = make_queue(settings)
        self.feedback = make_feedback_store(settings)
        self.budgets = make_ledger(settings)
        self._embedded = embedded_worker and not settings.redis_url
        if self._embedded:
            for device in self.registry.devices:
                self._start_worker(self.registry, device)
        self.pipeline = await Pipeline.create(self.registry, embedder, self.queue, settings, name,
                                              Stores.from_settings(settings, self.budgets))
        if self.store.shared:
            self._tasks.append(asyncio.create_task(self.store.follow(self.editor.take_up, self._stop),
                                                   name="registry-follower"))
        log.info("coe ready to route with '%s' over %d experts (registry version %d)", name,
                 len(self.registry.experts), self.registry_version)
        source = self.pipeline.routers[name].source
        if source:
            log.info("router '%s' rests on: %s", name, source)

    def _start_worker(self, registry: Registry, device: str) -> None:
        worker = Worker(registry, self.queue, device=device, engine_options=engine_options(self.settings))
        self.workers.append(worker)
        self._tasks.append(asyncio.create_task(self._run_worker(worker), name=f"embedded-worker-{device}"))

    async def _run_worker(self, worker: Worker) -> None:
        """A worker that dies withdraws from its device, so requests for its experts get 503 from then on."""
        try:
            await worker.run(self._stop)
        except Exception as exc:
            self.startup_error = f"embedded worker for '{worker.device}' stopped: {type(exc).__name__}: {exc}"
            log.exception("embedded worker for %s stopped", worker.device)

    def refresh_workers(self, registry: Registry) -> None:
        """The embedded workers serve `registry` from their next turn; a device it newly uses gets a worker."""
        if not self._embedded:
            return
        for worker in self.workers:
            worker.refresh(registry)
        served = {w.device for w in self.workers}
        for device in [d for d in registry.devices if d not in served]:
            self._start_worker(registry, device)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.queue is not None:
            await self.queue.close()
        if self.store is not None:
            await self.store.close()
        if self.feedback is not None:
            await self.feedback.close()
        if self.budgets is not None:
            await self.budgets.close()
