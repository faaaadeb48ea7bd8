"""`coe bench bandit`, small: the service's bandit over its real SQLite store against the fixed router, in the
simulation where the router's pick silently degrades."""

from __future__ import annotations

import json

from coe_evals.bench_bandit import Policy, Scenario, bench_bandit


def test_the_bandit_moves_traffic_after_the_drift_and_the_report_says_so(tmp_path):
    scenario = Scenario(requests=600, drift_at=200, keys=4)
    res = bench_bandit(tmp_path, [0, 1], scenario, [Policy("fixed router", bandit=False), Policy("bandit")], "sqlite",
                       None, "coe bench bandit (test)", log=lambda *_: None)
    fixed, bandit = res["summary"]["fixed router"], res["summary"]["bandit"]
    assert fixed["regret_before_drift"]["max"] == 0 and fixed["never_shifted"] == 2  # it never leaves its pick
    assert bandit["never_shifted"] == 0 and bandit["regret"]["max"] < fixed["regret"]["min"]
    assert 0 < bandit["explored_share"]["max"] <= 0.1  # the default cap, per key
    written = json.loads((tmp_path / "bandit.json").read_text())
    assert written["goals"]["policy"] == "bandit" and len(written["runs"]) == 4
    assert "| bandit |" in (tmp_path / "bandit.md").read_text()
