"""Builds and owns the running parts: registry, embedder, router, queue, and the embedded worker."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from coe.embedder import make_embedder
from coe.pipeline import Pipeline
from coe.core.registry import Registry, load_registry
from coe.core.routes import load_routes_if_present
from coe.core.settings import Settings
from workers.engines.base import EngineOptions
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
        self.registry = load_registry(settings.experts_file, load_routes_if_present(settings.routes_path))
        embedder = make_embedder(settings)
        await asyncio.to_thread(lambda: embedder.dim)
        name = choose_router(settings)
        self.queue = make_queue(settings)
        if embedded_worker and not settings.redis_url:
            self.worker = Worker(self.registry, self.queue, device="cpu", engine_options=engine_options(settings))
            self._tasks.append(asyncio.create_task(self._run_worker(), name="embedded-worker"))
        self.pipeline = await Pipeline.create(self.registry, embedder, self.queue, settings, name)
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
