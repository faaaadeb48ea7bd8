"""The worker's continuous loop (workers/continuous.py): the real Worker, the real queues, the real vllm engine
on a stand-in of vLLM's AsyncLLM (it decodes one word per step per request, records calls and aborts).

Jobs start as they are claimed and finish one by one, text streams before the end, max_batch caps what
is inside the engine, deadlines and cancels abort, a switch waits for the resident group to drain, all
groups that fit are served at once, the starvation rule switches a busy group, and a failed load fails
only that group's jobs. The Redis variant checks the same loop over Redis Streams.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import pytest

from coe_evals.gpu import stand_in_vllm
from tests.queue_helpers import REDIS_URL, redis_up
from workers.jobs import GenerationRequest, Job, JobResult
from workers.queue import Delta
from workers.queue_memory import MemoryQueue


@pytest.fixture(autouse=True)
def fake_vllm(monkeypatch):
    for name, module in stand_in_vllm.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(stand_in_vllm.AsyncLLM, "instances", [])
    monkeypatch.setattr(stand_in_vllm.AsyncLLM, "step_s", 0.01)
    return stand_in_vllm


def make_worker(tmp_path: Path, queue, experts: int = 1, max_batch: int = 8, budget: float | None = None, **kw):
    from coe.core.registry import load_registry
    from workers.worker import Worker

    lines = ["version: 1", "experts:"]
    for i in range(experts):
        lines.append(f"  - {{name: x{i}, engine: vllm, model: org/m{i}, device: cpu, memory_gb: 1, max_batch: {max_batch}, params_b: 1}}")
    (tmp_path / "experts.yaml").write_text("\n".join(lines) + "\n")
    w = Worker(load_registry(tmp_path / "experts.yaml"), queue, memory_budget_gb=budget, **kw)
    w.ready.set()  # nothing resident at the start: the loop loads what it needs
    return w


def job(expert: str = "x0", max_tokens: int = 4, **kw) -> Job:
    return Job(expert=expert, request=GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens), **kw)


class Running:
    """The worker's loop as a task for the length of a `with` block."""

    def __init__(self, worker):
        self.worker, self.stop = worker, asyncio.Event()

    async def __aenter__(self):
        self.task = asyncio.create_task(self.worker.run(self.stop))
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.wait_for(self.task, 10)
        for engine in self.worker.engines.values():
            await asyncio.to_thread(engine.unload)


async def finish_order(queue, jobs: list[Job], timeout: float = 10) -> tuple[list[str], dict[str, JobResult]]:
    order, results = [], {}

    async def wait(j: Job) -> None:
        results[j.id] = await queue.wait_result(j.id, timeout)
        order.append(j.id)

    await asyncio.gather(*(wait(j) for j in jobs))
    return order, results


def engine_of(worker, expert: str):
    return next(e for k, e in worker.engines.items() if f"org/m{expert[1:]}|" in k)


def test_a_short_job_finishes_first_while_a_long_one_runs_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = MemoryQueue()
        w = make_worker(tmp_path, queue)
        async with Running(w):
            long, short = job(max_tokens=80), job(max_tokens=3)
            await queue.submit(long)
            await asyncio.sleep(0.3)  # the long one is decoding when the short one arrives
            await queue.submit(short)
            order, results = await finish_order(queue, [long, short])
        assert order == [short.id, long.id]
        assert all(r.ok for r in results.values()) and results[short.id].batch_size == 2
        assert results[long.id].completion.completion_tokens == 80

    asyncio.run(go())


def test_a_scoring_job_gets_choice_logprobs_not_text_with_stand_in_vllm(tmp_path, fake_vllm) -> None:
    async def go():
        queue = MemoryQueue()
        w = make_worker(tmp_path, queue)
        async with Running(w):
            scoring = Job(expert="x0", request=GenerationRequest(messages=[{"role": "user", "content": "2+2? A) 3 B) 4"}],
                                                                  max_tokens=1, choices=[" A", " B"]))
            text = job(max_tokens=3)
            for j in (scoring, text):
                await queue.submit(j)
            _, results = await finish_order(queue, [scoring, text])
            engine = engine_of(w, "x0")
            expected = engine.choice_logprobs([scoring.request], [" A", " B"])[0]
        scored = results[scoring.id].completion
        assert scored.choice_logprobs == pytest.approx(expected) and len(expected) == 2
        assert scored.text == [" A", " B"][expected.index(max(expected))] and scored.prompt_tokens > 0
        assert results[text.id].completion.text == "w0 w1 w2 "  # the other job in the engine still gets text

    asyncio.run(go())


