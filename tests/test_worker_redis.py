"""The Worker loop over the Redis queue (stand-in engines, real Redis): reclaimed jobs are not starved by new work,
a batch whose results cannot be stored is served again, a job that cannot be decoded does not stop the worker."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from tests.queue_helpers import REDIS_URL, redis_up
from tests.redis_server import needs_redis_server, running_redis
from workers.jobs import Completion, GenerationRequest, Job

EXPERTS = """version: 1
experts:
  - {name: x, engine: openai, model: m, api_base: "http://127.0.0.1:9/v1", device: cpu, max_batch: 2, params_b: 1}
"""


class SlowEngine:
    supports_sleep = False
    supports_stop = False
    delay_s = 0.2
    started = threading.Event()  # set when a batch begins
    go_on = threading.Event()  # a batch ends once this is set

    def __init__(self, spec):
        self.spec = spec

    def load(self):
        pass

    def unload(self):
        pass

    sleep = wake = load

    def generate(self, requests, on_delta=None, should_stop=None):
        SlowEngine.started.set()
        SlowEngine.go_on.wait(30)
        time.sleep(self.delay_s)
        texts = [r.messages[-1]["content"] for r in requests]
        for row, text in enumerate(texts):
            if on_delta is not None:
                on_delta(row, text)
        return [Completion(text=text, prompt_tokens=1, completion_tokens=1) for text in texts]


@pytest.fixture
def worker_env(tmp_path, monkeypatch):
    """(registry, make_worker(queue, **kw)) for one expert `x` on `cpu`, answered by SlowEngine (echoes the question)."""
    from coe.core.registry import load_registry
    from workers import worker as worker_mod

    (tmp_path / "experts.yaml").write_text(EXPERTS)
    monkeypatch.setattr(worker_mod, "create_engine", SlowEngine)
    SlowEngine.started.clear()
    SlowEngine.go_on.set()
    registry = load_registry(tmp_path / "experts.yaml")

    def make_worker(queue, **kw):
        w = worker_mod.Worker(registry, queue, **kw)
        w.ready.set()
        return w

    return registry, make_worker


def ask(text: str, stream: bool = False) -> Job:
    return Job(expert="x", request=GenerationRequest(messages=[{"role": "user", "content": text}]), stream=stream)


async def clean(prefix: str, *queues) -> None:
    keys = [k async for k in queues[0].redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await queues[0].redis.delete(*keys)
    for q in queues:
        await q.close()


@pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")
def test_jobs_of_a_dead_worker_are_served_while_new_work_keeps_coming(worker_env):
    from workers.queue_redis import RedisQueue

    _, make_worker = worker_env
    prefix = f"coetest:{uuid.uuid4().hex[:12]}"

    async def main():
        api, dead, mine = (RedisQueue(REDIS_URL, prefix=prefix, heartbeat_s=60) for _ in range(3))
        w = make_worker(mine, reclaim_idle_s=1.0, name="alive")
        orphan = ask("orphan")
        await api.submit(orphan)
        assert [j.id for j in await dead.claim("x", "dead", 1)] == [orphan.id]  # then the "dead" worker never acks
        stop = asyncio.Event()
        runner = asyncio.create_task(w.run(stop))
        started = time.monotonic()
        fresh = []

        async def keep_busy():
            while time.monotonic() - started < 6:
                job = ask("fresh")
                await api.submit(job)
                fresh.append(job)
                await asyncio.sleep(0.05)  # faster than the worker serves: there is always new work

        producer = asyncio.create_task(keep_busy())
        try:
            result = await api.wait_result(orphan.id, timeout=5)
            waited = time.monotonic() - started
            assert result.ok and result.completion.text == "orphan" and result.worker == "alive"
            assert not producer.done(), "the orphan was only served once new work stopped"
            assert waited < 4
        finally:
            producer.cancel()
            stop.set()
            await runner
            await clean(prefix, api, dead, mine)

    asyncio.run(main())


@needs_redis_server
def test_a_batch_whose_results_cannot_be_stored_is_served_after_redis_returns(tmp_path, worker_env):
    from workers.queue_redis import RedisQueue

    _, make_worker = worker_env
    SlowEngine.go_on.clear()

    async def main(rds):
        api = RedisQueue(rds.url)
        w = make_worker(RedisQueue(rds.url, heartbeat_s=0.2), reclaim_idle_s=1.0, name="w", outage_retry_s=0.2)
        jobs = [ask("streamed", stream=True), ask("plain")]
        for j in jobs:  # queued before the worker starts: one batch of two
            await api.submit(j)
        stop = asyncio.Event()
        runner = asyncio.create_task(w.run(stop))
        try:
            assert await asyncio.to_thread(SlowEngine.started.wait, 10)
            rds.stop()  # the batch ends while Redis is down: neither its text nor its results can be stored
            SlowEngine.go_on.set()
            await asyncio.sleep(1.5)
            rds.start()  # back, with every accepted job (append-only file)
            for j in jobs:
                result = await api.wait_result(j.id, timeout=20)
                assert result.ok and result.completion.text == j.request.messages[-1]["content"]
            assert await api.depth() == 0
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)
            await api.close()
            await w.queue.close()

    with running_redis(tmp_path) as rds:
        asyncio.run(main(rds))


@pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")
def test_a_job_that_cannot_be_decoded_does_not_stop_the_worker(worker_env):
    from workers.queue_redis import RedisQueue

    _, make_worker = worker_env
    prefix = f"coetest:{uuid.uuid4().hex[:12]}"

    async def main():
        api, mine = RedisQueue(REDIS_URL, prefix=prefix), RedisQueue(REDIS_URL, prefix=prefix)
        w = make_worker(mine, name="w")
        before = ask("before")
        await api.submit(before)
        await api.redis.xadd(f"{prefix}:jobs:x", {"job": "{not json", "t": "1.0"})
        after = ask("after")
        await api.submit(after)
        stop = asyncio.Event()
        runner = asyncio.create_task(w.run(stop))
        try:
            for j in (before, after):
                assert (await api.wait_result(j.id, timeout=10)).completion.text == j.request.messages[-1]["content"]
            assert not runner.done()
            assert (await api.counters())["dead_letter"] == 1
        finally:
            stop.set()
            await runner
            await clean(prefix, api, mine)

    asyncio.run(main())


@pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")
def test_a_worker_whose_device_loses_every_expert_keeps_running_and_serves_one_added_later(worker_env, tmp_path):
    from coe.core.registry import parse_registry
    from workers.queue_redis import RedisQueue

    _, make_worker = worker_env
    prefix = f"coetest:{uuid.uuid4().hex[:12]}"
    elsewhere = parse_registry(EXPERTS.replace("device: cpu", "device: remote"), tmp_path / "experts.yaml")
    back = parse_registry(EXPERTS.replace("name: x", "name: y"), tmp_path / "experts.yaml")

    async def main():
        api, mine = RedisQueue(REDIS_URL, prefix=prefix), RedisQueue(REDIS_URL, prefix=prefix)
        w = make_worker(mine, name="w")
        looks = []
        pending = mine.pending

        async def counted(experts):
            looks.append(experts)
            return await pending(experts)

        mine.pending = counted
        stop = asyncio.Event()
        runner = asyncio.create_task(w.run(stop))
        try:
            w.refresh(elsewhere)  # x moves to another device: this worker serves nothing
            await asyncio.sleep(0.5)
            looks.clear()
            await asyncio.sleep(2.0)
            assert not runner.done() and w.experts == []
            assert len(looks) <= 4, f"an idle worker with no experts looked for work {len(looks)} times in 2 s"
            w.refresh(back)  # y comes to this device
            job = Job(expert="y", request=GenerationRequest(messages=[{"role": "user", "content": "hello y"}]))
            await api.submit(job)
            assert (await api.wait_result(job.id, timeout=10)).completion.text == "hello y"
        finally:
            stop.set()
            await runner
            await clean(prefix, api, mine)

    asyncio.run(main())
