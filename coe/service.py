"""Builds and owns the running parts: registry, embedder, router, queue, and the embedded worker."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from coe.embedder import Embedder
from coe.pipeline import Pipeline
from coe.registry import Registry, load_registry
from coe.settings import Settings
from routers import RouterContext, build_router
from workers.queue import JobQueue
from workers.queue_memory import MemoryQueue
from workers.worker import Worker

log = logging.getLogger("coe.service")


def choose_router(settings: Settings) -> str:
    """'auto' means the trained two-stage router when its artifact exists, else nearest centroid."""
    if settings.router != "auto":
        return settings.router
    return "two_stage" if (settings.artifacts_dir / "two_stage").is_dir() else "centroid"


def make_queue(settings: Settings) -> JobQueue:
    if settings.redis_url:
        from workers.queue_redis import RedisQueue

        return RedisQueue(settings.redis_url, max_depth=settings.max_queue_depth)
    return MemoryQueue(max_depth=settings.max_queue_depth)


@dataclass
class Service:
    settings: Settings
    registry: Registry | None = None
    pipeline: Pipeline | None = None
    queue: JobQueue | None = None
    worker: Worker | None = None
    started_at: float = field(default_factory=time.time)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    startup_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.pipeline is not None and (self.worker is None or self.worker.ready.is_set())

    async def start(self, embedded_worker: bool = True) -> None:
        """Load everything; the embedded worker (no Redis) preloads its models in the background."""
        settings = self.settings
        self.registry = load_registry(settings.experts_file)
        embedder = Embedder(settings.encoder)
        await asyncio.to_thread(lambda: embedder.dim)
        name = choose_router(settings)
        ctx = RouterContext(self.registry, embedder, settings.artifacts_dir)
        router = await asyncio.to_thread(build_router, name, ctx)
        self.queue = make_queue(settings)
        if embedded_worker and not settings.redis_url:
            self.worker = Worker(self.registry, self.queue, device="cpu")
            self._tasks.append(asyncio.create_task(self._run_worker(), name="embedded-worker"))
        self.pipeline = Pipeline(self.registry, embedder, router, self.queue, settings)
        log.info("coe ready to route with '%s' over %d experts", name, len(self.registry.experts))

    async def _run_worker(self) -> None:
        try:
            await self.worker.run(self._stop)
        except Exception as exc:
            self.startup_error = f"embedded worker stopped: {type(exc).__name__}: {exc}"
            log.exception("embedded worker stopped")

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        if self.queue is not None:
            await self.queue.close()
