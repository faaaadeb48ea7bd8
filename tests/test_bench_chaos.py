"""`coe bench chaos` shortened (12 s, 4 clients, the smallest real experts): two replicas and two workers on the
bench's own redis-server, a worker SIGKILLed, Redis restarted and a poison job, at seeded times. Every accepted
request is answered by its deadline, the poison job's caller is answered with the error instead of the job running
again, and no 5xx comes back but a 503 with Retry-After while Redis is out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import FIXTURES, ROOT
from tests.redis_server import needs_redis_server

pytestmark = needs_redis_server


def test_a_short_chaos_run_loses_nothing_and_leaves_nothing_stuck(tmp_path):
    command = [sys.executable, "-m", "coe.cli", "bench", "chaos", "--duration", "12", "--clients", "4",
               "--faults", "kill,redis-restart,poison", "--max-tokens", "1", "--reclaim-idle-s", "3",
               "--deadline-s", "40", "--experts", str(FIXTURES / "working-experts.yaml"), "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, env={**os.environ, "COE_LOG_LEVEL": "warning",
                                                   "COE_ARTIFACTS_DIR": str(tmp_path / "artifacts")},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads((tmp_path / "chaos.json").read_text())
    assert (res["lost"], res["stuck"]) == (0, 0), res["no_answer_reasons"]
    assert res["answered"] > 0 and res["server_errors_outside_redis_outage"] == []
    kinds = [e["kind"] for e in res["events"]]
    for kind in ("worker_killed", "redis_stopped", "redis_started", "poison_job"):
        assert kind in kinds, res["events"]
    assert res["poison_job"]["error_type"] == "poison", res["poison_job"]
    assert all(mb > 0 for mb in res["api_rss_mb"]["start"] + res["api_rss_mb"]["end"])
    assert "| **stuck** (no answer by the deadline) | **0** |" in (tmp_path / "chaos.md").read_text()
