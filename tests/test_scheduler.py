"""The residency scheduler: which group goes next, what is evicted, wake vs load, fcfs, starvation, counters.

The last tests drive the real Worker loop with a fake engine, so the policies are
checked end to end (order of service, batch sizes, switches) without weights.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from workers.queue import PendingStats
from workers.scheduler import Action, Group, Scheduler, Tier


def groups(n: int = 3, memory_gb: float = 1.0, sleep: bool = False, max_batch: int = 8) -> dict[str, Group]:
    return {k: Group(k, [f"e-{k}"], memory_gb, max_batch, sleep) for k in "abcdefgh"[:n]}


def pending(**counts_and_ages: tuple[int, float]) -> dict[str, PendingStats]:
    return {f"e-{k}": PendingStats(c, age) for k, (c, age) in counts_and_ages.items()}


NOW = 1000.0


def test_grouped_picks_resident_group_with_work_first() -> None:
    s = Scheduler(groups(), memory_budget_gb=2)
    s.groups["a"].tier = Tier.RESIDENT
    # b has more work and older work, but a is resident: no switch
    assert s.pick(pending(a=(1, NOW - 1), b=(9, NOW - 5)), now=NOW) == "a"


def test_grouped_among_resident_takes_the_most_work() -> None:
    s = Scheduler(groups(), memory_budget_gb=2)
    s.groups["a"].tier = s.groups["b"].tier = Tier.RESIDENT
    assert s.pick(pending(a=(2, NOW - 3), b=(5, NOW - 1), c=(9, NOW - 9)), now=NOW) == "b"


def test_grouped_without_resident_work_takes_most_pending_then_oldest() -> None:
    s = Scheduler(groups(), memory_budget_gb=2)
    s.groups["a"].tier = Tier.RESIDENT  # resident but idle
    assert s.pick(pending(b=(3, NOW - 1), c=(7, NOW - 2)), now=NOW) == "c"
    assert s.pick(pending(b=(4, NOW - 5), c=(4, NOW - 2)), now=NOW) == "b"  # tie: older first


def test_no_work_picks_nothing() -> None:
    s = Scheduler(groups(), memory_budget_gb=2)
    assert s.pick({}, now=NOW) is None
    assert s.pick(pending(a=(0, None)), now=NOW) is None


def test_no_starvation_past_max_wait() -> None:
    s = Scheduler(groups(), memory_budget_gb=2, max_wait_s=30)
    s.groups["a"].tier = Tier.RESIDENT
    work = pending(a=(50, NOW - 1), c=(1, NOW - 31))
    assert s.pick(work, now=NOW) == "c"  # waited past max_wait_s: served before the busy resident group
    assert s.pick(pending(a=(50, NOW - 1), c=(1, NOW - 29)), now=NOW) == "a"


def test_fcfs_serves_the_oldest_job_anywhere_one_at_a_time() -> None:
    s = Scheduler(groups(), memory_budget_gb=2, policy="fcfs")
    s.groups["a"].tier = Tier.RESIDENT
    assert s.pick(pending(a=(9, NOW - 1), b=(1, NOW - 2)), now=NOW) == "b"
    assert s.batch_size("b") == 1
    assert Scheduler(groups(max_batch=8), memory_budget_gb=2).batch_size("a") == 8


def test_plan_evicts_least_recently_used_until_the_target_fits() -> None:
    s = Scheduler(groups(4), memory_budget_gb=2)
    for k, used in (("a", 5.0), ("b", 1.0)):
        s.groups[k].tier, s.groups[k].last_used = Tier.RESIDENT, used
    assert s.plan("c") == [Action("unload", "b"), Action("load", "c")]  # b is older
    assert s.plan("a") == []  # already resident


def test_plan_evicts_as_many_as_needed_for_a_big_model() -> None:
    g = groups(3)
    g["c"].memory_gb = 2.0
    s = Scheduler(g, memory_budget_gb=2)
    for k, used in (("a", 2.0), ("b", 1.0)):
        s.groups[k].tier, s.groups[k].last_used = Tier.RESIDENT, used
    assert s.plan("c") == [Action("unload", "b"), Action("unload", "a"), Action("load", "c")]


def test_plan_evicts_idle_groups_before_busy_ones() -> None:
    s = Scheduler(groups(3), memory_budget_gb=2)
    for k, used in (("a", 1.0), ("b", 5.0)):
        s.groups[k].tier, s.groups[k].last_used = Tier.RESIDENT, used
    assert s.plan("c", busy={"a"}) == [Action("unload", "b"), Action("load", "c")]  # a is older, but has jobs running


def test_plan_loads_without_eviction_while_under_budget() -> None:
    s = Scheduler(groups(3), memory_budget_gb=2)
    s.groups["a"].tier = Tier.RESIDENT
    assert s.plan("b") == [Action("load", "b")]


def test_sleep_capable_groups_sleep_and_wake_instead_of_unload_and_load() -> None:
    s = Scheduler(groups(3, sleep=True), memory_budget_gb=1)
    s.groups["a"].tier = Tier.RESIDENT
    s.groups["b"].tier = Tier.ASLEEP
    assert s.plan("b") == [Action("sleep", "a"), Action("wake", "b")]
    assert s.plan("c") == [Action("sleep", "a"), Action("load", "c")]  # never loaded: a cold start


def test_applied_counts_switches_loads_wakes_evictions() -> None:
    s = Scheduler(groups(3, sleep=True), memory_budget_gb=1)
    s.applied(Action("load", "a"), 2.0)
    s.applied(Action("sleep", "a"), 0.5)
    s.applied(Action("load", "b"), 2.0)
    s.applied(Action("sleep", "b"), 0.5)
    s.applied(Action("wake", "a"), 0.1)
    st = s.stats
    assert (st.switches, st.loads, st.wakes, st.evictions) == (3, 2, 1, 2)
    assert st.switch_seconds == pytest.approx(4.1)
    assert s.groups["a"].tier is Tier.RESIDENT and s.groups["b"].tier is Tier.ASLEEP
    s.applied(Action("unload", "a"), 0.0)
    assert s.groups["a"].tier is Tier.COLD


def test_served_updates_lru_clock_and_counts() -> None:
    s = Scheduler(groups(2), memory_budget_gb=2)
    s.served("a", 3)
    s.served("b", 1)
    assert s.groups["b"].last_used >= s.groups["a"].last_used > 0
    assert (s.stats.batches, s.stats.jobs) == (2, 4)


def test_budget_smaller_than_a_model_is_an_error() -> None:
    with pytest.raises(ValueError, match="smaller than a single model"):
        Scheduler(groups(2, memory_gb=3), memory_budget_gb=2)


# --------------------------------------------------------------------------- the Worker loop, fake engine


class FakeEngine:
    """Records every lifecycle call and every batch; sleeps if asked to."""

    log: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def __init__(self, spec, supports_sleep: bool):
        self.spec = spec
        self.supports_sleep = supports_sleep

    def _note(self, what: str, n: int = 0) -> None:
        with self.lock:
            FakeEngine.log.append((what, self.spec.key.split("|")[1], n))

    def load(self):
        self._note("load")

    def wake(self):
        self._note("wake")

    def sleep(self):
        self._note("sleep")

    def unload(self):
        self._note("unload")

    def generate(self, requests, on_delta=None):
        from workers.jobs import Completion

        self._note("generate", len(requests))
        return [Completion(text=r.messages[-1]["content"], prompt_tokens=1, completion_tokens=1) for r in requests]


def fake_worker(tmp_path: Path, monkeypatch, policy: str, n: int, budget: float, sleep: bool):
    from coe.core.registry import load_registry
    from workers import worker as worker_mod
    from workers.queue_memory import MemoryQueue

    lines = ["version: 1", "experts:"]
    for i in range(n):
        lines += [f"  - name: x{i}", "    engine: openai", f"    model: m{i}", "    api_base: http://127.0.0.1:9/v1",
                  "    device: cpu", "    memory_gb: 1", "    max_batch: 4", "    params_b: 1"]
    (tmp_path / "experts.yaml").write_text("\n".join(lines) + "\n")
    FakeEngine.log = []
    monkeypatch.setattr(worker_mod, "create_engine", lambda spec: FakeEngine(spec, sleep))
    queue = MemoryQueue()
    w = worker_mod.Worker(load_registry(tmp_path / "experts.yaml"), queue, policy=policy, memory_budget_gb=budget)
    w.ready.set()
    return w, queue


async def drain(w, queue, experts: list[str]) -> list[str]:
    from workers.jobs import GenerationRequest, Job

    jobs = []
    for i, e in enumerate(experts):
        job = Job(expert=e, request=GenerationRequest(messages=[{"role": "user", "content": f"{i}"}]), enqueued_at=1000.0 + i)
        await queue.submit(job)
        jobs.append(job)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    results = [await queue.wait_result(j.id, 10) for j in jobs]
    stop.set()
    await task
    assert all(r.ok for r in results)
    return [r.completion.text for r in results]


def test_worker_fcfs_serves_in_arrival_order_one_per_call_with_mock_engine(tmp_path, monkeypatch) -> None:
    w, queue = fake_worker(tmp_path, monkeypatch, "fcfs", n=3, budget=1, sleep=True)
    order = ["x0", "x1", "x0", "x2", "x1"]
    asyncio.run(drain(w, queue, order))
    served = [(m, k) for what, m, k in FakeEngine.log if what == "generate"]
    assert served == [("m0", 1), ("m1", 1), ("m0", 1), ("m2", 1), ("m1", 1)]
    # budget of one: every change of expert is a switch; the first time a load, later a wake
    switches = [(what, m) for what, m, _ in FakeEngine.log if what in ("load", "wake")]
    assert switches == [("load", "m0"), ("load", "m1"), ("wake", "m0"), ("load", "m2"), ("wake", "m1")]
    assert w.scheduler.stats.switches == 5 and w.scheduler.stats.wakes == 2


def test_worker_grouped_batches_each_expert_and_switches_less_with_mock_engine(tmp_path, monkeypatch) -> None:
    w, queue = fake_worker(tmp_path, monkeypatch, "grouped", n=3, budget=1, sleep=False)
    order = ["x0", "x1", "x0", "x2", "x1", "x0"]
    asyncio.run(drain(w, queue, order))
    served = [(m, k) for what, m, k in FakeEngine.log if what == "generate"]
    assert sorted(served) == [("m0", 3), ("m1", 2), ("m2", 1)]
    assert w.scheduler.stats.switches == 3 and w.scheduler.stats.loads == 3
    # without sleep support a switch unloads (two switches), and the stopped worker unloads the last resident one
    assert [(what, m) for what, m, _ in FakeEngine.log if what in ("sleep", "unload")] == [
        ("unload", "m0"), ("unload", "m1"), ("unload", "m2")]
