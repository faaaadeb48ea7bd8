"""The processes `coe bench load --spawn ...` starts and hurts: its own redis-server, API replicas, workers.

Redis is a redis-server of the bench's own (a free port, its files in the run's temp folder, the
append-only file on, as compose runs it), never a shared one, so it can be restarted mid-run. The
experts file is a copy in the same folder, because the run registers an expert through the admin
API, which writes the file back.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from routers.quality import OUTCOMES_FILE

ROOT = Path(__file__).resolve().parent.parent
REF_PREFIXES = ("parts:", "package:")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A redis-server on a free port with its append-only file in `folder`; a restart keeps what it accepted."""

    def __init__(self, folder: Path):
        if shutil.which("redis-server") is None:
            raise RuntimeError("--spawn redis needs redis-server on PATH (it starts one of its own)")
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec", "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")])
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        for _ in range(200):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"the bench's redis-server did not start; see {self.folder / 'redis.log'}")

    def stop(self) -> None:
        """SIGTERM: Redis writes and fsyncs its append-only file, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def copy_experts(source: Path, folder: Path) -> Path:
    """experts.yaml copied into `folder` (model paths made absolute, so they still resolve from there), with the
    measured outcomes beside it when the source has them (what `auto` routing serves: routers/quality.py)."""
    data = yaml.safe_load(source.read_text())
    for expert in data.get("experts", []):
        model = str(expert.get("model", ""))
        if not model.startswith(REF_PREFIXES) and not Path(model).is_absolute() and (source.parent / model).exists():
            expert["model"] = str((source.parent / model).resolve())
    path = folder / "experts.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if (source.parent / OUTCOMES_FILE).exists():
        shutil.copy(source.parent / OUTCOMES_FILE, folder / OUTCOMES_FILE)
    return path


class Fleet:
    """`coe serve` replicas (and with Redis, `coe worker` processes and a redis-server) in a temp folder."""

    def __init__(self, mode: str, experts_file: Path, replicas: int, workers: int, reclaim_idle_s: float,
                 log_dir: Path, threads: int | None = 1, env: dict[str, str] | None = None):
        self.mode, self.log_dir, self.reclaim_idle_s, self.threads = mode, log_dir, reclaim_idle_s, threads
        self.extra_env = env or {}
        self.n_workers = workers if mode == "redis" else 0
        self.experts_file = copy_experts(experts_file, log_dir)
        self.routes_file = experts_file.parent / "routes.yaml"
        self.redis = OwnRedis(log_dir) if mode == "redis" else None
        self.ports = [free_port() for _ in range(replicas)]
        self.admin_key = secrets.token_urlsafe(24)
        self.servers: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self._spawned = 0

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def _env(self) -> dict:
        env = {**os.environ, "COE_EXPERTS_FILE": str(self.experts_file), "COE_LOG_LEVEL": "warning",
               "COE_ADMIN_KEY": self.admin_key, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.extra_env}
        if self.threads is not None:  # several processes on few cores: one thread each; None = the engines' default
            env["COE_TORCH_THREADS"] = str(self.threads)
        if self.routes_file.exists():
            env["COE_ROUTES_FILE"] = str(self.routes_file)
        if self.redis is not None:
            env["COE_REDIS_URL"] = self.redis.url
        return env

    def _popen(self, args: list[str], name: str, **env) -> subprocess.Popen:
        with (self.log_dir / f"{name}.log").open("w") as log:
            return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**self._env(), **env}, stdout=log,
                                    stderr=subprocess.STDOUT)

    def start_worker(self) -> tuple[subprocess.Popen, str]:
        self._spawned += 1
        name = f"bench-worker-{self._spawned}"
        proc = self._popen(["-m", "coe.cli_worker", "--device", "cpu", "--name", name,
                            "--reclaim-idle-s", str(self.reclaim_idle_s)], name, COE_LOG_LEVEL="info")
        self.workers.append(proc)
        return proc, name

    def start(self, ready_timeout: float) -> None:
        if self.redis is not None:
            self.redis.start()
        for i, port in enumerate(self.ports):
            self.servers.append(self._popen(["-m", "coe.cli", "serve"], f"replica-{i + 1}", COE_PORT=str(port)))
        for _ in range(self.n_workers):
            self.start_worker()
        deadline = time.time() + ready_timeout
        for i, (server, url) in enumerate(zip(self.servers, self.urls)):
            while not self._ready(server, url, i):
                if time.time() > deadline:
                    raise RuntimeError(f"replica {i + 1} did not become ready; see {self.log_dir}")
                time.sleep(0.5)
        names = [f"bench-worker-{i + 1}" for i in range(self.n_workers)]
        while not all(f"worker {n} ready" in (self.log_dir / f"{n}.log").read_text() for n in names):
            if time.time() > deadline:
                raise RuntimeError(f"the workers did not load their models; see {self.log_dir}")
            time.sleep(0.5)

    def _ready(self, server: subprocess.Popen, url: str, i: int) -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"replica {i + 1} exited with {server.returncode}; see {self.log_dir}/replica-{i + 1}.log")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_and_replace_worker(self) -> list[str]:
        """SIGKILL the first worker still running and start a new one; what happened, in words."""
        victim = next(p for p in self.workers if p.poll() is None)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        replacement, name = self.start_worker()
        return [f"SIGKILL worker pid {victim.pid}", f"started worker pid {replacement.pid} ({name})"]

    def hang_worker(self, seconds: float) -> list[str]:
        """SIGSTOP the last worker still running (a hung worker: no heartbeat, no progress), SIGCONT it `seconds` later."""
        victim = next(p for p in reversed(self.workers) if p.poll() is None)
        victim.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        if victim.poll() is None:
            victim.send_signal(signal.SIGCONT)
        return [f"SIGSTOP worker pid {victim.pid}", f"SIGCONT worker pid {victim.pid} after {seconds:g} s"]

    def pause_redis(self, seconds: float) -> None:
        """`CLIENT PAUSE` every client of the bench's Redis for `seconds` (Redis stays up, answers nothing)."""
        import redis

        redis.Redis(port=self.redis.port).execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")

    def api_rss_mb(self) -> list[float | None]:
        """Resident memory of each API replica (VmRSS from /proc), None for one that is gone."""
        sizes = []
        for server in self.servers:
            try:
                status = Path(f"/proc/{server.pid}/status").read_text()
            except OSError:
                sizes.append(None)
                continue
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            sizes.append(round(kb / 1024, 1))
        return sizes

    def restart_redis(self, down_s: float) -> None:
        """Stop the bench's redis-server, leave it down `down_s`, start it again on the same port and files."""
        self.redis.stop()
        time.sleep(down_s)
        self.redis.start()

    def reclaimed_jobs(self) -> int:
        """Jobs the workers took over from a dead one (from their logs)."""
        return sum((self.log_dir / f"bench-worker-{i + 1}.log").read_text().count("reclaimed job")
                   for i in range(self._spawned))

    def stop(self) -> None:
        procs = [*self.workers, *self.servers]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