def test_text_streams_to_the_client_before_the_job_ends_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = MemoryQueue()
        async with Running(make_worker(tmp_path, queue)):
            j = job(max_tokens=30, stream=True)
            await queue.submit(j)
            events = [(time.perf_counter(), e) async for e in queue.events(j.id, 10)]
        deltas = [e.text for _, e in events if isinstance(e, Delta)]
        result = events[-1][1]
        assert isinstance(result, JobResult) and result.ok and "".join(deltas) == result.completion.text
        assert len(deltas) > 1 and events[-1][0] - events[0][0] > 0.1  # the first text came well before the end

    asyncio.run(go())


class PublishBreaks(MemoryQueue):
    """A queue whose text channel fails with an error that is not a lost connection (say Redis refuses a write)."""

    async def publish_delta(self, job_id: str, text: str) -> None:
        raise RuntimeError("OOM command not allowed when used memory > 'maxmemory'")


def test_a_stream_whose_text_cannot_be_published_is_answered_with_an_error_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = PublishBreaks()
        async with Running(make_worker(tmp_path, queue)):
            broken, after = job(max_tokens=5, stream=True), job(max_tokens=3)
            for j in (broken, after):
                await queue.submit(j)
            events = [e async for e in queue.events(broken.id, 5)]
            assert (await queue.wait_result(after.id, 5)).ok  # the worker goes on
        assert [type(e) for e in events] == [JobResult]
        assert not events[0].ok and "could not be streamed" in events[0].error and "maxmemory" in events[0].error

    asyncio.run(go())


def test_max_batch_caps_the_jobs_inside_the_engine_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = MemoryQueue()
        w = make_worker(tmp_path, queue, max_batch=2)
        async with Running(w):
            jobs = [job(max_tokens=5) for _ in range(6)]
            for j in jobs:
                await queue.submit(j)
            _, results = await finish_order(queue, jobs)
        assert all(r.ok for r in results.values())
        assert stand_in_vllm.AsyncLLM.instances[-1].record.peak_running == 2

    asyncio.run(go())


def test_deadline_and_cancel_abort_in_the_engine_and_free_the_slot_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = MemoryQueue()
        w = make_worker(tmp_path, queue, max_batch=1)
        async with Running(w):
            late = job(max_tokens=10_000, deadline=time.time() + 0.3)
            await queue.submit(late)
            result = await queue.wait_result(late.id, 10)
            assert result.error_type == "cancelled" and "deadline" in result.error
            gone = job(max_tokens=10_000)
            await queue.submit(gone)
            while gone.id not in w.continuous.running:
                await asyncio.sleep(0.01)
            assert w.continuous.cancel(gone.id) and not w.continuous.cancel("no-such-job")
            assert (await queue.wait_result(gone.id, 10)).error_type == "cancelled"
            after = job(max_tokens=3)  # max_batch 1: served only because the aborted ones left the engine
            await queue.submit(after)
            assert (await queue.wait_result(after.id, 10)).ok
        llm = stand_in_vllm.AsyncLLM.instances[-1]
        assert len(set(llm.record.aborted)) == 2 and not llm.running

    asyncio.run(go())


def test_a_caller_that_gives_up_aborts_its_running_job_in_the_engine_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = MemoryQueue()
        w = make_worker(tmp_path, queue, max_batch=1)
        async with Running(w):
            gone = job(max_tokens=10_000)
            await queue.submit(gone)
            while gone.id not in w.continuous.running:
                await asyncio.sleep(0.01)
            await queue.cancel(gone.id)  # what the pipeline does when the client disconnects or the 504 fires
            deadline = time.time() + 10
            while gone.id in w.continuous.running:
                assert time.time() < deadline, "the running job was not aborted"
                await asyncio.sleep(0.05)
        assert len(set(stand_in_vllm.AsyncLLM.instances[-1].record.aborted)) == 1  # aborted inside the engine

    asyncio.run(go())


def test_a_switch_waits_for_the_resident_group_to_drain_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = MemoryQueue()
        w = make_worker(tmp_path, queue, experts=2, budget=1)  # room for one model
        async with Running(w):
            a = job("x0", max_tokens=40)
            await queue.submit(a)
            await asyncio.sleep(0.2)
            b = job("x1", max_tokens=3)
            await queue.submit(b)
            order, results = await finish_order(queue, [a, b])
        assert order == [a.id, b.id] and all(r.ok for r in results.values())
        first, second = engine_of(w, "x0"), engine_of(w, "x1")
        assert [c[0] for c in stand_in_vllm.AsyncLLM.instances[0].record.calls] == ["generate", "sleep", "shutdown"]
        assert first.llm is None and second.llm is None  # unloaded at the end of the test
        assert w.scheduler.stats.switches == 2 and w.scheduler.stats.evictions == 1

    asyncio.run(go())


def test_groups_that_fit_are_served_at_once_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = MemoryQueue()
        w = make_worker(tmp_path, queue, experts=2)  # default budget: everything resident
        async with Running(w):
            a = job("x0", max_tokens=60)
            await queue.submit(a)
            await asyncio.sleep(0.3)
            b = job("x1", max_tokens=3)
            await queue.submit(b)
            order, _ = await finish_order(queue, [a, b])
        assert order == [b.id, a.id] and w.scheduler.stats.evictions == 0

    asyncio.run(go())


