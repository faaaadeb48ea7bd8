"""`coe bench load`: many concurrent clients against the running service, with a worker killed midway.

The load: `clients` asyncio clients (httpx) send requests back to back for `duration` seconds, a mix
of valid chats (routed `coe` and named experts, tiny max_tokens) and invalid ones (unknown model,
malformed JSON, empty messages, out-of-range fields). When the time is up, no new request is sent
and every outstanding one is waited for (up to the client timeout). Every request sent must come back
with an HTTP answer: `lost` counts those that did not (connection errors, client timeouts), and must
be 0.

Targets are loopback only. `--spawn redis` starts `coe serve` with COE_REDIS_URL and `--workers`
`coe worker` processes on one Redis database (cleared first), SIGKILLs worker 0 at `--kill-at` of the
run and starts a new one in its place: its claimed jobs are taken over by the others after
`--reclaim-idle-s`. `--spawn embedded` starts `coe serve` alone (no worker to kill), `--spawn none`
uses the service at `--url`.

Overhead per request comes from each answer's `coe.timings`:
  engine   = generate + aggregate               (model time)
  overhead = total - queue - generate - aggregate (embedding, routing, queue round trips: the orchestrator)
  waiting  = queue                              (time a job waited for a worker: load, not overhead)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import typer

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
QUESTIONS = [
    "What is the derivative of x squared?", "Who was Napoleon Bonaparte?", "How do vaccines work?",
    "Explain the law of supply and demand.", "What is a prime number?", "Name a famous philosopher.",
    "Why is the sky blue?", "What causes inflation?", "Say hello.", "What is 12 times 12?",
]


def _invalid(rng: random.Random, experts: list[str]) -> tuple[str, dict | bytes, int]:
    """An invalid request and the status it must get."""
    kind = rng.randrange(5)
    if kind == 0:
        return "unknown-model", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404
    if kind == 1:
        return "bad-json", b'{"model": "coe", "messages": [', 400
    if kind == 2:
        return "empty-messages", {"model": "coe", "messages": []}, 422
    if kind == 3:
        return "bad-temperature", {"model": rng.choice(experts), "temperature": 9,
                                   "messages": [{"role": "user", "content": "hi"}]}, 422
    return "bad-role", {"model": "coe", "messages": [{"role": "wizard", "content": "hi"}]}, 422


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    by_status: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    lost_reasons: Counter = field(default_factory=Counter)
    latency_all: list[float] = field(default_factory=list)
    latency_ok: list[float] = field(default_factory=list)
    latency_refused: list[float] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)


async def _client(http: httpx.AsyncClient, url: str, end: float, rng: random.Random, tally: Tally, experts: list[str],
                  invalid_share: float, max_tokens: int) -> None:
    while time.monotonic() < end:
        if rng.random() < invalid_share:
            kind, body, expected = _invalid(rng, experts)
        else:
            model = "coe" if rng.random() < 0.5 else rng.choice(experts)
            kind, expected = f"valid-{'routed' if model == 'coe' else 'named'}", 200
            body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}]}
        kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
        tally.sent += 1
        started = time.perf_counter()
        try:
            resp = await http.post(f"{url}/v1/chat/completions", **kwargs)
        except httpx.HTTPError as exc:
            tally.lost += 1
            tally.lost_reasons[type(exc).__name__] += 1
            continue
        elapsed = time.perf_counter() - started
        tally.answered += 1
        tally.by_status[resp.status_code] += 1
        tally.latency_all.append(elapsed)
        if resp.status_code != expected:
            tally.unexpected[f"{kind}->{resp.status_code}"] += 1
        if resp.status_code == 200:
            tally.latency_ok.append(elapsed)
            tally.timings.append(resp.json()["coe"]["timings"])
        else:
            tally.latency_refused.append(elapsed)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _ms(values: list[float]) -> dict:
    return {"p50_ms": round(_pct(values, 50) * 1000, 2) if values else None,
            "p99_ms": round(_pct(values, 99) * 1000, 2) if values else None,
            "mean_ms": round(statistics.fmean(values) * 1000, 2) if values else None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    """The processes `--spawn` starts: one `coe serve` and, with Redis, `coe worker` processes."""

    def __init__(self, mode: str, experts_file: Path, redis_url: str | None, workers: int, reclaim_idle_s: float,
                 log_dir: Path):
        self.mode, self.experts_file, self.redis_url = mode, experts_file, redis_url
        self.n_workers, self.reclaim_idle_s, self.log_dir = workers, reclaim_idle_s, log_dir
        self.port = _free_port()
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.events: list[str] = []
        self._spawned = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict:
        env = {**os.environ, "COE_EXPERTS_FILE": str(self.experts_file), "COE_PORT": str(self.port),
               "COE_LOG_LEVEL": "warning", "COE_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if self.redis_url:
            env["COE_REDIS_URL"] = self.redis_url
        return env

    def _popen(self, args: list[str], name: str, **env) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("w")
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**self._env(), **env}, stdout=log,
                                stderr=subprocess.STDOUT)

    def start_worker(self) -> subprocess.Popen:
        self._spawned += 1
        name = f"bench-worker-{self._spawned}"
        proc = self._popen(["-m", "coe.cli_worker", "--device", "cpu", "--name", name,
                            "--reclaim-idle-s", str(self.reclaim_idle_s)], name, COE_LOG_LEVEL="info")
        self.workers.append(proc)
        return proc

    def start(self, ready_timeout: float = 300) -> None:
        if self.redis_url:
            import redis

            redis.Redis.from_url(self.redis_url).flushdb()
        self.server = self._popen(["-m", "coe.cli", "serve"], "server")
        for _ in range(self.n_workers if self.mode == "redis" else 0):
            self.start_worker()
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"coe serve exited with {self.server.returncode}; see {self.log_dir}/server.log")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("coe serve did not become ready")
        if self.mode == "redis":  # wait until every worker has loaded its model and is claiming
            self._wait_for_workers(deadline)

    def _wait_for_workers(self, deadline: float) -> None:
        body = {"model": "coe", "max_tokens": 1, "messages": [{"role": "user", "content": "warm up"}]}
        while time.time() < deadline:
            if all("serving" in (self.log_dir / f"bench-worker-{i + 1}.log").read_text() for i in range(self.n_workers)):
                break
            time.sleep(0.5)
        httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=300)

    def kill_and_replace_worker(self) -> None:
        victim = self.workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.events.append(f"SIGKILL worker pid {victim.pid} (bench-worker-1)")
        replacement = self.start_worker()
        self.events.append(f"started worker pid {replacement.pid} (bench-worker-{self._spawned})")

    def reclaimed_jobs(self) -> int:
        """Jobs the workers took over from a dead one (from their logs)."""
        return sum((self.log_dir / f"bench-worker-{i + 1}.log").read_text().count("reclaimed job")
                   for i in range(self._spawned))

    def stop(self) -> None:
        for proc in [*self.workers, self.server]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.server]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


async def run_load(url: str, clients: int, duration: float, invalid_share: float, max_tokens: int,
                   experts: list[str], seed: int, fleet: Fleet | None, kill_at: float, timeout_s: float) -> dict:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.monotonic()
    end = started + duration
    killer = None
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        if fleet is not None and fleet.mode == "redis":
            async def kill_later():
                await asyncio.sleep(duration * kill_at)
                await asyncio.to_thread(fleet.kill_and_replace_worker)
                fleet.events[-2] = f"t={time.monotonic() - started:.1f}s " + fleet.events[-2]
            killer = asyncio.create_task(kill_later())
        tasks = [asyncio.create_task(_client(http, url, end, random.Random(seed + i), tally, experts, invalid_share,
                                             max_tokens)) for i in range(clients)]
        await asyncio.gather(*tasks)
        if killer is not None:
            await killer
    wall = time.monotonic() - started
    t = tally.timings
    engine = [d.get("generate", 0) + d.get("aggregate", 0) for d in t]
    overhead = [max(0.0, d["total"] - d.get("queue", 0) - d.get("generate", 0) - d.get("aggregate", 0)) for d in t]
    waiting = [d.get("queue", 0) for d in t]
    total = [d["total"] for d in t]
    return {
        "clients": clients, "duration_s": duration, "wall_s": round(wall, 1), "invalid_share": invalid_share,
        "max_tokens": max_tokens, "sent": tally.sent, "answered": tally.answered, "lost": tally.lost,
        "lost_reasons": dict(tally.lost_reasons),
        "by_status": {str(k): v for k, v in sorted(tally.by_status.items())},
        "unexpected_status": dict(tally.unexpected),
        "ok_per_s": round(tally.by_status.get(200, 0) / wall, 2),
        "latency_all": _ms(tally.latency_all), "latency_200": _ms(tally.latency_ok),
        "latency_refused": _ms(tally.latency_refused),
        "coe_timings_200": {"total": _ms(total), "engine": _ms(engine), "queue_wait": _ms(waiting),
                            "orchestrator_overhead": _ms(overhead)},
    }


def _markdown(res: dict) -> str:
    rows = [
        ("requests sent", res["sent"]), ("answered", res["answered"]), ("lost (no answer)", res["lost"]),
        *((f"status {k}", v) for k, v in res["by_status"].items()),
        ("answers with an unexpected status", sum(res["unexpected_status"].values())),
        ("200 per second", res["ok_per_s"]),
        ("latency p50 / p99, all answers (ms)", f"{res['latency_all']['p50_ms']} / {res['latency_all']['p99_ms']}"),
        ("latency p50 / p99, 200s (ms)", f"{res['latency_200']['p50_ms']} / {res['latency_200']['p99_ms']}"),
        ("latency p50 / p99, refused (4xx) (ms)",
         f"{res['latency_refused']['p50_ms']} / {res['latency_refused']['p99_ms']}"),
    ]
    for name, label in (("engine", "engine time (generate + aggregate)"), ("queue_wait", "waiting for a worker (queue)"),
                        ("orchestrator_overhead", "orchestrator overhead (total - queue - engine)")):
        v = res["coe_timings_200"][name]
        rows.append((f"{label}, p50 / p99 (ms)", f"{v['p50_ms']} / {v['p99_ms']}"))
    lines = [f"# Load test: {res['clients']} clients, {res['duration_s']:g} s, mode `{res['mode']}`", "",
             f"Command: `{res['command']}`", "", f"Machine: {res['machine']}", "",
             "| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]
    if res.get("events"):
        lines += ["Events during the run:", "", *(f"- {e}" for e in res["events"]), ""]
    if res["unexpected_status"]:
        lines += ["Unexpected statuses (request kind -> status): " + json.dumps(res["unexpected_status"]), ""]
    lines += [res["note"], ""]
    return "\n".join(lines)


def load(
    url: str = typer.Option("http://127.0.0.1:8000", help="the service (loopback only; ignored with --spawn)"),
    clients: int = typer.Option(50, min=1, help="concurrent clients"),
    duration: float = typer.Option(60.0, min=1, help="seconds of sending"),
    invalid_share: float = typer.Option(0.3, min=0, max=1, help="share of invalid requests"),
    max_tokens: int = typer.Option(4, min=1, help="max_tokens of the valid chats"),
    spawn: str = typer.Option("none", help="none (use --url), embedded (start coe serve) or redis (serve + workers)"),
    workers: int = typer.Option(2, min=1, help="--spawn redis: coe worker processes"),
    kill_at: float = typer.Option(0.5, min=0, max=1, help="--spawn redis: SIGKILL worker 0 at this fraction of the run"),
    reclaim_idle_s: float = typer.Option(5.0, help="--spawn redis: workers take over a dead worker's jobs after this"),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/12", help="--spawn redis: a database the bench may clear"),
    experts_file: Path = typer.Option(ROOT / "experts.yaml", "--experts", "-e", help="--spawn: the experts file"),
    timeout_s: float = typer.Option(300.0, help="client timeout per request; an answer later than this is lost"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("evals/results"), help="where load.json and load.md go"),
) -> None:
    """Concurrent mixed load (valid + invalid) with nothing lost; p50/p99 latency and orchestrator overhead."""
    if spawn not in ("none", "embedded", "redis"):
        raise typer.BadParameter("--spawn must be none, embedded or redis")
    fleet = None
    if spawn != "none":
        log_dir = Path(tempfile.mkdtemp(prefix="coe-bench-load-"))
        typer.echo(f"process logs in {log_dir}")
        fleet = Fleet(spawn, experts_file, redis_url if spawn == "redis" else None, workers, reclaim_idle_s, log_dir)
        typer.echo(f"starting coe serve{f' and {workers} workers' if spawn == 'redis' else ''} ...")
        fleet.start()
        url = fleet.url
    if urlparse(url).hostname not in LOOPBACK:
        raise typer.BadParameter(f"only loopback targets: {url}")
    try:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
        experts = [m["id"] for m in models if m["id"] != "coe" and m["engine"] == "local"]
        typer.echo(f"load: {clients} clients for {duration:g}s against {url} ({', '.join(experts)})")
        res = asyncio.run(run_load(url, clients, duration, invalid_share, max_tokens, experts, seed, fleet, kill_at,
                                   timeout_s))
    finally:
        if fleet is not None:
            fleet.stop()
    res["mode"] = spawn
    res["events"] = fleet.events if fleet else []
    if fleet is not None and spawn == "redis":
        res["jobs_reclaimed_from_the_killed_worker"] = fleet.reclaimed_jobs()
        res["events"].append(f"{res['jobs_reclaimed_from_the_killed_worker']} jobs taken over by the other workers")
    args = sys.argv[sys.argv.index("load") + 1:] if "load" in sys.argv else sys.argv[1:]
    res["command"] = " ".join(["coe bench load", *args])
    res["machine"] = f"{os.cpu_count()} CPU cores, shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end)"
    res["note"] = ("A worker was killed (SIGKILL) and replaced midway; its jobs were taken over by the other workers."
                   if spawn == "redis" else "No worker was killed in this run (embedded mode has no separate worker).")
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "load.md").write_text(_markdown(res))
    typer.echo(_markdown(res))
    if res["lost"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(load)
