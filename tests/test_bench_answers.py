"""`coe bench answers` in small: a real `coe serve` on SmolLM2 (three strategies on one model), 2 users, 8 tokens;
every request succeeds, both files are written and every figure the goal is judged on is there."""

from __future__ import annotations

import json
from pathlib import Path

from coe_evals.bench_answers import PROMPTS, bench_answers

from tests.conftest import ROOT
from tests.test_strategies import STRATEGY_EXPERTS


def test_the_answers_bench_serves_streams_and_reports_latency_per_request(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("COE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))  # no trained router: centroid, in seconds
    experts = tmp_path / "experts.yaml"
    experts.write_text(STRATEGY_EXPERTS.format(engine="llamacpp"))
    result = bench_answers(experts, tmp_path, users=2, max_tokens=8, ready_timeout_s=120, timeout_s=60,
                           log=lambda _m: None)

    assert json.loads((tmp_path / "answers.json").read_text()) == result
    s = result["summary"]
    assert s["requests"] == len(PROMPTS) and s["failed"] == 0, [r["error"] for r in result["requests"]]
    assert result["ready_s"] > 0 and len(result["loadavg_start"]) == len(result["loadavg_end"]) == 3
    assert [r["prompt"] for r in result["requests"]] == [name for name, _ in PROMPTS]
    for r in result["requests"]:
        assert r["expert"] in {"plain", "picker", "solver"} and r["strategy"] and r["router"]
        assert 0 <= r["completion_tokens"] and 0 < r["latency_s"]
        assert r["ttft_s"] is None or r["ttft_s"] <= r["latency_s"]
    assert {r["user"] for r in result["requests"]} == {0, 1}
    assert 0 < s["latency_s"]["p50"] <= s["latency_s"]["p95"] <= s["latency_s"]["max"]
    assert s["ttft_s"]["p50"] > 0 and s["tokens_per_s"]["aggregate"] > 0
    assert s["goal"]["applies"] is False and isinstance(s["goal"]["met"], bool)
    assert "| readme-napoleon | 0 |" in (tmp_path / "answers.md").read_text()


def test_the_readme_examples_are_the_prompts_measured():
    readme = (ROOT / "README.md").read_text()
    for name, text in PROMPTS:
        assert not name.startswith("readme-") or text in readme, name
