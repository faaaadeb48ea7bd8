"""The in-process queue: the embedded default, no server needed.

Everything lives in one event loop, so nothing survives the process; a
deployment that must survive a crash uses the Redis Streams queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator

from workers.jobs import Job, JobResult
from workers.queue import Delta, JobQueue, PendingStats, QueueFull


class MemoryQueue(JobQueue):
    def __init__(self, max_depth: int = 10_000):
        self.max_depth = max_depth
        self._waiting: dict[str, deque[Job]] = defaultdict(deque)
        self._running: dict[str, Job] = {}
        self._results: dict[str, asyncio.Future[JobResult]] = {}
        self._streams: dict[str, asyncio.Queue[Delta | JobResult]] = {}
        self._work = asyncio.Event()

    def _future(self, job_id: str) -> asyncio.Future[JobResult]:
        if job_id not in self._results:
            self._results[job_id] = asyncio.get_running_loop().create_future()
        return self._results[job_id]

    async def submit(self, job: Job) -> None:
        if await self.depth() >= self.max_depth:
            raise QueueFull(f"{self.max_depth} jobs already waiting")
        self._future(job.id)
        if job.stream:
            self._streams[job.id] = asyncio.Queue()
        self._waiting[job.expert].append(job)
        self._work.set()

    async def wait_result(self, job_id: str, timeout: float) -> JobResult:
        fut = self._future(job_id)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._results.pop(job_id, None)

    async def events(self, job_id: str, timeout: float) -> AsyncIterator[Delta | JobResult]:
        stream = self._streams.get(job_id)
        if stream is None:
            yield await self.wait_result(job_id, timeout)
            return
        deadline = time.monotonic() + timeout
        try:
            while True:
                item = await asyncio.wait_for(stream.get(), max(0.0, deadline - time.monotonic()))
                yield item
                if isinstance(item, JobResult):
                    return
        finally:
            self._streams.pop(job_id, None)
            self._results.pop(job_id, None)

    async def depth(self) -> int:
        return sum(len(q) for q in self._waiting.values()) + len(self._running)

    async def pending(self, experts: list[str]) -> dict[str, PendingStats]:
        out = {}
        for name in experts:
            q = self._waiting.get(name)
            out[name] = PendingStats(len(q), q[0].enqueued_at) if q else PendingStats()
        return out

    async def claim(self, expert: str, consumer: str, max_jobs: int) -> list[Job]:
        q = self._waiting.get(expert)
        jobs = []
        while q and len(jobs) < max_jobs:
            job = q.popleft()
            self._running[job.id] = job
            jobs.append(job)
        return jobs

    async def wait_for_work(self, experts: list[str], timeout: float) -> None:
        if any(self._waiting.get(e) for e in experts):
            return
        self._work.clear()
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass

    async def publish_delta(self, job_id: str, text: str) -> None:
        stream = self._streams.get(job_id)
        if stream is not None:
            stream.put_nowait(Delta(text))

    async def complete(self, job: Job, result: JobResult) -> None:
        self._running.pop(job.id, None)
        stream = self._streams.get(job.id)
        if stream is not None:
            stream.put_nowait(result)
        else:
            fut = self._results.get(job.id)
            if fut is not None and not fut.done():
                fut.set_result(result)
