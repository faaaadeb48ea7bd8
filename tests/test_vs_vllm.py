"""evals/gpu/vs_vllm.py's whole path on the CPU: `--stand-in --quick` with a stand-in AsyncLLM, as the device runs it.

Run as the lead runs it on the GPU machine: a plain `python evals/gpu/vs_vllm.py` from the repository root,
nothing of the project installed, and without pydantic-settings (the device image lacks it), so the
benchmark's imports are checked too. The stand-in is timed like a real engine, scaled down (start 0.5 s,
sleep 0.1 s, wake 0.05 s). The numbers mean nothing here; the report's shape and the runs' completeness
(every phase and repeat, both systems, every request answered, no engine restarted) do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stand_in_run(tmp_path_factory) -> tuple[dict, str, float, Path]:
    tmp = tmp_path_factory.mktemp("vs-vllm")
    blocked = tmp / "blocked"
    blocked.mkdir()
    (blocked / "pydantic_settings.py").write_text("raise ImportError('not on the GPU device')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "evals/gpu/vs_vllm.py", "--stand-in", "--quick", "--out", str(tmp / "out"),
                           "--work", str(tmp / "work")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / "out" / "vs-vllm-quick-stand-in.json").read_text()), proc.stdout, took, tmp / "out"


def runs(report: dict):
    for phase, p in report["phases"].items():
        for i, r in enumerate(p["repeats"]):
            for system in ("vllm", "coe"):
                yield phase, i, system, r, r[system]


def test_vs_vllm_quick_runs_end_to_end_with_stand_in_vllm(stand_in_run) -> None:
    report, stdout, took, out = stand_in_run
    plan = report["memory_plan"]
    assert report["errors"] == {} and report["skipped"] == [] and took < 180
    assert plan["all_need_gb"] > plan["budget_gb"] >= sum(plan["memory_gb"][n] for n in plan["fit"])  # a real shortage
    assert [s["expert"] for s in report["starts"]] == [f"expert-{i:02d}" for i in range(8)]
    smallest = min(plan["fit"], key=plan["memory_gb"].get)
    assert list(report["phases"]) == ["fit", "shortage", f"dedicated-{smallest}"]
    for phase, i, system, repeat, r in runs(report):
        p = report["phases"][phase]
        assert r["requests"] == repeat["requests"] and r["errors"] == 0, (phase, i, system, r)
        assert r["completion_tokens"] == repeat["requests"] * p["max_tokens"] and r["ttft_p50_s"] <= r["latency_p50_s"]
        assert r["steady_tokens_per_s"] > 0 and r["makespan_tokens_per_s"] > 0
        assert r["gpu_used_gib_peak"] <= p["budget_gb"]
    for phase, p in report["phases"].items():
        assert [r["order"][0] for r in p["repeats"]][:2] in (["coe", "vllm"], ["vllm", "coe"])  # alternating
        assert p["summary"]["compare"]["coe_over_vllm_steady_tokens_per_s"]["n"] == report["repeats"] == 3
    fit, short = report["phases"]["fit"]["repeats"], report["phases"]["shortage"]["repeats"]
    assert {r["vllm"]["policy"] for r in fit} == {"split"} and {r["vllm"]["policy"] for r in short} == {"switching"}
    assert all(r[s]["switches"] == 0 for r in fit for s in ("vllm", "coe"))  # all fit: nobody switches
    assert all(r[s]["switches"] > 0 for r in short for s in ("vllm", "coe"))  # shortage: both switch
    assert len({r["seed"] for r in short}) == 3 and all(len([n for n, c in r["mix"].items() if c]) > 5 for r in short)
    assert "| coe / vLLM |" in (out / "vs-vllm-quick-stand-in.md").read_text()
    assert "[vs-vllm" in stdout and "done:" in stdout  # progress is printed as it goes


def test_shared_engines_stay_started_across_runs_with_timed_stand_in_vllm(stand_in_run) -> None:
    """Both systems run, one after the other, on engines started once. No run may start or unload an engine:
    a wake that became a start (the worker unloading shared engines when it stops) would cost the next
    system ten wakes' time, timed, and a cold engine taken for a resident one fails its jobs."""
    report = stand_in_run[0]
    assert report["errors"] == {}
    seen = list(runs(report))
    assert len(seen) == 3 * 3 * 2
    for phase, i, system, _, r in seen:
        assert (r["engines_started"], r["engines_unloaded"], r["engine_starts"], r["errors"]) == (0, 0, 0, 0), \
            (phase, i, system, r)
