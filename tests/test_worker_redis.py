"""The Worker loop over the Redis queue (fake engine, real Redis): reclaimed jobs are not starved by new work."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.test_queue_contract import REDIS_URL, _redis_up
from workers.jobs import Completion, GenerationRequest, Job

pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"no Redis at {REDIS_URL}")


class SlowEngine:
    supports_sleep = False

    def __init__(self, spec):
        self.spec = spec

    def load(self):
        pass

    def unload(self):
        pass

    sleep = wake = load

    def generate(self, requests, on_delta=None):
        time.sleep(0.2)
        return [Completion(text=r.messages[-1]["content"], prompt_tokens=1, completion_tokens=1) for r in requests]


def test_jobs_of_a_dead_worker_are_served_while_new_work_keeps_coming(tmp_path, monkeypatch):
    from coe.core.registry import load_registry
    from workers import worker as worker_mod
    from workers.queue_redis import RedisQueue

    (tmp_path / "experts.yaml").write_text("""version: 1
experts:
  - {name: x, engine: openai, model: m, api_base: "http://127.0.0.1:9/v1", device: cpu, max_batch: 2, params_b: 1}
""")
    monkeypatch.setattr(worker_mod, "create_engine", SlowEngine)
    prefix = f"coetest:{uuid.uuid4().hex[:12]}"

    def ask(text: str) -> Job:
        return Job(expert="x", request=GenerationRequest(messages=[{"role": "user", "content": text}]))

    async def main():
        api, dead, mine = (RedisQueue(REDIS_URL, prefix=prefix, heartbeat_s=60) for _ in range(3))
        w = worker_mod.Worker(load_registry(tmp_path / "experts.yaml"), mine, reclaim_idle_s=1.0, name="alive")
        w.ready.set()
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
            keys = [k async for k in api.redis.scan_iter(match=f"{prefix}:*")]
            if keys:
                await api.redis.delete(*keys)
            for q in (api, dead, mine):
                await q.close()

    asyncio.run(main())
