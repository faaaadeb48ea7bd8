"""`coe bench bandit`: the online bandit (coe/bandit.py) against the fixed router, in a SIMULATION with known truth.

Simulated experts answer well with known probabilities; the router's estimates (the bandit's prior) are those
probabilities as they were when it was trained. Midway the router's pick silently degrades, so another expert
becomes the better one. Every request is answered, scored (a Bernoulli draw of the chosen expert's true
probability) and fed back at once, so requests and feedback events are counted alike. The bandit is the service's
own class over its own statistics store (SQLite in a temporary folder by default, or Redis with --redis-url under
a key prefix of the bench's own), and requests come from several API keys, each with its exploration share.

Measured per seed: cumulative regret (the best expert's true probability minus the chosen one's, summed, so the
randomness of the scores does not enter), before and after the drift; how many feedback events after the drift
until at least 80% of a trailing window of requests go to the better expert; the share of requests explored.
Writes evals/results/bandit.json and bandit.md.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import typer

SHIFT_SHARE = 0.8
SHIFT_WINDOW = 50
GOAL_SHIFT_EVENTS = 200
GOAL_REGRET_RATIO = 0.5


@dataclass(frozen=True)
class Scenario:
    """Experts with their true success probabilities before and after the drift; the router picks the first."""

    experts: tuple[str, ...] = ("coder-large", "coder-small", "chat")
    before: tuple[float, ...] = (0.80, 0.65, 0.40)
    after: tuple[float, ...] = (0.35, 0.65, 0.40)
    requests: int = 2000
    drift_at: int = 1000
    keys: int = 20
    seconds_per_request: float = 1.0  # the simulated clock the keys' windows run on


@dataclass(frozen=True)
class Policy:
    name: str
    bandit: bool = True
    prior_strength: float = 10.0
    half_life: float = 50.0
    explore_cap: float = 0.1
    window_s: float = 3600.0


@dataclass
class Run:
    policy: str
    seed: int
    regret: float
    regret_before: float
    regret_after: float
    shift_events: int | None  # feedback events after the drift until the trailing window is >= 80% on the best
    explored_share: float
    share_best_after_shift: float | None
    chosen_after: dict[str, int] = field(default_factory=dict)


def _store(kind: str, folder: Path, redis_url: str | None, decay: float, clock):
    from coe.bandit_store import RedisArmStore, SQLiteArmStore

    if kind == "redis":
        return RedisArmStore(redis_url, decay, prefix=f"coebench:{uuid.uuid4().hex[:12]}", clock=clock)
    return SQLiteArmStore(folder / f"bandit-{uuid.uuid4().hex[:8]}.sqlite3", decay, clock=clock)


async def _clear(store) -> None:
    if hasattr(store, "redis"):
        keys = [k async for k in store.redis.scan_iter(match=f"{store.prefix}:*")]
        if keys:
            await store.redis.delete(*keys)


async def simulate(scenario: Scenario, policy: Policy, seed: int, store_kind: str, folder: Path,
                   redis_url: str | None) -> Run:
    from coe.bandit import Bandit, decay_for
    from routers.base import Arm, RouteDecision

    world = np.random.default_rng(seed)
    now = [0.0]
    store = _store(store_kind, folder, redis_url, decay_for(policy.half_life), lambda: now[0])
    bandit = Bandit(store, policy.prior_strength, policy.explore_cap, policy.window_s, rng=np.random.default_rng(seed + 10_000))
    names = list(scenario.experts)
    arms = [Arm(e, p) for e, p in zip(names, scenario.before)]
    regret, regret_before, explored, chosen = 0.0, 0.0, 0, []
    try:
        for t in range(scenario.requests):
            now[0] = t * scenario.seconds_per_request
            truth = scenario.before if t < scenario.drift_at else scenario.after
            decision = RouteDecision([names[0]], "sim", "coding", arms=list(arms))
            if policy.bandit:
                decision = await bandit.choose(decision, f"key-{t % scenario.keys}")
            j = names.index(decision.experts[0])
            chosen.append(j)
            explored += bool(decision.bandit and decision.bandit.explored)
            step = max(truth) - truth[j]
            regret += step
            regret_before += step if t < scenario.drift_at else 0.0
            score = float(world.random() < truth[j])
            if policy.bandit:
                await bandit.learn(f"sim-{seed}-{t}", decision.bandit.context, names[j], score)
    finally:
        await _clear(store)
        await bandit.close()
    best_after = int(np.argmax(scenario.after))
    shift = _shift(chosen, scenario.drift_at, best_after)
    after_shift = chosen[scenario.drift_at + shift:] if shift is not None else []
    return Run(policy.name, seed, regret, regret_before, regret - regret_before, shift, explored / scenario.requests,
               (sum(c == best_after for c in after_shift) / len(after_shift)) if after_shift else None,
               {names[i]: sum(c == i for c in chosen[scenario.drift_at:]) for i in range(len(names))})


def _shift(chosen: list[int], drift_at: int, best: int) -> int | None:
    """Requests (= feedback events) after the drift until the trailing SHIFT_WINDOW requests are >= SHIFT_SHARE on
    `best`; None if that never happens."""
    hits = np.cumsum([c == best for c in chosen])
    for t in range(drift_at + SHIFT_WINDOW, len(chosen) + 1):
        if hits[t - 1] - hits[t - 1 - SHIFT_WINDOW] >= SHIFT_SHARE * SHIFT_WINDOW:
            return t - drift_at
    return None


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[Run], fixed_name: str) -> dict:
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.policy, []).append(r)
    fixed = {r.seed: r.regret for r in by[fixed_name]}
    out = {}
    for name, rs in by.items():
        shifts = [r.shift_events for r in rs]
        out[name] = {
            "regret": _spread([r.regret for r in rs]),
            "regret_before_drift": _spread([r.regret_before for r in rs]),
            "regret_after_drift": _spread([r.regret_after for r in rs]),
            "regret_ratio_to_fixed": _spread([r.regret / fixed[r.seed] for r in rs]),
            "shift_events": _spread([s for s in shifts if s is not None]) if any(s is not None for s in shifts) else None,
            "never_shifted": sum(s is None for s in shifts),
            "explored_share": _spread([r.explored_share for r in rs]),
        }
    return out


def _fmt(s: dict | None, digits: int = 1) -> str:
    if s is None:
        return "never"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def markdown(res: dict) -> str:
    sc = res["scenario"]
    lines = [
        "# Online bandit vs the fixed router (simulation)", "",
        f"`{res['command']}` at commit {res['commit']}, {res['date']}; store: {res['store']}; "
        f"{len(res['seeds'])} seeds ({res['seeds'][0]}-{res['seeds'][-1]}); load average {res['loadavg_before']} before, "
        f"{res['loadavg_after']} after (shared machine; no timing is reported).", "",
        f"SIMULATED experts {', '.join(f'{e} {b:.2f}' for e, b in zip(sc['experts'], sc['before']))}; at request "
        f"{sc['drift_at']} of {sc['requests']}, {sc['experts'][0]} (the router's pick) silently drops to {sc['after'][0]:.2f}. "
        f"Every request is scored and fed back at once; {sc['keys']} API keys take turns. Mean ± sd (min-max) over seeds.", "",
        "| policy | cumulative regret | ratio to fixed | regret before drift | regret after drift | feedback events to 80% on the better expert | explored share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in res["summary"].items():
        never = f" ({s['never_shifted']} seeds never)" if s["never_shifted"] else ""
        lines.append(f"| {name} | {_fmt(s['regret'])} | {_fmt(s['regret_ratio_to_fixed'], 3)} | {_fmt(s['regret_before_drift'])} "
                     f"| {_fmt(s['regret_after_drift'])} | {_fmt(s['shift_events'], 0)}{never} | {_fmt(s['explored_share'], 3)} |")
    g = res["goals"]
    lines += ["", f"Goals (issue 27), for `{g['policy']}`: traffic shifted within {GOAL_SHIFT_EVENTS} feedback events in "
                  f"every seed: **{'met' if g['shift_met'] else 'missed'}** (worst {g['worst_shift']}); cumulative regret "
                  f"<= {GOAL_REGRET_RATIO} x the fixed router's in every seed: **{'met' if g['regret_met'] else 'missed'}** "
                  f"(worst ratio {g['worst_ratio']:.3f}).", "",
              "The shift is counted as the first request after the drift at which the trailing "
              f"{SHIFT_WINDOW} requests are at least {SHIFT_SHARE:.0%} on the better expert. Regret uses the true "
              "probabilities, not the drawn scores."]
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"


def bench_bandit(out: Path, seeds: list[int], scenario: Scenario, policies: list[Policy], store_kind: str,
                 redis_url: str | None, command: str, log=print) -> dict:
    load_before = _loadavg()
    started = time.perf_counter()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="coe-bench-bandit-") as folder:
        for policy in policies:
            for seed in seeds:
                runs.append(asyncio.run(simulate(scenario, policy, seed, store_kind, Path(folder), redis_url)))
            log(f"{policy.name}: mean regret {statistics.fmean(r.regret for r in runs if r.policy == policy.name):.1f}")
    summary = summarise(runs, policies[0].name)
    main = policies[1].name
    mine = [r for r in runs if r.policy == main]
    fixed = {r.seed: r.regret for r in runs if r.policy == policies[0].name}
    shifts = [r.shift_events for r in mine]
    worst_shift = None if None in shifts else max(shifts)
    ratios = [r.regret / fixed[r.seed] for r in mine]
    res = {
        "command": command, "commit": _commit(), "date": time.strftime("%Y-%m-%d"), "store": store_kind,
        "platform": platform.platform(), "seeds": seeds, "scenario": asdict(scenario),
        "policies": [asdict(p) for p in policies], "summary": summary,
        "goals": {"policy": main, "shift_met": worst_shift is not None and worst_shift <= GOAL_SHIFT_EVENTS,
                  "worst_shift": worst_shift if worst_shift is not None else "never",
                  "regret_met": max(ratios) <= GOAL_REGRET_RATIO, "worst_ratio": max(ratios)},
        "runs": [asdict(r) for r in runs], "loadavg_before": load_before, "loadavg_after": _loadavg(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bandit.json").write_text(json.dumps(res, indent=1))
    (out / "bandit.md").write_text(markdown(res))
    return res


def bandit(
    out: Path = typer.Option(Path("evals/results"), help="where bandit.json and bandit.md go"),
    seeds: int = typer.Option(10, help="seeds (0..N-1)"),
    requests: int = typer.Option(2000, help="requests (each fed back at once) per run"),
    drift_at: int = typer.Option(1000, help="the request at which the router's pick degrades"),
    store: str = typer.Option("sqlite", help="the statistics store: sqlite (a temporary file) or redis"),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", help="with --store redis (keys under a prefix of the run's own, deleted after)"),
    variants: bool = typer.Option(True, help="also run the bandit without discounting and without the exploration cap"),
) -> None:
    """The bandit (the service's defaults) against the fixed router on simulated experts, one of which silently
    degrades: regret and the feedback events it takes to move traffic, over several seeds."""
    from coe.core.settings import Settings

    if store not in ("sqlite", "redis"):
        raise typer.BadParameter("store: sqlite or redis")
    d = Settings()
    default = Policy("bandit (service defaults)", True, d.bandit_prior_strength, d.bandit_half_life,
                     d.bandit_explore_cap, d.bandit_window_s)
    policies = [Policy("fixed router", bandit=False), default]
    if variants:
        policies += [Policy("bandit, no discounting", True, default.prior_strength, float("inf"), default.explore_cap),
                     Policy("bandit, no exploration cap", True, default.prior_strength, default.half_life, 1.0)]
    import sys

    command = "coe bench bandit " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "coe bench bandit"
    res = bench_bandit(out, list(range(seeds)), Scenario(requests=requests, drift_at=drift_at), policies, store,
                       redis_url if store == "redis" else None, command.strip(), log=typer.echo)
    typer.echo((out / "bandit.md").read_text())
    typer.echo(f"wrote {out}/bandit.json and bandit.md in {res['seconds']} s")
