"""Redis Streams only: crash recovery, takeover, dead letters and exact pending counts (real Redis).

Each test uses its own key prefix and deletes its keys afterwards, so it never touches other data.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.queue_helpers import REDIS_URL, job, ok, redis_up, runner
from workers.queue import Delta


@pytest.fixture
def redis_run():
    if not redis_up():
        pytest.skip(f"no Redis at {REDIS_URL}")
    return runner("redis")


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
        assert not await api.redis.exists(f"{redis_run.prefix}:out:{claimed[0].id}")
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
        await api.redis.set(f"{redis_run.prefix}:done:{j.id}", ok(j).to_json())  # answered, then died before the acknowledgement
        await asyncio.sleep(0.3)
        assert await alive.reclaim_stale("a", "alive-1", idle_s=0.2, max_jobs=8) == []
        assert await api.depth() == 0

    redis_run(scenario)


def test_a_stream_taken_over_after_text_was_sent_fails_clearly(redis_run):
    async def scenario(make_queue):
        api, paused, alive = make_queue(), make_queue(heartbeat_s=60), make_queue()
        j = job(stream=True)
        await api.submit(j)
        [claimed] = await paused.claim("a", "paused-1", 1)
        await paused.publish_delta(j.id, "Hel")
        await asyncio.sleep(0.3)
        assert await alive.reclaim_stale("a", "alive-1", idle_s=0.2, max_jobs=8) == []  # answered, not run again
        await paused.publish_delta(j.id, "lo")  # the paused worker wakes up: nothing of it reaches the client
        await paused.complete(claimed, ok(claimed, "Hello"))
        events = [e async for e in api.events(j.id, timeout=5)]
        assert [e.text for e in events[:-1]] == ["Hel"]
        assert not events[-1].ok and events[-1].error_type == "interrupted" and "retry" in events[-1].error
        assert await api.depth() == 0

    redis_run(scenario)


def test_a_stream_taken_over_before_any_text_restarts_without_splicing(redis_run):
    async def scenario(make_queue):
        api, paused, alive = make_queue(), make_queue(heartbeat_s=60), make_queue()
        j = job(stream=True)
        await api.submit(j)
        [claimed] = await paused.claim("a", "paused-1", 1)
        await asyncio.sleep(0.3)
        [again] = await alive.reclaim_stale("a", "alive-1", idle_s=0.2, max_jobs=8)
        await paused.publish_delta(j.id, "Bonjour")  # another sampled generation never mixes in
        for piece in ("Hel", "lo"):
            await alive.publish_delta(again.id, piece)
        await paused.complete(claimed, ok(claimed, "Bonjour"))
        await alive.complete(again, ok(again, "Hello"))
        events = [e async for e in api.events(j.id, timeout=5)]
        assert "".join(e.text for e in events if isinstance(e, Delta)) == "Hello"
        assert events[-1].completion.text == "Hello"

    redis_run(scenario)


def test_a_paused_worker_does_not_take_back_a_job_taken_over(redis_run):
    async def scenario(make_queue):
        api, paused, alive = make_queue(), make_queue(heartbeat_s=2.0), make_queue(heartbeat_s=0.2)
        j = job()
        await api.submit(j)
        [claimed] = await paused.claim("a", "paused-1", 1)
        await asyncio.sleep(1.0)  # paused: no heartbeat yet
        [again] = await alive.reclaim_stale("a", "alive-1", idle_s=0.8, max_jobs=8)
        await asyncio.sleep(1.6)  # the paused worker's heartbeat comes now
        [entry] = await api.redis.xpending_range(f"{redis_run.prefix}:jobs:a", "workers", "-", "+", 10)
        assert entry["consumer"] in (b"alive-1", "alive-1")
        assert await paused.stopped([j.id]) == {j.id}
        await paused.complete(claimed, ok(claimed, "late"))
        await alive.complete(again, ok(again, "by alive"))
        assert (await api.wait_result(j.id, timeout=5)).completion.text == "by alive"

    redis_run(scenario)


def test_a_job_that_cannot_be_decoded_is_dead_lettered(redis_run):
    async def scenario(make_queue):
        api, worker = make_queue(), make_queue()
        stream = f"{redis_run.prefix}:jobs:a"
        first, last = job(text="first"), job(text="last")
        await api.submit(first)
        await api.redis.xadd(stream, {"job": json.dumps({"id": "bad-1", "expert": "a", "request": {"nonsense": 1}}),
                                      "t": "1.0"})
        await api.redis.xadd(stream, {"job": b"\xff not json", "t": "1.0"})
        await api.submit(last)
        claimed = await worker.claim("a", "w1", 8)
        assert [j.id for j in claimed] == [first.id, last.id]
        result = await api.wait_result("bad-1", timeout=5)
        assert not result.ok and result.error_type == "bad_job" and "cannot be decoded" in result.error
        assert (await worker.counters())["dead_letter"] == 2
        assert await api.redis.xlen(f"{redis_run.prefix}:dead") == 2  # kept for inspection
        for j in claimed:
            await worker.complete(j, ok(j))
        assert await api.depth() == 0

    redis_run(scenario)


def test_pending_counts_only_undelivered_jobs(redis_run):
    async def scenario(make_queue):
        api, worker = make_queue(), make_queue()
        stream = f"{redis_run.prefix}:jobs:a"
        a, b = job(text="a"), job(text="b")
        await api.submit(a)
        await api.submit(b)
        await worker.claim("a", "w1", 1)
        [entry] = await api.redis.xpending_range(stream, "workers", "-", "+", 10)
        await api.redis.xack(stream, "workers", entry["message_id"])  # acknowledged, never deleted (a crash between)
        assert (await worker.pending(["a"]))["a"].count == 1
        await worker.claim("a", "w1", 1)
        assert (await worker.pending(["a"]))["a"].count == 0

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
        names = [c["name"] for c in await api.redis.xinfo_consumers(f"{redis_run.prefix}:jobs:a", "workers")]
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


def test_a_job_reclaimed_just_before_redis_went_away_goes_back_to_the_stream(redis_run):
    """Redis fails after XAUTOCLAIM handed the job over and before reclaim_stale returned it: the job must not
    stay held (and renewed by the heartbeat) by a worker that never got it."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from workers.queue import QueueUnavailable

    async def scenario(make_queue):
        api, dead, alive = make_queue(), make_queue(heartbeat_s=60), make_queue(heartbeat_s=0.1)
        j = job()
        await api.submit(j)
        await dead.claim("a", "dead-1", 1)
        await asyncio.sleep(0.3)

        async def redis_goes_away(expert):
            raise RedisConnectionError("Connection reset by peer")

        alive._forget_idle_consumers = redis_goes_away
        with pytest.raises(QueueUnavailable):
            await alive.reclaim_stale("a", "alive-1", idle_s=0.2, max_jobs=8)
        assert not alive.leases.held
        assert (await api.pending(["a"]))["a"].count == 1  # waiting again, for any worker
        [again] = await api.claim("a", "other-1", 1)
        assert again.id == j.id

    redis_run(scenario)


