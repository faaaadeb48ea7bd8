"""evals/gpu/vs_vllm.py's plumbing on the CPU: `--stand-in --quick` with a stand-in AsyncLLM, as the device runs it.

Run as the lead runs it on the GPU machine: a plain `python evals/gpu/vs_vllm.py` from the repository root,
nothing of the project installed, and without pydantic-settings (the device image lacks it), so the
benchmark's imports are checked too. The numbers mean nothing here; the JSON's shape and the run's
completeness (every phase, both systems, every request answered) do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_vs_vllm_quick_runs_end_to_end_with_stand_in_vllm(tmp_path) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "pydantic_settings.py").write_text("raise ImportError('not on the GPU device')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "evals/gpu/vs_vllm.py", "--stand-in", "--quick", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "vs-vllm-quick-stand-in.json").read_text())
    assert report["errors"] == {} and report["skipped"] == [] and took < 30
    assert [s["expert"] for s in report["phases"]["start"]] == ["expert-00", "expert-01", "expert-02", "expert-03"]
    assert list(report["phases"]) == ["start", "fit", "oversub", "dedicated-expert-00"]
    for phase in ("fit", "oversub", "dedicated-expert-00"):
        p = report["phases"][phase]
        for system in ("vllm", "coe"):
            r = p[system]
            assert r["requests"] == p["requests"] and r["errors"] == 0, (phase, system, r)
            assert r["completion_tokens"] == p["requests"] * p["max_tokens"] and r["ttft_p50_s"] <= r["latency_p50_s"]
            assert r["gpu_used_gib_peak"] <= p["budget_gb"]
        assert set(p["compare"]) >= {"coe_over_vllm_tokens_per_s", "coe_over_vllm_ttft_p50_s"}
    over = report["phases"]["oversub"]
    assert over["vllm"]["switches"] > 0 and over["coe"]["switches"] > 0  # twice as many experts as fit: both switch
    assert report["phases"]["fit"]["coe"]["switches"] == 0 and report["phases"]["fit"]["vllm"]["switches"] == 0
    assert "[vs-vllm" in proc.stdout and "done:" in proc.stdout  # progress is printed as it goes


def test_shared_engines_stay_started_across_runs_with_timed_stand_in_vllm(tmp_path) -> None:
    """Both systems run, one after the other, on engines started once. With a stand-in timed like a real engine
    (start 0.5 s, sleep 0.1 s, wake 0.05 s), no run may start or unload an engine: a wake that became a start
    (the worker unloading shared engines when it stops) would cost the next system ten wakes' time, timed."""
    proc = subprocess.run([sys.executable, "evals/gpu/vs_vllm.py", "--stand-in", "--quick", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "vs-vllm-quick-stand-in.json").read_text())
    assert report["errors"] == {}
    runs = [(phase, system, p[system]) for phase, p in report["phases"].items() if phase != "start"
            for system in ("vllm", "coe")]
    assert runs
    for phase, system, r in runs:
        assert (r["engines_started"], r["engines_unloaded"], r["errors"]) == (0, 0, 0), (phase, system, r)
