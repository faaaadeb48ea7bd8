"""`coe bench load` shortened (15 s, 4 clients): two replicas on the bench's own redis-server, two workers, and
every scripted fault (a worker SIGKILLed and replaced, Redis restarted, an expert registered through
replica 1 and asked for through replica 2, streams left after their first chunk). Nothing may be lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import FIXTURES, ROOT
from tests.redis_server import needs_redis_server

pytestmark = needs_redis_server


def test_a_short_load_run_with_every_fault_loses_nothing(tmp_path):
    command = [sys.executable, "-m", "coe.cli", "bench", "load", "--duration", "15", "--clients", "4",
               "--max-tokens", "1", "--leave-every-s", "2", "--registry-window-s", "3", "--reclaim-idle-s", "3",
               "--experts", str(FIXTURES / "working-experts.yaml"), "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, env={**os.environ, "COE_LOG_LEVEL": "warning",
                                                   "COE_ARTIFACTS_DIR": str(tmp_path / "artifacts")}, capture_output=True,
                         text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads((tmp_path / "load.json").read_text())
    assert res["lost"] == 0, res["lost_reasons"]
    assert res["sent"] == (res["answered"] + res["refused_retryable"] + res["client_errors_expected"]
                           + res["other_errors"] + res["left_mid_stream"] + res["lost"])
    assert res["answered"] > 0 and res["client_errors_expected"] > 0 and res["unexpected_status"] == {}
    kinds = [e["kind"] for e in res["events"]]
    for kind in ("worker_killed", "worker_started", "redis_stopped", "redis_started", "registry_change"):
        assert kind in kinds, res["events"]
    assert kinds.index("redis_stopped") < kinds.index("redis_started") < kinds.index("registry_change")
    registry = res["registry"]
    assert registry["added_status"] == 201 and registry["asked_through_replica"] == 2 and registry["probes"] > 0
    assert ("registry_served" in kinds) == (registry["registry_served_s"] is not None)
    assert registry["registry_visible_s"] is not None and registry["registry_visible_s"] <= 3  # replica 2 took it up
    assert res["streams_left_after_first_chunk"]["sent"] > 0
    assert res["cancelled_jobs"]["never_run"] is not None and res["load_average"]["end"]
    assert "| **lost** (no answer, a dropped connection, a timeout) | **0** |" in (tmp_path / "load.md").read_text()