def test_a_job_that_no_worker_survives_is_dead_lettered_and_its_caller_answered(redis_run):
    """A poison job (each worker that takes it dies or hangs) is delivered at most `max_deliveries` (3) times, then
    set aside in the dead-letter stream with its caller answered, instead of taking down workers for ever."""
    async def scenario(make_queue):
        api, first = make_queue(), make_queue(heartbeat_s=60)
        takers = [make_queue(heartbeat_s=60) for _ in range(3)]
        poison, fine = job(text="poison"), job(text="fine")
        await api.submit(poison)
        assert [j.id for j in await first.claim("a", "w0", 1)] == [poison.id]  # delivery 1; then w0 dies
        for i, taker in enumerate(takers[:2], start=1):
            await asyncio.sleep(0.25)
            assert [j.id for j in await taker.reclaim_stale("a", f"w{i}", idle_s=0.2, max_jobs=8)] == [poison.id]
        await api.submit(fine)
        await asyncio.sleep(0.25)
        assert await takers[2].reclaim_stale("a", "w3", idle_s=0.2, max_jobs=8) == []  # a fourth delivery: set aside
        result = await api.wait_result(poison.id, timeout=2)
        assert not result.ok and result.error_type == "poison" and "3 times" in result.error
        counters = await api.counters()
        assert (counters["poison"], counters["dead_letter"]) == (1, 0)
        [(_, entry)] = await api.redis.xrange(f"{redis_run.prefix}:dead")
        assert poison.id in entry[b"raw"].decode() and b"3 times" in entry[b"error"]
        assert [j.id for j in await takers[2].claim("a", "w3", 8)] == [fine.id]  # the rest of the queue goes on
        assert await api.depth() == 1

    redis_run(scenario)


