"""The vLLM-only baselines of the GPU benchmark (evals/gpu/direct_vllm.py), on stand-in AsyncLLMs timed like real
engines (sleep and wake take time): what our switching policy does when the models do not all fit."""

from __future__ import annotations

import asyncio
import sys

import pytest

from coe_evals.gpu import stand_in_vllm
from coe_evals.gpu.direct_vllm import VllmOnly
from coe_evals.gpu.shared_engines import SwitchClock, lend
from coe_evals.workload import Arrival
from workers.engines import create_engine
from workers.engines.base import EngineSpec

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def fake_vllm(monkeypatch):
    for name, module in stand_in_vllm.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    for attr, value in {"instances": [], "step_s": 0.01, "sleep_s": 0.3, "wake_s": 0.1}.items():
        monkeypatch.setattr(stand_in_vllm.AsyncLLM, attr, value)


@pytest.fixture
def engines():
    """Four started engines a, b, c, d (1 GB each), all asleep; unloaded at the end."""
    made = {}
    for name in "abcd":
        e = create_engine(EngineSpec(key=f"vllm|{name}|cpu", engine="vllm", model=f"org/{name}", model_path=None,
                                     device="cpu", memory_gb=1.0, max_batch=64))
        e.load()
        e.sleep()
        made[name] = e
    yield made
    for e in made.values():
        e.unload()


def deployment(engines: dict, awake: str, budget: float, max_wait_s: float = 30.0) -> tuple[VllmOnly, SwitchClock]:
    for name in awake:
        engines[name].wake()
    clock = SwitchClock()
    return VllmOnly(lend(engines, clock), {n: 1.0 for n in engines}, budget, max_wait_s), clock


async def ask(send, expert: str, at_s: float, max_tokens: int, t0: float) -> tuple[float, float]:
    """Send at `at_s`; (first token, end) in seconds from t0."""
    await asyncio.sleep(max(0.0, t0 + at_s - asyncio.get_running_loop().time()))
    sent = asyncio.get_running_loop().time()
    out = await send(Arrival(at_s, expert, CHAT))
    assert out.ok and out.tokens == max_tokens
    return sent - t0 + out.ttft_s, sent - t0 + out.latency_s


def test_all_models_fit_split_serves_each_straight_with_no_switch_with_stand_in_vllm(engines) -> None:
    async def go():
        vllm, clock = deployment(engines, "abcd", budget=4.0)
        t0 = asyncio.get_running_loop().time()
        await asyncio.gather(*(ask(vllm.sender(3), n, 0.0, 3, t0) for n in "abcd"))
        assert vllm.policy == "split" and clock.report()["switches"] == 0 and clock.sleeps == 0

    asyncio.run(go())


def test_a_model_with_work_is_not_switched_out_and_the_most_waited_for_goes_first_with_stand_in_vllm(engines) -> None:
    async def go():
        vllm, clock = deployment(engines, "a", budget=1.0)
        t0 = asyncio.get_running_loop().time()
        a = asyncio.create_task(ask(vllm.sender(40), "a", 0.0, 40, t0))  # 0.4 s of decoding
        b = asyncio.create_task(ask(vllm.sender(2), "b", 0.05, 2, t0))
        cs = [asyncio.create_task(ask(vllm.sender(2), "c", 0.1, 2, t0)) for _ in range(3)]
        (_, a_done), (b_first, _), *c = await asyncio.gather(a, b, *cs)
        assert min(first for first, _ in c) > a_done  # nobody woke while a had a request running
        assert max(first for first, _ in c) < b_first  # c (3 waiting) before b (1), though b asked first
        assert vllm.policy == "switching" and (clock.wakes, clock.sleeps, clock.starts) == (2, 2, 0)
        await vllm.close()

    asyncio.run(go())


def test_switches_of_different_engines_run_at_the_same_time_with_stand_in_vllm(engines) -> None:
    async def go():
        vllm, clock = deployment(engines, "ab", budget=2.0)
        t0 = asyncio.get_running_loop().time()
        (c_first, _), (d_first, _) = await asyncio.gather(ask(vllm.sender(2), "c", 0.0, 2, t0),
                                                          ask(vllm.sender(2), "d", 0.0, 2, t0))
        assert max(c_first, d_first) < 0.65  # one switch: sleep 0.3 + wake 0.1; one after the other would be 0.8
        assert (clock.wakes, clock.sleeps) == (2, 2)
        await vllm.close()

    asyncio.run(go())


def test_a_starving_model_gets_in_while_the_awake_one_stays_busy_with_stand_in_vllm(engines) -> None:
    async def go():
        vllm, clock = deployment(engines, "a", budget=1.0, max_wait_s=0.3)
        t0 = asyncio.get_running_loop().time()
        busy = [ask(vllm.sender(10), "a", 0.05 * i, 10, t0) for i in range(40)]  # a always has work for 2 s
        starving = ask(vllm.sender(2), "b", 0.1, 2, t0)
        (b_first, _), *_ = await asyncio.gather(starving, *busy)
        assert b_first < 1.2  # waited about max_wait_s, a drained (0.1 s), a switch (0.4 s); not the 2 s of a's work
        assert clock.wakes >= 2  # and a came back for its requests that arrived meanwhile
        await vllm.close()

    asyncio.run(go())
