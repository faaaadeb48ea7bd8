"""`coe bench chaos`: `coe bench load` on its own Redis fleet with every fault of a seeded schedule.

Two API replicas and two workers on the bench's own redis-server (evals/load_fleet.py) take the
load's mixed traffic (valid chats routed and named, invalid ones, streams left after one chunk) while
the faults hit, each once, at times the seed draws (evals/chaos_faults.py): a worker SIGKILLed and
replaced, a worker SIGSTOPped then continued, Redis restarted, Redis paused (`CLIENT PAUSE`), an
over-long prompt in a busy batch, a poison job, a burst of skills-routed chats whose routing asks the
keyword LLM (the replicas run with COE_ROUTER_OPTIONS={"skills": {"skill_source": "keywords"}}), and an
expert registered through the admin API. Every request has a deadline (the client timeout).

What it reports (evals/chaos_report.py): sent, answered, errors by kind, lost (no HTTP answer although
the connection was made: dropped, or a 200 without a completion), stuck (no answer by the deadline),
latency p50/p99 and its breakdown from each answer's `coe.timings`, the 5xx outside a Redis fault
window, the replicas' RSS at start and end, and the goals met or not: lost 0, stuck 0, no 5xx but 503
with Retry-After while Redis is down or paused, RSS growth at most 10 %. It exits 1 unless lost and
stuck are both 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import typer

from coe_evals import chaos_faults as chaos_mod
from coe_evals.bench_load import FaultPlan, run_load
from coe_evals.chaos_faults import FAULTS, ChaosPlan, FaultTallies, schedule
from coe_evals.chaos_report import markdown, summarise
from coe_evals.load_faults import CPU_ENGINES, Events
from coe_evals.load_fleet import ROOT, Fleet

KEYWORD_SKILLS = {"skills": {"skill_source": "keywords"}}


def _more_faults(fleet: Fleet, urls: list[str], experts: list[str], when: dict[str, float], plan: ChaosPlan,
                 tallies: FaultTallies):
    def make(http: httpx.AsyncClient, events: Events) -> list:
        tallies.t0 = events.t0
        made = {"hang": lambda: chaos_mod.hang_worker(fleet, events, when["hang"], plan.hang_s),
                "redis-pause": lambda: chaos_mod.pause_redis(fleet, events, when["redis-pause"], plan.pause_s),
                "long-prompt": lambda: chaos_mod.long_prompt_in_batch(http, urls[0], experts[0], events,
                                                                      when["long-prompt"], tallies),
                "poison": lambda: chaos_mod.poison_job(fleet, experts[-1], events, when["poison"], plan, tallies),
                "skills": lambda: chaos_mod.skills_burst(http, urls, plan.skills_burst, events, when["skills"], tallies)}
        return [made[name]() for name in when if name in made]
    return make


def chaos(
    clients: int = typer.Option(50, min=1, help="concurrent clients of the mixed load"),
    duration: float = typer.Option(300.0, min=5, help="seconds of sending"),
    faults: str = typer.Option(",".join(FAULTS), help=f"the faults, comma-separated, from {', '.join(FAULTS)}"),
    seed: int = typer.Option(0, help="draws the faults' order and times, and the clients' requests"),
    replicas: int = typer.Option(2, min=1),
    workers: int = typer.Option(2, min=2, help="at least 2: one is killed and one hung"),
    hang_s: float = typer.Option(10.0, help="a worker stays SIGSTOPped this long"),
    pause_s: float = typer.Option(5.0, help="Redis CLIENT PAUSE this long"),
    redis_down_s: float = typer.Option(2.0, help="Redis stays down this long when restarted"),
    skills_burst: int = typer.Option(32, min=1, help="concurrent skills-routed chats (keyword LLM)"),
    invalid_share: float = typer.Option(0.3, min=0, max=1),
    max_tokens: int = typer.Option(4, min=1),
    leave_every_s: float = typer.Option(3.0, min=0.1),
    reclaim_idle_s: float = typer.Option(5.0, help="workers take over a dead or hung worker's jobs after this"),
    deadline_s: float = typer.Option(120.0, help="each request's deadline (client timeout): later is stuck"),
    redis_grace_s: float = typer.Option(5.0, help="a 503 this long after Redis came back still counts as its outage"),
    experts_file: Path = typer.Option(ROOT / "experts.yaml", "--experts", "-e", help="the experts file (a copy is used)"),
    ready_timeout_s: float = typer.Option(1200.0),
    out: Path = typer.Option(Path("evals/results"), help="where chaos.json and chaos.md go"),
) -> None:
    """Mixed load on 2 replicas and 2 workers with a seeded schedule of faults: nothing lost, nothing stuck."""
    names = [f.strip() for f in faults.split(",") if f.strip()]
    if unknown := sorted(set(names) - set(FAULTS)):
        raise typer.BadParameter(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    when = schedule(seed, duration, names)
    plan = ChaosPlan(hang_s=hang_s, pause_s=pause_s, redis_down_s=redis_down_s, skills_burst=skills_burst)
    load_plan = FaultPlan(kill_at=when.get("kill", 0) / duration, restart_redis_at=when.get("redis-restart", 0) / duration,
                          redis_down_s=redis_down_s, register_at=when.get("register", 0) / duration,
                          registry_window_s=min(60.0, deadline_s), faults=tuple(names))
    load_start = os.getloadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="coe-bench-chaos-"))
    typer.echo(f"process logs in {log_dir}; fault schedule (s): {json.dumps(when)}")
    fleet = Fleet("redis", experts_file, replicas, workers, reclaim_idle_s, log_dir,
                  env={"COE_ROUTER_OPTIONS": json.dumps(KEYWORD_SKILLS)})
    tallies = FaultTallies()
    try:
        started = time.monotonic()
        fleet.start(ready_timeout_s)
        typer.echo(f"fleet ready in {time.monotonic() - started:.0f} s")
        rss_start = fleet.api_rss_mb()
        models = httpx.get(f"{fleet.urls[0]}/v1/models", timeout=30).json()["data"]
        experts = [m["id"] for m in models if m["id"] != "coe" and m["engine"] in CPU_ENGINES]
        res = asyncio.run(run_load(fleet.urls, clients, duration, invalid_share, max_tokens, experts, seed, fleet,
                                   load_plan, leave_every_s, deadline_s,
                                   _more_faults(fleet, fleet.urls, experts, when, plan, tallies)))
        rss_end = fleet.api_rss_mb()
        res["jobs_reclaimed_from_dead_workers"] = fleet.reclaimed_jobs()
    finally:
        fleet.stop()
    args = sys.argv[sys.argv.index("chaos") + 1:] if "chaos" in sys.argv else sys.argv[1:]
    summary = summarise(res, tallies, {"start": rss_start, "end": rss_end}, redis_grace_s)
    summary.update(command=" ".join(["coe bench chaos", *args]), seed=seed, schedule_s=when, workers=workers,
                   deadline_s=deadline_s, experts_file=str(experts_file), machine=f"{os.cpu_count()} CPU cores, "
                   "shared with other jobs", load_average={"start": [round(x, 2) for x in load_start],
                                                           "end": [round(x, 2) for x in os.getloadavg()]})
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "chaos.md").write_text(markdown(summary))
    typer.echo(markdown(summary))
    if summary["lost"] or summary["stuck"]:
        raise typer.Exit(1)