def test_many_waiting_requests_share_one_reader_and_each_gets_its_own_text_in_order(redis_run):
    """Forty callers waiting at once hold a bounded number of Redis connections: one reader per process reads
    every waiting job's out stream and hands each caller its own deltas, in order, then its result. A caller
    that gives up (times out, or is cancelled) leaves the others waiting as before."""
    name = f"coe-{redis_run.prefix.split(':')[1]}"
    url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}client_name={name}"

    async def scenario(make_queue):
        from workers.queue_redis import RedisQueue

        api, worker = RedisQueue(url, prefix=redis_run.prefix), make_queue()
        try:
            jobs = [job(text=str(i), stream=True) for i in range(40)]
            for j in jobs:
                await api.submit(j)
            waiting = [asyncio.create_task(_collect(api, j.id)) for j in jobs]
            impatient = asyncio.create_task(api.wait_result(job().id, timeout=0.5))
            await asyncio.sleep(0.5)
            clients = [c for c in await worker.redis.client_list() if c.get("name") == name]
            assert len(clients) <= 3, f"{len(clients)} connections for 40 waiting callers"
            waiting[0].cancel()
            with pytest.raises(TimeoutError):
                await impatient
            claimed = {c.id: c for c in await worker.claim("a", "w-1", 40)}
            for piece in ("a", "b", "c"):
                for j in reversed(jobs[1:]):
                    await worker.publish_delta(j.id, f"{piece}{j.request.messages[0]['content']}")
            for j in jobs[1:]:
                await worker.complete(claimed[j.id], ok(j, f"done {j.request.messages[0]['content']}"))
            for j, task in zip(jobs[1:], waiting[1:]):
                n = j.request.messages[0]["content"]
                assert await asyncio.wait_for(task, 10) == [f"a{n}", f"b{n}", f"c{n}", f"done {n}"]
            assert waiting[0].cancelled()
        finally:
            await api.close()

    redis_run(scenario)


async def _collect(queue, job_id: str) -> list[str]:
    return [e.text if isinstance(e, Delta) else e.completion.text async for e in queue.events(job_id, timeout=30)]


def test_a_waiting_caller_rides_out_a_redis_restart_and_hears_of_a_longer_outage(tmp_path):
    """The shared reader keeps each caller's outage grace: a restart within it is invisible to the caller,
    an outage past it answers QueueUnavailable instead of waiting to the deadline."""
    from tests.redis_server import running_redis
    from workers.queue import QueueUnavailable
    from workers.queue_redis import RedisQueue

    async def main(rds):
        api, worker = RedisQueue(rds.url, outage_grace_s=3), RedisQueue(rds.url)
        try:
            j = job()
            await api.submit(j)
            waiting = asyncio.create_task(api.wait_result(j.id, timeout=30))
            await asyncio.sleep(0.3)
            rds.stop()
            rds.start()  # appendonly: the job is still there
            [claimed] = await worker.claim("a", "w-1", 1)
            await worker.complete(claimed, ok(claimed, "after the restart"))
            assert (await asyncio.wait_for(waiting, 10)).completion.text == "after the restart"
            stranded = asyncio.create_task(api.wait_result(job().id, timeout=30))
            await asyncio.sleep(0.3)
            rds.stop()
            started = asyncio.get_running_loop().time()
            with pytest.raises(QueueUnavailable):
                await asyncio.wait_for(stranded, 10)
            assert asyncio.get_running_loop().time() - started < 5
        finally:
            await api.close()
            await worker.close()

    with running_redis(tmp_path) as rds:
        asyncio.run(main(rds))
