"""A quick smoke run of `coe bench routing` on a small sample of the real split."""

from __future__ import annotations

import json

import pytest

from coe.core.settings import get_settings
from coe_evals.bench_routing import bench_routing

EXPECTED = {"two_stage", "knn", "single_best", "random", "oracle", "centroid"}


def test_bench_smoke(tmp_path):
    pytest.importorskip("semantic_router")
    res = bench_routing(sample=4, out_dir=tmp_path, include_peer=True, settings=get_settings(),
                        fast_runtime="torch", fast_max_seq_length=128, fp32_runtime="torch",
                        n_single=2, n_batch=8, n_chats=2, variants=["two_stage"], n_maths=20,
                        log=lambda msg: None)  # timing runs, briefly
    names = {r["router"] for r in res["results"]}
    assert EXPECTED <= names and "semantic-router (peer)" in names
    by = {r["router"]: r for r in res["results"]}
    assert by["oracle"]["accuracy_17"] == 1.0 and by["oracle"]["accuracy_4"] == 1.0
    for r in res["results"]:
        assert 0.0 <= r["accuracy_17"] <= r["accuracy_4"] + 1e-9 <= 1.0 + 1e-9
        if r["router"] != "oracle":
            assert r["p50_ms"] > 0 and r["throughput_qps"] > 0 and 0.0 <= r["ood_fallback_rate"] <= 1.0
    assert by["two_stage"]["accuracy_17"] > by["random"]["accuracy_17"]
    latency = res["conversations"]["latency_4_turns"]  # two chats timed, after their warm-up
    assert latency["n"] == 2 and 0 < latency["context_p50_ms"] <= latency["context_p99_ms"]
    new_route = res["user"]["new_route"]  # declared by its 10 examples and retrained: it is reached (0.95 measured)
    assert new_route["n_examples"] == 10 and new_route["recall"] >= 0.7
    saved = json.loads((tmp_path / "routing.json").read_text())
    assert saved["data"]["n_test"] == 4 * 17 and saved["data"]["n_train"] == 12 * 17
    assert "| two_stage |" in (tmp_path / "routing.md").read_text()
    assert (tmp_path / "routing.png").stat().st_size > 1000


def test_bench_accuracy_only(tmp_path):
    """`coe bench routing --accuracy-only`: the service's router on MMLU and the user requests, no peer, no timing."""
    res = bench_routing(sample=4, out_dir=tmp_path, settings=get_settings(), fast_runtime="torch", fast_max_seq_length=128,
                        new_route=False, timing=False, n_maths=50, log=lambda msg: None)
    names = {r["router"] for r in res["results"]}
    assert EXPECTED <= names and not any(n.startswith("two_stage[") or "peer" in n for n in names)
    assert not any("p50_ms" in r or "throughput_qps" in r for r in res["results"]) and "--accuracy-only" in res["command"]
    user = res["user"]["user-requests"]
    assert user["n"] == 414 and "user_requests_timing" not in next(r for r in res["results"] if r["router"] == "two_stage")
    assert sum(user["errors_by_kind"].values()) == round((1 - user["accuracy"]) * user["n"])
    assert "Errors by route kind" in (tmp_path / "routing.md").read_text()
    outside, maths = res["user"]["outside"], res["user"]["maths_word_problems"]
    assert (outside["validation"]["n"], outside["test"]["n"]) == (300, 450) and maths["test"]["n"] == 50
    two_stage = next(r for r in res["results"] if r["router"] == "two_stage")
    assert two_stage["outside"] == outside["test"]["accuracy"] and two_stage["user_style"] == user["accuracy"]
    assert "**Outside set**" in (tmp_path / "routing.md").read_text()
    turns = res["conversations"]["test"]  # per turn, last message vs conversation, no latency in this mode
    assert turns["last_message"]["follow-up"]["n"] == turns["context_shipped"]["follow-up"]["n"] > 300
    assert turns["last_message"]["first"] == turns["context_shipped"]["first"] and "latency_4_turns" not in res["conversations"]
    assert "## Conversations" in (tmp_path / "routing.md").read_text()
