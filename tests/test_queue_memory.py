"""The in-process queue only: what a caller that gives up leaves behind (nothing), and what a cancel costs
(the same however many jobs wait)."""

from __future__ import annotations

import asyncio
import time

from tests.queue_helpers import job, ok
from workers.queue_memory import MemoryQueue


async def read_all(q: MemoryQueue, job_id: str) -> list:
    return [event async for event in q.events(job_id, timeout=5)]


def test_a_caller_that_gives_up_leaves_nothing_behind():
    """Answered but never read (the caller went away between submit and wait), queued, or streamed: once the
    caller cancels, the queue holds no future, stream or mark of the job."""
    async def main():
        q = MemoryQueue()
        answered, streamed, queued = job(text="answered"), job(text="streamed", stream=True), job(text="queued")
        for j in (answered, streamed):
            await q.submit(j)
        for j in await q.claim("a", "w", 2):
            await q.publish_delta(j.id, "some text")
            await q.complete(j, ok(j))
        await q.submit(queued)
        for j in (answered, streamed, queued):
            await q.cancel(j.id)
        assert await q.claim("a", "w", 8) == []  # the queued one is skipped
        assert (q._results, q._streams, q._cancelled) == ({}, {}, set())

    asyncio.run(main())


def test_a_cancel_costs_the_same_however_many_jobs_wait():
    async def main():
        q = MemoryQueue(max_depth=100_000)
        jobs = [job(text=str(i)) for i in range(20_000)]
        for j in jobs:
            await q.submit(j)
        started = time.perf_counter()
        for j in jobs[-2_000:]:  # the newest: a scan of the queues would pass every other job each time
            await q.cancel(j.id)
        took = time.perf_counter() - started
        assert took < 0.5, f"2,000 cancels behind 18,000 queued jobs took {took:.2f}s"
        assert len(await q.claim("a", "w", 20_000)) == 18_000

    asyncio.run(main())


def test_a_job_cancelled_while_running_is_forgotten_unless_its_caller_still_reads():
    async def main():
        q = MemoryQueue()
        gone, watched = job(text="gone"), job(text="watched", stream=True)
        for j in (gone, watched):
            await q.submit(j)
        claimed = await q.claim("a", "w", 2)
        reader = asyncio.create_task(read_all(q, watched.id))
        await asyncio.sleep(0)
        for j in (gone, watched):
            await q.cancel(j.id)
        for j in claimed:
            await q.complete(j, ok(j, "stopped early"))
        assert (await reader)[-1].completion.text == "stopped early"  # a caller still reading gets the result
        assert gone.id not in q._results and not q._cancelled

    asyncio.run(main())