def test_a_starving_group_gets_switched_in_while_another_stays_busy_with_stand_in_vllm(tmp_path) -> None:
    async def go():
        queue = MemoryQueue()
        w = make_worker(tmp_path, queue, experts=2, budget=1, max_batch=2)
        w.scheduler.max_wait_s = 0.5
        async with Running(w):
            started = time.monotonic()
            busy = []

            async def keep_x0_busy():
                while time.monotonic() - started < 4:
                    j = job("x0", max_tokens=10)
                    busy.append(j)
                    await queue.submit(j)
                    await asyncio.sleep(0.03)  # faster than two slots serve: x0 always has work waiting

            producer = asyncio.create_task(keep_x0_busy())
            await asyncio.sleep(0.3)
            starved = job("x1", max_tokens=2)
            await queue.submit(starved)
            result = await queue.wait_result(starved.id, 10)
            waited = time.monotonic() - started - 0.3
            assert not producer.done(), "x1 was served only once x0's work stopped"
            await producer
            await finish_order(queue, busy, timeout=30)
        assert result.ok and waited < 3

    asyncio.run(go())


def test_a_model_that_cannot_load_fails_its_own_jobs_only_with_stand_in_vllm(tmp_path, monkeypatch) -> None:
    real = stand_in_vllm.AsyncLLM.from_engine_args.__func__

    def start(cls, engine_args, **kw):
        if engine_args.kwargs["model"] == "org/m1":
            raise RuntimeError("CUDA out of memory")
        return real(cls, engine_args, **kw)

    monkeypatch.setattr(stand_in_vllm.AsyncLLM, "from_engine_args", classmethod(start))

    async def go():
        queue = MemoryQueue()
        async with Running(make_worker(tmp_path, queue, experts=2)):
            bad, good = job("x1"), job("x0")
            await queue.submit(bad)
            await queue.submit(good)
            _, results = await finish_order(queue, [bad, good])
        assert results[good.id].ok
        assert "could not be loaded" in results[bad.id].error and "CUDA out of memory" in results[bad.id].error

    asyncio.run(go())


@pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")
def test_the_continuous_loop_over_redis_with_stand_in_vllm(tmp_path) -> None:
    from workers.queue_redis import RedisQueue

    async def go():
        prefix = f"coetest:{uuid.uuid4().hex[:12]}"
        api, mine = RedisQueue(REDIS_URL, prefix=prefix), RedisQueue(REDIS_URL, prefix=prefix)
        try:
            async with Running(make_worker(tmp_path, mine, name="continuous")):
                long, short = job(max_tokens=60, stream=True), job(max_tokens=3)
                await api.submit(long)
                await asyncio.sleep(0.3)
                await api.submit(short)
                assert (await api.wait_result(short.id, 10)).ok
                events = [e async for e in api.events(long.id, 10)]
            assert "".join(e.text for e in events if isinstance(e, Delta)) == events[-1].completion.text
            assert events[-1].worker == "continuous" and await api.depth() == 0
        finally:
            await api.close()
            await mine.close()

    asyncio.run(go())


@pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")
def test_a_device_auto_expert_is_served_through_redis_once_its_gpu_worker_is_up_with_stand_in_vllm(tmp_path) -> None:
    """The API never places experts (it may have no GPU): a `device: auto` expert must still count as served when
    the worker of the GPU its placement chose is alive, not wait for a worker of the device 'auto'."""
    from coe.core.registry import load_registry
    from coe.core.settings import Settings
    from coe.dispatch import Dispatch
    from workers.queue_redis import RedisQueue
    from workers.worker import Worker

    (tmp_path / "experts.yaml").write_text("version: 1\nexperts:\n  - {name: g, engine: vllm, model: org/m0, "
                                           "device: auto, memory_gb: 1, max_batch: 4, params_b: 1}\n")
    placed = load_registry(tmp_path / "experts.yaml")
    placed.place([80.0])

    async def go():
        prefix = f"coetest:{uuid.uuid4().hex[:12]}"
        api, mine = RedisQueue(REDIS_URL, prefix=prefix), RedisQueue(REDIS_URL, prefix=prefix)
        dispatch = Dispatch(load_registry(tmp_path / "experts.yaml"), api, Settings())
        w = Worker(placed, mine, device="gpu:0", name="gpu0")
        w.ready.set()
        try:
            async with Running(w):
                await asyncio.sleep(0.3)  # announced
                j = job(expert="g")
                await dispatch.submit(j, set())
                assert (await api.wait_result(j.id, 10)).worker == "gpu0"
        finally:
            await api.close()
            await mine.close()

    asyncio.run(go())
