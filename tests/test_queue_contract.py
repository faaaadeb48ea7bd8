"""The JobQueue contract, run against both backends: the in-process queue and Redis Streams (real Redis).

Each Redis test uses its own key prefix and deletes its keys afterwards, so it never touches other data.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from workers.jobs import Completion, GenerationRequest, Job, JobResult
from workers.queue import Delta, JobQueue, QueueFull
from workers.queue_memory import MemoryQueue

REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


Scenario = Callable[[Callable[..., JobQueue]], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> str:
    if request.param == "redis" and not _redis_up():
        pytest.skip(f"no Redis at {REDIS_URL}")
    return request.param


@pytest.fixture
def run(backend):
    """run(scenario): runs `scenario(make_queue)` in a fresh event loop; make_queue(**kw) builds a queue of
    this backend (Redis: a unique key prefix), closed and cleaned up afterwards."""
    prefix = f"coetest:{uuid.uuid4().hex[:12]}"

    def go(scenario: Scenario) -> None:
        async def main():
            made: list[JobQueue] = []

            def make_queue(max_depth: int = 1000, **kw) -> JobQueue:
                if backend == "memory":
                    q = MemoryQueue(max_depth=max_depth)
                else:
                    from workers.queue_redis import RedisQueue

                    q = RedisQueue(REDIS_URL, max_depth=max_depth, prefix=prefix, **kw)
                made.append(q)
                return q

            try:
                await scenario(make_queue)
            finally:
                for q in made:
                    if backend == "redis":
                        keys = [k async for k in q.redis.scan_iter(match=f"{prefix}:*")]
                        if keys:
                            await q.redis.delete(*keys)
                    await q.close()

        asyncio.run(main())

    go.backend = backend
    go.prefix = prefix
    return go


def job(expert: str = "a", text: str = "hi", stream: bool = False) -> Job:
    return Job(expert=expert, request=GenerationRequest(messages=[{"role": "user", "content": text}], max_tokens=4),
               stream=stream)


def ok(j: Job, text: str = "answer", worker: str = "w") -> JobResult:
    return JobResult(job_id=j.id, expert=j.expert, completion=Completion(text, 3, 1), worker=worker)


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

    run(scenario)


def test_wait_result_times_out(run):
    async def scenario(make_queue):
        q = make_queue()
        j = job()
        await q.submit(j)
        with pytest.raises(TimeoutError):
            await q.wait_result(j.id, timeout=0.3)

    run(scenario)


# --- Redis only: crash recovery ---------------------------------------------------


@pytest.fixture
def redis_run(run):
    if run.backend != "redis":
        pytest.skip("crash recovery is a Redis Streams feature")
    return run


def test_reclaims_jobs_of_a_consumer_that_died(redis_run):
    async def scenario(make_queue):
        api, dead, alive = make_queue(), make_queue(heartbeat_s=60), make_queue()
        jobs = [job(text=str(i)) for i in range(3)]
        for j in jobs:
            await api.submit(j)
        claimed = await dead.claim("a", "dead-1", 2)  # claimed, never acknowledged
        assert len(claimed) == 2
        assert await alive.reclaim_stale("a", "alive-1", idle_s=30, max_jobs=8) == []  # not idle long enough
        assert (await alive.pending(["a"]))["a"].count == 1
        await asyncio.sleep(0.7)
        reclaimed = await alive.reclaim_stale("a", "alive-1", idle_s=0.5, max_jobs=8)
        assert sorted(j.id for j in reclaimed) == sorted(j.id for j in claimed)
        for j in reclaimed:
            await alive.complete(j, ok(j, f"by alive {j.id}"))
        for j in claimed:
            result = await api.wait_result(j.id, timeout=5)
            assert result.completion.text == f"by alive {j.id}"
        # the dead worker wakes up and completes too: no second answer reaches anyone
        await dead.complete(claimed[0], ok(claimed[0], "late"))
        assert not await api.redis.exists(api._out(claimed[0].id))
        assert await api.depth() == 1

    redis_run(scenario)


def test_a_live_worker_keeps_its_jobs_with_heartbeats(redis_run):
    async def scenario(make_queue):
        api, busy, other = make_queue(), make_queue(heartbeat_s=0.2), make_queue()
        j = job()
        await api.submit(j)
        [claimed] = await busy.claim("a", "busy-1", 1)
        await asyncio.sleep(2.0)  # a long batch; the heartbeat keeps the job fresh
        assert await other.reclaim_stale("a", "other-1", idle_s=1.5, max_jobs=8) == []
        await busy.complete(claimed, ok(claimed))
        assert (await api.wait_result(j.id, timeout=5)).ok

    redis_run(scenario)


def test_a_reclaimed_job_that_was_answered_is_dropped(redis_run):
    async def scenario(make_queue):
        api, dead, alive = make_queue(), make_queue(heartbeat_s=60), make_queue()
        j = job()
        await api.submit(j)
        [claimed] = await dead.claim("a", "dead-1", 1)
        await api.redis.set(api._done(j.id), ok(j).to_json())  # answered, then died before the acknowledgement
        await asyncio.sleep(0.3)
        assert await alive.reclaim_stale("a", "alive-1", idle_s=0.2, max_jobs=8) == []
        assert await api.depth() == 0

    redis_run(scenario)


def test_a_reclaimed_stream_does_not_repeat_sent_text(redis_run):
    async def scenario(make_queue):
        api, dead, alive = make_queue(), make_queue(heartbeat_s=60), make_queue()
        j = job(stream=True)
        await api.submit(j)
        [claimed] = await dead.claim("a", "dead-1", 1)
        await dead.publish_delta(j.id, "Hel")
        await asyncio.sleep(0.3)
        [again] = await alive.reclaim_stale("a", "alive-1", idle_s=0.2, max_jobs=8)
        for piece in ("He", "l", "lo"):  # the same text generated again
            await alive.publish_delta(again.id, piece)
        await alive.complete(again, ok(again, "Hello"))
        events = [e async for e in api.events(j.id, timeout=5)]
        assert "".join(e.text for e in events if isinstance(e, Delta)) == "Hello"

    redis_run(scenario)


def test_recovers_when_redis_lost_its_data(redis_run):
    async def scenario(make_queue):
        api, worker = make_queue(), make_queue()
        await api.submit(job())
        [first] = await worker.claim("a", "w1", 1)
        await worker.complete(first, ok(first))
        keys = [k async for k in api.redis.scan_iter(match=f"{redis_run.prefix}:*")]
        await api.redis.delete(*keys)  # as if Redis restarted empty
        assert (await worker.pending(["a"]))["a"].count == 0
        j = job()
        await api.submit(j)
        assert (await worker.pending(["a"]))["a"].count == 1
        [claimed] = await worker.claim("a", "w1", 1)
        await worker.complete(claimed, ok(claimed))
        assert (await api.wait_result(j.id, timeout=5)).ok

    redis_run(scenario)


def test_forgets_consumers_that_are_long_gone(redis_run):
    async def scenario(make_queue):
        api, gone, alive = make_queue(), make_queue(heartbeat_s=60), make_queue()
        j = job()
        await api.submit(j)
        [claimed] = await gone.claim("a", "gone-1", 1)
        await gone.complete(claimed, ok(claimed))
        import workers.queue_redis as qr

        old = qr.CONSUMER_FORGET_IDLE_S
        qr.CONSUMER_FORGET_IDLE_S = 0.1
        try:
            await asyncio.sleep(0.3)
            await alive.reclaim_stale("a", "alive-1", idle_s=10, max_jobs=8)
        finally:
            qr.CONSUMER_FORGET_IDLE_S = old
        names = [c["name"] for c in await api.redis.xinfo_consumers(api._jobs("a"), "workers")]
        assert b"gone-1" not in names and "gone-1" not in names

    redis_run(scenario)


def test_finds_a_dead_workers_job_behind_many_live_ones(redis_run):
    async def scenario(make_queue):
        api, live, dead, alive = make_queue(), make_queue(heartbeat_s=0.2), make_queue(heartbeat_s=60), make_queue()
        for i in range(25):
            await api.submit(job(text=f"live {i}"))
        orphan = job(text="orphan")
        await api.submit(orphan)
        assert len(await live.claim("a", "live-1", 25)) == 25  # held by a live worker, heartbeat on
        assert [j.id for j in await dead.claim("a", "dead-1", 1)] == [orphan.id]
        await asyncio.sleep(1.3)
        [found] = await alive.reclaim_stale("a", "alive-1", idle_s=1.0, max_jobs=1)
        assert found.id == orphan.id

    redis_run(scenario)
