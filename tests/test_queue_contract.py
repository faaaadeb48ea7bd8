"""The JobQueue contract, run against both backends: the in-process queue and Redis Streams (real Redis).

Each Redis test uses its own key prefix and deletes its keys afterwards, so it never touches other data.
Redis-only behaviour (crash recovery, takeover, dead letters) is in tests/test_queue_redis.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.queue_helpers import REDIS_URL, job, ok, redis_up, runner
from workers.jobs import JobResult
from workers.queue import Delta, QueueFull


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> str:
    if request.param == "redis" and not redis_up():
        pytest.skip(f"no Redis at {REDIS_URL}")
    return request.param


@pytest.fixture
def run(backend):
    return runner(backend)


# --- both backends ---------------------------------------------------------------


def test_submit_claim_complete_wait_result(run):
    async def scenario(make_queue):
        q = make_queue()
        j = job(text="what is 2+2")
        await q.submit(j)
        waiter = asyncio.create_task(q.wait_result(j.id, timeout=10))
        [claimed] = await q.claim("a", "w1", 8)
        assert claimed.id == j.id and claimed.request == j.request and claimed.enqueued_at == j.enqueued_at
        await q.complete(claimed, ok(claimed, "4"))
        result = await waiter
        assert result.ok and result.completion.text == "4" and result.job_id == j.id
        assert await q.depth() == 0

    run(scenario)


def test_error_results_travel_too(run):
    async def scenario(make_queue):
        q = make_queue()
        j = job()
        await q.submit(j)
        [claimed] = await q.claim("a", "w1", 1)
        await q.complete(claimed, JobResult(job_id=j.id, expert="a", error="EngineError: boom", error_type="engine_error"))
        result = await q.wait_result(j.id, timeout=5)
        assert not result.ok and "boom" in result.error

    run(scenario)


def test_claim_batches_with_count_oldest_first(run):
    async def scenario(make_queue):
        q = make_queue()
        jobs = [job(text=str(i)) for i in range(5)]
        for j in jobs:
            await q.submit(j)
        await q.submit(job(expert="b"))
        first = await q.claim("a", "w1", 3)
        second = await q.claim("a", "w2", 3)
        assert [j.id for j in first] == [j.id for j in jobs[:3]]
        assert [j.id for j in second] == [j.id for j in jobs[3:]]
        assert await q.claim("a", "w1", 3) == []
        assert len(await q.claim("b", "w1", 3)) == 1

    run(scenario)


def test_pending_counts_unclaimed_work_and_oldest_age(run):
    async def scenario(make_queue):
        q = make_queue()
        a1, a2, b1 = job("a"), job("a"), job("b")
        a1.enqueued_at, a2.enqueued_at, b1.enqueued_at = 100.0, 200.0, 150.0
        for j in (a1, a2, b1):
            await q.submit(j)
        stats = await q.pending(["a", "b", "c"])
        assert (stats["a"].count, stats["a"].oldest_enqueued_at) == (2, 100.0)
        assert (stats["b"].count, stats["b"].oldest_enqueued_at) == (1, 150.0)
        assert (stats["c"].count, stats["c"].oldest_enqueued_at) == (0, None)
        [claimed] = await q.claim("a", "w1", 1)
        assert claimed.id == a1.id
        stats = await q.pending(["a", "b"])
        assert (stats["a"].count, stats["a"].oldest_enqueued_at) == (1, 200.0)
        assert await q.depth() == 3  # claimed but unfinished work still counts
        await q.complete(claimed, ok(claimed))
        assert await q.depth() == 2

    run(scenario)


def test_streaming_deltas_arrive_in_order_then_the_result(run):
    async def scenario(make_queue):
        q = make_queue()
        j = job(stream=True)
        await q.submit(j)
        [claimed] = await q.claim("a", "w1", 1)

        async def collect():
            return [e async for e in q.events(j.id, timeout=10)]

        reader = asyncio.create_task(collect())
        for piece in ("The", " answer", " is", " 4"):
            await q.publish_delta(claimed.id, piece)
            await asyncio.sleep(0.01)
        await q.complete(claimed, ok(claimed, "The answer is 4"))
        events = await reader
        assert [e.text for e in events[:-1]] == ["The", " answer", " is", " 4"]
        assert all(isinstance(e, Delta) for e in events[:-1])
        assert isinstance(events[-1], JobResult) and events[-1].completion.text == "The answer is 4"

    run(scenario)


def test_depth_limit_refuses_with_queue_full(run):
    async def scenario(make_queue):
        q = make_queue(max_depth=2)
        await q.submit(job("a"))
        await q.submit(job("b"))
        with pytest.raises(QueueFull):
            await q.submit(job("a"))
        [claimed] = await q.claim("a", "w1", 1)
        with pytest.raises(QueueFull):  # running jobs still count
            await q.submit(job("a"))
        await q.complete(claimed, ok(claimed))
        await q.submit(job("a"))

    run(scenario)


def test_wait_for_work_wakes_on_submit_and_otherwise_times_out(run):
    async def scenario(make_queue):
        q = make_queue()
        t0 = time.monotonic()
        await q.wait_for_work(["a", "b"], timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 2.0
        waiter = asyncio.create_task(q.wait_for_work(["a", "b"], timeout=5))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await q.submit(job("b"))
        await asyncio.wait_for(waiter, 2)
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        await q.wait_for_work(["b"], timeout=5)  # unclaimed work: returns at once
        assert time.monotonic() - t0 < 0.5
        t0 = time.monotonic()
        await q.wait_for_work([], timeout=0.3)  # a worker whose device has no experts left waits, never spins
        assert 0.25 <= time.monotonic() - t0 < 2.0

    run(scenario)


def test_wait_result_times_out(run):
    async def scenario(make_queue):
        q = make_queue()
        j = job()
        await q.submit(j)
        with pytest.raises(TimeoutError):
            await q.wait_result(j.id, timeout=0.3)

    run(scenario)


def test_a_cancelled_queued_job_is_never_claimed(run):
    async def scenario(make_queue):
        q = make_queue()
        gone, kept = job(text="gone"), job(text="kept")
        await q.submit(gone)
        await q.submit(kept)
        await q.cancel(gone.id)
        assert [j.id for j in await q.claim("a", "w1", 8)] == [kept.id]
        assert (await q.pending(["a"]))["a"].count == 0
        await q.complete(kept, ok(kept))
        assert await q.depth() == 0
        assert (await q.counters())["cancelled_queued"] == 1

    run(scenario)


def test_a_cancelled_running_job_is_reported_stopped(run):
    async def scenario(make_queue):
        q = make_queue()
        a, b = job(text="a"), job(text="b")
        await q.submit(a)
        await q.submit(b)
        assert len(await q.claim("a", "w1", 8)) == 2
        assert await q.stopped([a.id, b.id]) == set()
        await q.cancel(a.id)
        assert await q.stopped([a.id, b.id]) == {a.id}
        await q.complete(a, JobResult(job_id=a.id, expert="a", error="cancelled by its caller", error_type="cancelled"))
        await q.complete(b, ok(b))
        assert (await q.wait_result(b.id, timeout=5)).ok
        counters = await q.counters()
        assert (counters["cancelled_running"], counters["cancelled_queued"], counters["dead_letter"]) == (1, 0, 0)
        assert await q.depth() == 0

    run(scenario)


def test_released_jobs_are_claimed_again(run):
    async def scenario(make_queue):
        q = make_queue()
        jobs = [job(text=str(i)) for i in range(3)]
        for j in jobs:
            await q.submit(j)
        first = await q.claim("a", "w1", 2)
        await q.release(first)  # e.g. their results could not be stored
        assert (await q.pending(["a"]))["a"].count == 3
        again = await q.claim("a", "w2", 8)
        assert sorted(j.id for j in again) == sorted(j.id for j in jobs)
        for j in again:
            await q.complete(j, ok(j, f"by w2 {j.id}"))
        for j in jobs:
            assert (await q.wait_result(j.id, timeout=5)).completion.text == f"by w2 {j.id}"
        assert await q.depth() == 0

    run(scenario)


def test_live_consumers_are_counted_per_device(run):
    async def scenario(make_queue):
        q = make_queue()
        assert await q.consumers("cpu") == 0
        await q.announce("cpu", "w1", ttl_s=30)
        await q.announce("cpu", "w2", ttl_s=0.3)
        await q.announce("gpu:0", "g1", ttl_s=30)
        assert (await q.consumers("cpu"), await q.consumers("gpu:0"), await q.consumers("remote")) == (2, 1, 0)
        await asyncio.sleep(0.6)  # w2 stopped announcing
        assert await q.consumers("cpu") == 1
        await q.withdraw("cpu", "w1")
        assert (await q.consumers("cpu"), await q.consumers("gpu:0")) == (0, 1)

    run(scenario)
