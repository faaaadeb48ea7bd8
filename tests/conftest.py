"""Shared fixtures: a real `coe serve` subprocess on a free port, with real weights, talked to over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, proc: subprocess.Popen, base_url: str, log_path: Path):
        self.proc = proc
        self.base_url = base_url
        self.log_path = log_path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(tmp: Path, experts_file: Path, env: dict | None = None, ready_timeout: float = 240) -> RunningServer:
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    full_env = {**os.environ, "COE_EXPERTS_FILE": str(experts_file), "COE_ARTIFACTS_DIR": str(tmp / "artifacts"),
                "COE_PORT": str(port), "COE_LOG_LEVEL": "warning", "COE_TORCH_THREADS": "1", **(env or {})}
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "coe.cli", "serve"], cwd=ROOT, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
    server = RunningServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.time() + ready_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready after {ready_timeout}s:\n{server.log()}")


def stop_server(server: RunningServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def read_only(*paths: Path) -> bool:
    """Make files and folders read-only the way a `:ro` mount is: no write permission, and for root (whom
    permissions do not stop) the immutable attribute where the file system has one. True if it holds."""
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
        if os.geteuid() == 0 and shutil.which("chattr"):
            subprocess.run(["chattr", "+i", str(p)], capture_output=True)
    folder = next(p for p in paths if p.is_dir())
    try:
        (folder / ".probe").touch()
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def writable(*paths: Path) -> None:
    for p in paths:
        if os.geteuid() == 0 and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.fixture(scope="session")
def test_experts_file(tmp_path_factory) -> Path:
    """The default experts plus one whose weights file is corrupt, to exercise engine failures."""
    tmp = tmp_path_factory.mktemp("experts")
    broken = tmp / "broken.gguf"
    broken.write_bytes(b"this is not a gguf file")
    text = (FIXTURES / "experts.yaml").read_text().replace("BROKEN_MODEL_PATH", str(broken))
    path = tmp / "experts.yaml"
    path.write_text(text)
    shutil.copy(ROOT / "experts.yaml", tmp / "default-experts.yaml")
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory, test_experts_file) -> RunningServer:
    tmp = tmp_path_factory.mktemp("server")
    srv = start_server(tmp, test_experts_file, env={"COE_MAX_BODY_BYTES": "20000", "COE_MAX_TOKENS_CAP": "32"})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def keyword_server(tmp_path_factory) -> RunningServer:
    """A server whose skills router asks an LLM (the generalist, through the queue) for each query's skills; one
    for the session, so a test that counts its jobs reads the metrics before and after."""
    options = {"skills": {"skill_source": "keywords", "keyword_expert": "generalist", "mode": "top"}}
    srv = start_server(tmp_path_factory.mktemp("keywords"), FIXTURES / "working-experts.yaml",
                       env={"COE_ROUTER_OPTIONS": json.dumps(options)})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def mmlu_slice_artifacts(tmp_path_factory) -> Path:
    """An artifacts folder with a two-stage router trained in seconds on a slice of MMLU (every subcategory,
    8 train and 4 validation questions each), for the tests that run the CLI's model paths against stage 1."""
    from coe.core.settings import get_settings
    from coe.data.mmlu import by_split, load_mmlu
    from coe.embedder import make_embedder
    from routers.two_stage.train import LabeledSet, train_two_stage

    out = tmp_path_factory.mktemp("mmlu-slice-artifacts")
    settings = get_settings()
    embedder = make_embedder(settings)
    qs = load_mmlu(settings.cache_dir)

    def labeled(split: str, n: int) -> LabeledSet:
        seen: dict[str, int] = {}
        picked = []
        for q in sorted(by_split(qs, split), key=lambda q: q.id):
            if seen.get(q.subcategory, 0) < n:
                seen[q.subcategory] = seen.get(q.subcategory, 0) + 1
                picked.append(q)
        texts = [q.question for q in picked]
        return LabeledSet(texts, embedder.encode(texts), [q.subcategory for q in picked], [q.subject for q in picked])

    train_two_stage(labeled("train", 8), labeled("validation", 4), artifacts_dir=out,
                    encoder={"ref": embedder.ref, "id": embedder.id, "runtime": embedder.runtime_id},
                    level="subcategory", data={"name": "mmlu-slice", "hash": "test"}, tau_target="accuracy:0.5")
    return out
