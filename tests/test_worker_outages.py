"""The worker through Redis faults (stand-in engines, real Redis): whatever fails between claiming a job and
answering it, the job is answered or handed back within one lease, and an outage never unloads a model.

Faults are injected where they hurt: a queue whose second claim of a turn fails (Redis went away between
two claims of one batch), a private redis-server stopped and started again while the worker serves.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections import Counter

import pytest

from coe_evals.gpu import stand_in_vllm
from tests.queue_helpers import REDIS_URL, redis_up
from tests.redis_server import needs_redis_server, running_redis
from workers.jobs import Completion, GenerationRequest, Job
from workers.queue import QueueUnavailable
from workers.queue_redis import RedisQueue

needs_redis = pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")

SHARED = """version: 1
experts:
  - {{name: x, engine: {engine}, model: org/m, {where}, memory_gb: 1, max_batch: 4, params_b: 1}}
  - {{name: y, engine: {engine}, model: org/m, {where}, memory_gb: 1, max_batch: 4, params_b: 1}}
"""
"""Two experts on one set of weights: one batch claims from both."""


class EchoEngine:
    """Answers with the question; counts loads and unloads (class-wide, the worker builds its own instance)."""

    supports_sleep = False
    supports_stop = False
    calls: Counter = Counter()

    def __init__(self, spec):
        self.spec = spec

    def load(self):
        EchoEngine.calls["load"] += 1

    def unload(self):
        EchoEngine.calls["unload"] += 1

    sleep, wake = unload, load

    def generate(self, requests, on_delta=None, should_stop=None):
        return [Completion(text=r.messages[-1]["content"], prompt_tokens=1, completion_tokens=1) for r in requests]


class BlipOnSecondClaim(RedisQueue):
    """Redis goes away for one call: the claim from expert `y`, right after the claim from `x` of the same turn."""

    blips = 1

    async def claim(self, expert, consumer, max_jobs):
        if expert == "y" and self.blips:
            self.blips -= 1
            raise QueueUnavailable("redis went away between two claims of one batch")
        return await super().claim(expert, consumer, max_jobs)


def ask(expert: str, text: str) -> Job:
    return Job(expert=expert, request=GenerationRequest(messages=[{"role": "user", "content": text}], max_tokens=4))


def worker_for(tmp_path, queue, text: str, **kw):
    from coe.core.registry import load_registry
    from workers.worker import Worker

    (tmp_path / "experts.yaml").write_text(text)
    w = Worker(load_registry(tmp_path / "experts.yaml"), queue, name="w", outage_retry_s=0.1, **kw)
    w.ready.set()
    return w


async def drop_keys(prefix: str, *queues) -> None:
    keys = [k async for k in queues[0].redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await queues[0].redis.delete(*keys)
    for q in queues:
        await q.close()


async def serve_until_answered(w, api, jobs: list[Job], timeout: float) -> dict[str, str]:
    """Run the worker until every job is answered (or `timeout`); the answers' texts by job id."""
    stop = asyncio.Event()
    runner = asyncio.create_task(w.run(stop))
    try:
        results = await asyncio.gather(*(api.wait_result(j.id, timeout=timeout) for j in jobs))
        return {r.job_id: r.completion.text for r in results}
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)


@pytest.fixture
def echo_engine(monkeypatch):
    from workers import worker as worker_mod

    monkeypatch.setattr(worker_mod, "create_engine", EchoEngine)
    EchoEngine.calls = Counter()


@pytest.fixture
def fake_vllm(monkeypatch):
    for name, module in stand_in_vllm.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(stand_in_vllm.AsyncLLM, "instances", [])
    monkeypatch.setattr(stand_in_vllm.AsyncLLM, "step_s", 0.01)


@needs_redis
@pytest.mark.parametrize("engine", ["echo", "stand_in_vllm"])
def test_a_job_claimed_just_before_redis_went_away_is_answered_within_one_lease(tmp_path, request, engine):
    """The batch loop (echo engine) and the continuous loop (stand-in vLLM): x's job, claimed before the claim
    from y failed, is served or handed back; the heartbeat must not keep it held by nobody."""
    request.getfixturevalue("echo_engine" if engine == "echo" else "fake_vllm")
    where = "api_base: 'http://127.0.0.1:9/v1', device: cpu" if engine == "echo" else "device: cpu"
    text = SHARED.format(engine="openai" if engine == "echo" else "vllm", where=where)
    prefix = f"coetest:{uuid.uuid4().hex[:12]}"

    async def main():
        api = RedisQueue(REDIS_URL, prefix=prefix)
        mine = BlipOnSecondClaim(REDIS_URL, prefix=prefix, heartbeat_s=0.2)
        w = worker_for(tmp_path, mine, text, reclaim_idle_s=1.0)
        first, second = ask("x", "first"), ask("y", "second")
        for j in (first, second):
            await api.submit(j)
        try:
            answers = await serve_until_answered(w, api, [first, second], timeout=4.0)  # one lease is 1 s
            assert mine.blips == 0, "the fault was not injected"
            if engine == "echo":
                assert answers == {first.id: "first", second.id: "second"}
            else:
                assert set(answers) == {first.id, second.id}
            assert await api.depth() == 0 and not mine.leases.held
        finally:
            await drop_keys(prefix, api, mine)

    asyncio.run(main())


@needs_redis_server
def test_a_redis_restart_keeps_the_models_loaded(tmp_path, echo_engine):
    async def main(rds):
        api = RedisQueue(rds.url, outage_grace_s=10)
        w = worker_for(tmp_path, RedisQueue(rds.url, heartbeat_s=0.2), SHARED.format(
            engine="openai", where="api_base: 'http://127.0.0.1:9/v1', device: cpu"), reclaim_idle_s=1.0)
        stop = asyncio.Event()
        runner = asyncio.create_task(w.run(stop))
        try:
            before = ask("x", "before")
            await api.submit(before)
            assert (await api.wait_result(before.id, timeout=5)).ok
            rds.stop()
            await asyncio.sleep(1.0)  # the worker meets the outage
            rds.start()
            after = ask("y", "after")
            await api.submit(after)
            assert (await api.wait_result(after.id, timeout=5)).completion.text == "after"
            assert not runner.done()
            assert EchoEngine.calls == Counter(load=1), "the outage unloaded the model"
        finally:
            stop.set()
            await asyncio.wait_for(runner, 10)
            await api.close()
            await w.queue.close()

    with running_redis(tmp_path) as rds:
        asyncio.run(main(rds))
