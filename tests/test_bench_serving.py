"""A smoke run of `coe bench serving` on a tiny setting: real weights, real Worker, both policies."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from coe_evals.bench_serving import serving_app
from coe_evals.workload import make_shifting_workload, make_workload, percentile, zipf_weights


def test_workload_is_skewed_seeded_and_ordered() -> None:
    experts = [f"e{i}" for i in range(4)]
    a = make_workload(experts, 400, zipf_s=1.0, arrival="poisson", rate=10.0, seed=3)
    assert a == make_workload(experts, 400, zipf_s=1.0, arrival="poisson", rate=10.0, seed=3)
    counts = [sum(x.expert == e for x in a) for e in experts]
    assert counts[0] > counts[1] > counts[3]  # Zipf: the first expert is asked most
    assert all(x.at_s <= y.at_s for x, y in zip(a, a[1:])) and a[-1].at_s > 10
    assert all(x.at_s == 0 for x in make_workload(experts, 10, arrival="burst"))
    assert abs(sum(zipf_weights(5, 1.2)) - 1) < 1e-9
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5


def test_serving_bench_smoke(tmp_path) -> None:
    result = CliRunner().invoke(serving_app, [
        "--experts", "2", "--resident", "1", "--requests", "4", "--max-tokens", "1", "--max-batch", "4",
        "--arrival", "burst", "--out", str(tmp_path), "--name", "smoke"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "smoke.json").read_text())
    g, f = report["results"]["grouped"], report["results"]["fcfs"]
    assert g["requests"] == f["requests"] == 4 and g["errors"] == f["errors"] == 0
    assert f["batches"] == 4 and f["mean_batch"] == 1.0  # fcfs: one request per engine call
    assert g["batches"] <= 2 and g["switches"] == 2  # grouped: one batch and one load per expert
    assert f["switches"] >= g["switches"] and g["actions"]["load"]["count"] == g["loads"]
    assert "speedup_wall" in report["ratios"]
    assert "| grouped |" in (tmp_path / "smoke.md").read_text()


def test_a_shifting_workload_is_skewed_and_its_hot_set_turns_each_epoch() -> None:
    from collections import Counter

    experts = [f"e{i}" for i in range(8)]
    a = make_shifting_workload(experts, 30.0, 50.0, epochs=3, shift=3, seed=5)
    assert a == make_shifting_workload(experts, 30.0, 50.0, epochs=3, shift=3, seed=5)
    assert all(0 <= x.at_s < 30.0 for x in a) and 1200 < len(a) < 1800  # Poisson at 50/s for 30 s
    for epoch, hottest in enumerate(["e0", "e3", "e6"]):
        seen = Counter(x.expert for x in a if epoch * 10 <= x.at_s < (epoch + 1) * 10)
        assert seen.most_common(1)[0][0] == hottest and seen[hottest] > 3 * seen[experts[(experts.index(hottest) + 4) % 8]]


def test_steady_throughput_counts_only_the_tokens_made_inside_its_window() -> None:
    from coe_evals.gpu.streams import Outcome, steady_tokens_per_s

    early = Outcome("a", True, ttft_s=1.0, latency_s=3.0, tokens=20, sent_s=0.0)  # tokens made evenly over 1-3 s
    late = Outcome("b", True, ttft_s=0.5, latency_s=1.5, tokens=10, sent_s=3.0)  # over 3.5-4.5 s
    failed = Outcome("c", False, None, 1.0, 0, "timeout", sent_s=2.0)
    assert steady_tokens_per_s([early, late, failed], 2.0, 4.0) == (20 / 2 + 10 / 2) / 2.0
    assert steady_tokens_per_s([early, late], 0.0, 10.0) == 30 / 10.0
