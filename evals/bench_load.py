"""`coe bench load`: many concurrent clients against API replicas on one Redis, with faults at fixed times.

The load: `clients` asyncio clients (httpx), spread round-robin over the replicas, send requests back
to back for `duration` seconds, a mix of valid chats (routed `coe` and named experts, tiny max_tokens)
and invalid ones (unknown model, malformed JSON, empty messages, out-of-range fields); every few
seconds one more client opens a stream and closes it after the first chunk. When the time is up no
new request is sent and every outstanding one is waited for (up to the client timeout). Every request
must come back with an HTTP answer: `lost` counts those that did not, and must be 0.

`--spawn redis` (the default) starts the bench's own redis-server (append-only file, a free port, a
temp folder), `--replicas` `coe serve` processes and `--workers` `coe worker` processes on it, and
scripts the faults of evals/load_faults.py: a worker SIGKILLed and replaced, Redis restarted, an
expert registered through replica 1 and asked for through replica 2. `--spawn embedded` starts one
`coe serve` alone (no faults), `--spawn none` loads the service at `--url`. Targets are loopback only.

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
import re
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import typer

from coe_evals import load_faults as faults
from coe_evals.load_clients import Leavers, Tally, leavers_loop, load_client, ms
from coe_evals.load_fleet import ROOT, Fleet
from coe_evals.load_report import markdown

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
METRIC = r"^{name} ([0-9.e+]+)$"
DRAIN_S = 30.0
MoreFaults = Callable[[httpx.AsyncClient, faults.Events], list[Coroutine]]


@dataclass
class FaultPlan:
    """When the scripted faults happen, as fractions of the run (with Redis only)."""

    kill_at: float
    restart_redis_at: float
    redis_down_s: float
    register_at: float
    registry_window_s: float
    faults: tuple[str, ...] = ("kill", "redis-restart", "register")


def _metric(text: str, name: str) -> int | None:
    found = re.search(METRIC.format(name=re.escape(name)), text, re.M)
    return int(float(found.group(1))) if found else None


async def _counters(http: httpx.AsyncClient, url: str) -> dict[str, int | None]:
    """Cancelled jobs by stage and the queue depth, from /metrics (with Redis: counted over every process)."""
    try:
        text = (await http.get(f"{url}/metrics", timeout=30)).text
    except httpx.HTTPError:
        text = ""
    return {"queued": _metric(text, 'coe_jobs_cancelled_total{stage="queued"}'),
            "running": _metric(text, 'coe_jobs_cancelled_total{stage="running"}'),
            "depth": _metric(text, "coe_queue_depth")}


async def _drained(http: httpx.AsyncClient, url: str) -> dict[str, int | None]:
    """The counters once the queue is empty (a cancelled queued job is counted when a worker reaches it)."""
    deadline = time.monotonic() + DRAIN_S
    while True:
        now = await _counters(http, url)
        if now["depth"] == 0 or time.monotonic() > deadline:
            return now
        await asyncio.sleep(1.0)


def _scripted(fleet: Fleet, http: httpx.AsyncClient, events: faults.Events, plan: FaultPlan, duration: float,
              probe: faults.RegistryProbe) -> list[Coroutine]:
    chosen = {"kill": lambda: faults.kill_worker(fleet, events, plan.kill_at * duration),
              "redis-restart": lambda: faults.restart_redis(fleet, events, plan.restart_redis_at * duration,
                                                            plan.redis_down_s),
              "register": lambda: faults.register_and_probe(fleet, http, events, plan.register_at * duration, probe,
                                                            faults.added_expert(fleet.experts_file, probe.expert))}
    return [chosen[name]() for name in plan.faults if name in chosen]


async def run_load(urls: list[str], clients: int, duration: float, invalid_share: float, max_tokens: int,
                   experts: list[str], seed: int, fleet: Fleet | None, plan: FaultPlan, leave_every_s: float,
                   timeout_s: float, more_faults: MoreFaults | None = None) -> dict:
    """The load, with the scripted faults of `plan` (with Redis) and those `more_faults` makes (coe bench chaos)."""
    tally, leavers = Tally(), Leavers()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=clients)  # the faults send bursts too
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        before = await _counters(http, urls[0])
        events = faults.Events()
        end = events.t0 + duration
        scripted, probe = [], None
        if fleet is not None and fleet.redis is not None:
            probe = faults.RegistryProbe(f"bench-added-{os.getpid()}", 1, min(2, len(urls)), plan.registry_window_s)
            scripted = _scripted(fleet, http, events, plan, duration, probe)
            if "register" not in plan.faults:
                probe = None
        if more_faults is not None:
            scripted += more_faults(http, events)
        load = [load_client(http, urls[i % len(urls)], end, random.Random(seed + i), tally, experts, invalid_share,
                            max_tokens) for i in range(clients)]
        await asyncio.gather(*load, leavers_loop(http, urls, end, leave_every_s, experts, random.Random(seed - 1),
                                                 leavers), *scripted)
        wall = time.monotonic() - events.t0
        after = await _drained(http, urls[0])
    t = tally.timings
    cancelled = {stage: after[stage] - (before[stage] or 0) if after[stage] is not None else None
                 for stage in ("queued", "running")}
    return {
        "clients": clients, "replicas": len(urls), "duration_s": duration, "wall_s": round(wall, 1),
        "invalid_share": invalid_share, "max_tokens": max_tokens,
        "sent": tally.sent + leavers.sent, "answered": tally.answered,
        "refused_retryable": tally.refused_retryable + leavers.refused_retryable,
        "client_errors_expected": tally.client_errors,
        "other_errors": tally.other_errors + sum(leavers.other.values()),
        "left_mid_stream": leavers.left_after_first_chunk, "lost": tally.lost + leavers.lost,
        "lost_reasons": dict(tally.lost_reasons + leavers.lost_reasons),
        "by_status": {str(k): v for k, v in sorted(tally.by_status.items())},
        "unexpected_status": dict(tally.unexpected),
        "streams_left_after_first_chunk": {"sent": leavers.sent, "left": leavers.left_after_first_chunk,
                                           "refused_retryable": leavers.refused_retryable,
                                           "other": {str(k): v for k, v in leavers.other.items()},
                                           "lost": leavers.lost, "every_s": leave_every_s},
        "cancelled_jobs": {"never_run": cancelled["queued"], "while_running": cancelled["running"],
                           "queue_depth_at_end": after["depth"]},
        "ok_per_s": round(tally.answered / wall, 2),
        "latency_200": ms(tally.latency_ok), "latency_refused": ms(tally.latency_refused),
        "coe_timings_200": {
            "total": ms([d["total"] for d in t]),
            "engine": ms([d.get("generate", 0) + d.get("aggregate", 0) for d in t]),
            "queue_wait": ms([d.get("queue", 0) for d in t]),
            "orchestrator_overhead": ms([max(0.0, d["total"] - d.get("queue", 0) - d.get("generate", 0)
                                             - d.get("aggregate", 0)) for d in t]),
            "stages": {k: ms([d[k] for d in t if k in d]) for k in sorted({k for d in t for k in d})}},
        "errors_by_kind": dict(tally.error_kinds),
        "server_errors": [{**e, "t": round(e["t"] - events.t0, 1)} for e in tally.server_errors],
        "registry": probe.summary() if probe else None,
        "events": events.lines,
    }


def load(
    url: list[str] = typer.Option(["http://127.0.0.1:8000"], help="--spawn none: the service (repeat for replicas; "
                                                                  "loopback only)"),
    clients: int = typer.Option(50, min=1, help="concurrent clients"),
    duration: float = typer.Option(60.0, min=1, help="seconds of sending"),
    invalid_share: float = typer.Option(0.3, min=0, max=1, help="share of invalid requests"),
    max_tokens: int = typer.Option(4, min=1, help="max_tokens of the valid chats"),
    spawn: str = typer.Option("redis", help="redis (own redis-server, replicas, workers, faults), embedded (one coe "
                                            "serve) or none (use --url)"),
    replicas: int = typer.Option(2, min=1, help="--spawn redis: coe serve processes on the one Redis"),
    workers: int = typer.Option(2, min=1, help="--spawn redis: coe worker processes"),
    kill_at: float = typer.Option(0.25, min=0, max=1, help="--spawn redis: SIGKILL a worker (and start another) at "
                                                           "this fraction of the run (15 s of 60)"),
    restart_redis_at: float = typer.Option(0.5, min=0, max=1, help="--spawn redis: restart Redis at this fraction "
                                                                   "(30 s of 60)"),
    redis_down_s: float = typer.Option(2.0, min=0, help="--spawn redis: how long Redis stays down"),
    register_at: float = typer.Option(0.667, min=0, max=1, help="--spawn redis: register an expert through replica 1 "
                                                                "at this fraction (40 s of 60)"),
    registry_window_s: float = typer.Option(90.0, min=0, help="--spawn redis: ask replica 2 for the new expert this "
                                                              "long after the 201"),
    leave_every_s: float = typer.Option(3.0, min=0.1, help="a streaming client that leaves after one chunk, this often"),
    reclaim_idle_s: float = typer.Option(5.0, help="--spawn redis: workers take over a dead worker's jobs after this"),
    experts_file: Path = typer.Option(ROOT / "experts.yaml", "--experts", "-e", help="--spawn: the experts file "
                                                                                     "(a copy is used)"),
    timeout_s: float = typer.Option(300.0, help="client timeout per request; an answer later than this is lost"),
    ready_timeout_s: float = typer.Option(1200.0, help="--spawn: wait this long for the processes to be ready (the "
                                                       "first run on a machine converts the experts' weights)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("evals/results"), help="where load.json and load.md go"),
) -> None:
    """Concurrent mixed load with scripted faults; nothing may be lost. Counts, latency, registry propagation."""
    if spawn not in ("none", "embedded", "redis"):
        raise typer.BadParameter("--spawn must be none, embedded or redis")
    fleet, urls = None, list(url)
    load_start = os.getloadavg()
    if spawn != "none":
        log_dir = Path(tempfile.mkdtemp(prefix="coe-bench-load-"))
        typer.echo(f"process logs in {log_dir}")
        fleet = Fleet(spawn, experts_file, replicas if spawn == "redis" else 1, workers, reclaim_idle_s, log_dir)
        typer.echo(f"starting {len(fleet.ports)} coe serve{f', {workers} workers and redis-server' if fleet.redis else ''}")
        try:
            fleet.start(ready_timeout_s)
        except BaseException:
            fleet.stop()
            raise
        urls = fleet.urls
    if any(urlparse(u).hostname not in LOOPBACK for u in urls):
        raise typer.BadParameter(f"only loopback targets: {urls}")
    plan = FaultPlan(kill_at, restart_redis_at, redis_down_s, register_at, registry_window_s)
    try:
        models = httpx.get(f"{urls[0]}/v1/models", timeout=30).json()["data"]
        experts = [m["id"] for m in models if m["id"] != "coe" and m["engine"] in faults.CPU_ENGINES]
        typer.echo(f"load: {clients} clients for {duration:g}s against {', '.join(urls)} ({', '.join(experts)})")
        res = asyncio.run(run_load(urls, clients, duration, invalid_share, max_tokens, experts, seed, fleet, plan,
                                   leave_every_s, timeout_s))
    finally:
        if fleet is not None:
            fleet.stop()
    res["mode"] = spawn
    res["workers"] = workers if spawn == "redis" else None
    if fleet is not None and fleet.redis is not None:
        res["jobs_reclaimed_from_dead_workers"] = fleet.reclaimed_jobs()
    args = sys.argv[sys.argv.index("load") + 1:] if "load" in sys.argv else sys.argv[1:]
    res["command"] = " ".join(["coe bench load", *args])
    res["load_average"] = {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}
    res["machine"] = f"{os.cpu_count()} CPU cores, shared with other jobs"
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "load.md").write_text(markdown(res))
    typer.echo(markdown(res))
    if res["lost"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(load)
