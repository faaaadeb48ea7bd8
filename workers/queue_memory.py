"""The in-process queue: the embedded default, no server needed.

Everything lives in one event loop, so nothing survives the process; a
deployment that must survive a crash uses the Redis Streams queue. A cancel
costs the same however many jobs wait, and a caller that gave up leaves
nothing behind (its result, stream or cancel mark is dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator

from workers.jobs import CANCELLED, Job, JobResult
from workers.queue import COUNTERS, Delta, JobQueue, PendingStats, QueueFull


class MemoryQueue(JobQueue):
    def __init__(self, max_depth: int = 10_000):
        self.max_depth = max_depth
        self._waiting: dict[str, deque[Job]] = defaultdict(deque)
        self._running: dict[str, Job] = {}
        self._queued: set[str] = set()  # ids of the jobs in `_waiting`, for cancel
        self._readers: set[str] = set()  # ids of the jobs whose result someone is waiting for now
        self._results: dict[str, asyncio.Future[JobResult]] = {}
        self._streams: dict[str, asyncio.Queue[Delta | JobResult]] = {}
        self._cancelled: set[str] = set()
        self._live: dict[str, dict[str, float]] = defaultdict(dict)  # device -> consumer -> expiry (monotonic)
        self._counters: Counter[str] = Counter()
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
        self._queued.add(job.id)
        self._work.set()

    async def wait_result(self, job_id: str, timeout: float) -> JobResult:
        fut = self._future(job_id)
        self._readers.add(job_id)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._readers.discard(job_id)
            self._results.pop(job_id, None)

    async def events(self, job_id: str, timeout: float) -> AsyncIterator[Delta | JobResult]:
        stream = self._streams.get(job_id)
        if stream is None:
            yield await self.wait_result(job_id, timeout)
            return
        deadline = time.monotonic() + timeout
        self._readers.add(job_id)
        try:
            while True:
                item = await asyncio.wait_for(stream.get(), max(0.0, deadline - time.monotonic()))
                yield item
                if isinstance(item, JobResult):
                    return
        finally:
            self._readers.discard(job_id)
            self._streams.pop(job_id, None)
            self._results.pop(job_id, None)

    async def depth(self) -> int:
        return sum(len(q) for q in self._waiting.values()) + len(self._running)

    async def cancel(self, job_id: str) -> None:
        if job_id in self._running or job_id in self._queued:
            self._cancelled.add(job_id)
        else:  # answered already (or unknown): nobody will read what is kept for it
            self._forget(job_id)

    async def consumers(self, device: str) -> int:
        now = time.monotonic()
        live = self._live[device]
        for name in [n for n, expiry in live.items() if expiry <= now]:
            del live[name]
        return len(live)

    async def counters(self) -> dict[str, int]:
        return {name: self._counters[name] for name in COUNTERS}

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
            self._queued.discard(job.id)
            if job.id in self._cancelled:  # its caller is gone: never started
                self._cancelled.discard(job.id)
                self._counters["cancelled_queued"] += 1
                self._forget(job.id)
                continue
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
        if result.error_type == CANCELLED:
            self._counters["cancelled_running"] += 1
        if job.id in self._cancelled:
            self._cancelled.discard(job.id)
            if job.id not in self._readers:  # its caller is gone: nobody will read this result
                self._forget(job.id)
                return
        stream = self._streams.get(job.id)
        if stream is not None:
            stream.put_nowait(result)
        else:
            fut = self._results.get(job.id)
            if fut is not None and not fut.done():
                fut.set_result(result)

    async def release(self, jobs: list[Job]) -> None:
        for job in reversed(jobs):  # back at the head of their queues, in their order
            if self._running.pop(job.id, None) is not None:
                self._waiting[job.expert].appendleft(job)
                self._queued.add(job.id)
        self._work.set()

    async def stopped(self, job_ids: list[str]) -> set[str]:
        return {i for i in job_ids if i in self._cancelled}

    async def announce(self, device: str, consumer: str, ttl_s: float) -> None:
        self._live[device][consumer] = time.monotonic() + ttl_s

    async def withdraw(self, device: str, consumer: str) -> None:
        self._live[device].pop(consumer, None)

    def _forget(self, job_id: str) -> None:
        """Drop what a caller that went away left behind (its result future or stream)."""
        self._results.pop(job_id, None)
        self._streams.pop(job_id, None)
