"""The Worker loop over the in-process queue with stand-in engines: what it does when a model will not load,
and that a cancelled job never reaches an engine."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from workers.engines.base import EngineError
from workers.jobs import Completion, GenerationRequest, Job
from workers.queue_memory import MemoryQueue

EXPERTS = """version: 1
experts:
  - {name: good, engine: openai, model: good-model, api_base: "http://127.0.0.1:9/v1", memory_gb: 1, params_b: 1}
  - {name: broken, engine: openai, model: broken-model, api_base: "http://127.0.0.1:9/v1", memory_gb: 1, params_b: 1}
"""


class StandInEngine:
    """Echoes the question; the model named `broken-model` never loads. Counts what happens to each model."""

    supports_sleep = False
    supports_stop = False
    calls: Counter = Counter()
    seen: list[str] = []

    def __init__(self, spec):
        self.spec = spec

    def load(self):
        StandInEngine.calls[("load", self.spec.model)] += 1
        if self.spec.model == "broken-model":
            raise EngineError("the weights file is corrupt")

    def unload(self):
        StandInEngine.calls[("unload", self.spec.model)] += 1

    sleep = unload
    wake = load

    def generate(self, requests, on_delta=None, should_stop=None):
        StandInEngine.seen += [r.messages[-1]["content"] for r in requests]
        return [Completion(text=r.messages[-1]["content"], prompt_tokens=1, completion_tokens=1) for r in requests]


@pytest.fixture
def make_worker(tmp_path, monkeypatch):
    from coe.core.registry import load_registry
    from workers import worker as worker_mod

    (tmp_path / "experts.yaml").write_text(EXPERTS)
    monkeypatch.setattr(worker_mod, "create_engine", StandInEngine)
    StandInEngine.calls = Counter()
    StandInEngine.seen = []

    def make(queue, **kw):
        w = worker_mod.Worker(load_registry(tmp_path / "experts.yaml"), queue, **kw)
        w.ready.set()
        return w

    return make


def ask(expert: str, text: str) -> Job:
    return Job(expert=expert, request=GenerationRequest(messages=[{"role": "user", "content": text}]))


def test_a_model_that_fails_to_load_backs_off_with_stand_in_engines(make_worker):
    async def main():
        q = MemoryQueue()
        w = make_worker(q, memory_budget_gb=1.0, load_retry_s=0.5)  # room for one model: loading evicts the other
        results = []
        for i in range(4):
            for expert in ("broken", "good"):
                j = ask(expert, f"{expert} {i}")
                await q.submit(j)
                assert await w.step()
                results.append(await q.wait_result(j.id, timeout=5))
        broken, good = results[0::2], results[1::2]
        assert all(r.ok for r in good)
        assert all(not r.ok and "could not be loaded" in r.error and "corrupt" in r.error for r in broken)
        calls = StandInEngine.calls
        assert calls[("load", "broken-model")] == 1, "retried before its back-off ran out"
        assert calls[("unload", "good-model")] == 0, "the working model was evicted for a model that cannot load"
        assert "corrupt" in w.failed_loads()["openai|broken-model|cpu"]
        await asyncio.sleep(0.6)  # the back-off runs out: one more try, then twice as long
        for _ in range(2):
            j = ask("broken", "again")
            await q.submit(j)
            await w.step()
            assert "corrupt" in (await q.wait_result(j.id, timeout=5)).error
        assert calls[("load", "broken-model")] == 2
        assert calls[("unload", "good-model")] == 1

    asyncio.run(main())


def test_a_cancelled_queued_job_never_reaches_the_engine_with_stand_in_engines(make_worker):
    async def main():
        q = MemoryQueue()
        w = make_worker(q)
        gone, kept = ask("good", "gone"), ask("good", "kept")
        await q.submit(gone)
        await q.submit(kept)
        await q.cancel(gone.id)
        assert await w.step()
        assert (await q.wait_result(kept.id, timeout=5)).ok
        assert StandInEngine.seen == ["kept"]
        assert (await q.counters())["cancelled_queued"] == 1

    asyncio.run(main())


def test_an_expert_added_and_removed_between_two_turns_still_serves_its_jobs_with_stand_in_engines(make_worker,
                                                                                                    tmp_path):
    from coe.core.registry import parse_registry

    poet = '  - {name: poet, engine: openai, model: poet-model, api_base: "http://127.0.0.1:9/v1", params_b: 1}\n'

    async def main():
        q = MemoryQueue()
        w = make_worker(q)
        w.refresh(parse_registry(EXPERTS + poet, tmp_path / "experts.yaml"))  # added while a batch runs...
        j = ask("poet", "a rhyme")
        await q.submit(j)
        w.refresh(parse_registry(EXPERTS, tmp_path / "experts.yaml"))  # ...and removed before the next turn
        assert await w.step()
        assert (await q.wait_result(j.id, timeout=5)).completion.text == "a rhyme"
        assert not await w.step()
        assert "poet" not in w.experts and StandInEngine.calls[("unload", "poet-model")] == 1

    asyncio.run(main())


def test_an_expert_moved_to_another_model_unloads_the_old_one_with_stand_in_engines(make_worker, tmp_path):
    from coe.core.registry import parse_registry

    async def main():
        q = MemoryQueue()
        w = make_worker(q)
        before = ask("good", "on the old model")
        await q.submit(before)
        assert await w.step()
        assert StandInEngine.calls[("load", "good-model")] == 1
        w.refresh(parse_registry(EXPERTS.replace("model: good-model", "model: better-model"), tmp_path / "experts.yaml"))
        after = ask("good", "on the new model")
        await q.submit(after)
        assert await w.step()
        assert (await q.wait_result(after.id, timeout=5)).ok
        assert StandInEngine.calls[("load", "better-model")] == 1
        assert StandInEngine.calls[("unload", "good-model")] == 1, "the old model stays loaded, used by nobody"
        assert not any("good-model" in key for key in w.engines)

    asyncio.run(main())


def test_a_stopped_worker_unloads_the_models_it_holds_with_stand_in_engines(make_worker):
    async def main():
        q = MemoryQueue()
        w = make_worker(q)
        job = ask("good", "hello")
        await q.submit(job)
        stop = asyncio.Event()
        running = asyncio.create_task(w.run(stop))
        assert (await q.wait_result(job.id, timeout=5)).ok
        assert StandInEngine.calls[("unload", "good-model")] == 0
        stop.set()
        await asyncio.wait_for(running, 10)
        assert StandInEngine.calls[("unload", "good-model")] == 1
        assert StandInEngine.calls[("unload", "broken-model")] == 0  # never loaded, so nothing to release

    asyncio.run(main())


def test_a_waiter_whose_queue_fails_as_it_is_cancelled_has_its_error_read_with_stand_in_outage():
    """Seen with Redis: the worker cancels its wait-for-work task as the connection closes, the task ends with
    QueueUnavailable that nobody awaits, and asyncio reports 'Task exception was never retrieved' at exit.
    watch_for_work reads every waiter's outcome; a plain task is shown for contrast."""
    from workers.queue import QueueUnavailable, watch_for_work

    class Dropping(MemoryQueue):
        async def wait_for_work(self, experts, timeout):
            try:
                await asyncio.sleep(timeout)
            except asyncio.CancelledError:
                raise QueueUnavailable("redis is unreachable: Connection closed by server") from None

    async def cancelled_as_it_fails(make_task):
        queue = Dropping()
        task = make_task(queue)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait({task})
        await asyncio.sleep(0)  # done callbacks run
        return task

    watched = asyncio.run(cancelled_as_it_fails(lambda q: watch_for_work(q, ["good"], timeout=10)))
    plain = asyncio.run(cancelled_as_it_fails(lambda q: asyncio.create_task(q.wait_for_work(["good"], timeout=10))))
    assert plain._log_traceback and not watched._log_traceback  # asyncio's own "not retrieved" flag
    assert isinstance(watched.exception(), QueueUnavailable) and isinstance(plain.exception(), QueueUnavailable)
