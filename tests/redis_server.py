"""A redis-server process of a test's own: a free port, its files in a temp folder, durable like production.

Started the way compose.yaml starts Redis, with the append-only file on, but fsynced on every write
(`--appendfsync always`), so a restart keeps every job that was accepted before it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port

needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


class RedisServer:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")])
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        for _ in range(200):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"our redis-server did not start:\n{(self.dir / 'redis.log').read_text()}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        self.proc.terminate()
        self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A started RedisServer that is stopped on the way out unless the test left it stopped (tests that restart
    Redis may fail while it is down)."""
    rds = RedisServer(workdir)
    rds.start()
    try:
        yield rds
    finally:
        if rds.proc.poll() is None:
            rds.stop()
