"""coe against the vLLM-only deployments a user would run, on one GPU, with the same request streams.

    python evals/gpu/vs_vllm.py --tokenizer TOKENIZER_FOLDER --out OUT_DIR [--phases fit,shortage,dedicated]
    python evals/gpu/vs_vllm.py --stand-in --quick --out OUT_DIR     (the whole path on a CPU, no vLLM)

Experts: real-sized models (1-8B layer shapes, random bf16 weights; vs_setup.py), more than the GPU holds
even with its memory split between them. The streams: Poisson arrivals, a skewed (Zipf) mix whose hot
set turns every third of the stream, every client streaming. Served by
  vllm  one AsyncLLM per model, each request straight to it (direct_vllm.py): `split` when the models fit
        (each its memory share, all awake), else `switching` (our queue-aware sleep/wake policy);
  coe   the real Worker (continuous loop, residency scheduler) over the in-process queue, its vllm
        engines on AsyncLLM.
Phases, each `--repeats` times (both systems on the same stream in a repeat, the order alternating):
  fit        the experts that fit, all awake: coe against `split`;
  shortage   all experts, those that fit awake at the start: coe against `switching`;
  dedicated  the smallest expert alone (and real SmolLM2-135M weights with --real-model): TTFT.
Measured per run: steady tokens/s (after the warm-up, to the end of the arrivals) and makespan tokens/s, TTFT and
latency p50/p99, switches and the seconds inside sleep/wake calls (timed alike on both sides), GPU memory
in use; per phase, the median and spread over repeats (repeats.py). OUT_DIR/<name>.json is rewritten
after every run (runs that would overrun --time-limit are skipped and listed), OUT_DIR/<name>.md at the
end (vs_report.py). vLLM starts its engine cores with 'spawn', which re-imports this module: all work
happens under the __main__ guard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from checkout import use_this_checkout  # a sibling: these scripts run as plain files

T0 = time.perf_counter()
PHASES = ("fit", "shortage", "dedicated")


@dataclass(frozen=True)
class Stream:
    duration_s: float
    rate: float  # arrivals per second
    max_tokens: int


MODES = {
    "quick": {"fit": Stream(8, 30.0, 64), "shortage": Stream(8, 20.0, 64), "dedicated": Stream(6, 15.0, 64),
              "timeout_s": 60.0, "time_limit_s": 540.0},
    "full": {"fit": Stream(20, 40.0, 128), "shortage": Stream(24, 24.0, 128), "dedicated": Stream(12, 20.0, 128),
             "timeout_s": 90.0, "time_limit_s": 540.0},
}
EPOCHS = 3  # the hot set turns twice in a stream, each time by a third of the experts (rounded up)
WARMUP = 0.2  # of the stream's duration, left out of the steady window
STAND_IN_SPEED = 4.0  # the stand-in is no GPU: streams 4 times shorter and denser, to prove the path quickly


def log(msg: str) -> None:
    print(f"[vs-vllm {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Report:
    def __init__(self, path: Path, head: dict):
        self.path = path
        self.data = {**head, "command": " ".join(sys.argv), "phases": {}, "errors": {}, "skipped": []}

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - T0, 1)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")

    def error(self, name: str, exc: BaseException) -> None:
        self.data["errors"][name] = "".join(traceback.format_exception(exc))[-3000:]
        log(f"{name} FAILED: {type(exc).__name__}: {exc}")
        self.save()


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, help="folder with SmolLM2's tokenizer files (not needed with --stand-in)")
    ap.add_argument("--real-model", type=Path, help="folder of real SmolLM2-135M weights (parts are joined)")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    ap.add_argument("--repeats", type=int, default=3, help="runs per phase and system, order alternating")
    ap.add_argument("--quick", action="store_true", help="short streams (8 s instead of 12-24 s)")
    ap.add_argument("--stand-in", action="store_true", help="a stand-in AsyncLLM instead of vLLM: the path on a CPU")
    ap.add_argument("--eager", action="store_true", help="enforce_eager on every engine (vLLM's default: CUDA graphs)")
    ap.add_argument("--engine-args", default='{"max_model_len": 2048}', help="more vLLM arguments, JSON")
    ap.add_argument("--max-batch", type=int, default=64, help="max_num_seqs of every engine")
    ap.add_argument("--gpu-gb", type=float, help="use only this much of the GPU (e.g. 79.1 on an H200: an H100's)")
    ap.add_argument("--max-wait", type=float, default=30.0, help="starvation limit (s), coe's and the baseline's")
    ap.add_argument("--work", type=Path, default=Path("/tmp/coe-vs-vllm"), help="built models (kept between calls)")
    ap.add_argument("--time-limit", type=float, help="seconds; runs that would end later are skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", help="file stem of the JSON and Markdown (default vs-vllm[-quick][-stand-in])")
    args = ap.parse_args()
    if not args.stand_in and args.tokenizer is None:
        ap.error("--tokenizer is needed to build the models (or use --stand-in)")
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not set(args.phases) <= set(PHASES):
        ap.error(f"--phases: of {', '.join(PHASES)}")
    args.engine_args = {**json.loads(args.engine_args), **({"enforce_eager": True} if args.eager else {})}
    return args


def environment(args) -> tuple[float, dict, object]:
    """GPU size, versions, and how GPU memory in use is read (None: from the awake engines, stand-in)."""
    if args.stand_in:
        from coe_evals.gpu import stand_in_vllm

        stand_in_vllm.install()
        stand_in = stand_in_vllm.AsyncLLM  # timed like a real engine, scaled down: a start costs 10 wakes
        stand_in.step_s, stand_in.start_s, stand_in.sleep_s, stand_in.wake_s = 0.004, 0.5, 0.1, 0.05
        import workers.engines.vllm as vllm_engine

        vllm_engine.gpu_total_gb = lambda index=0: 80.0
        return 80.0, {"vllm": "stand-in"}, None
    import torch
    import vllm

    from coe_evals.gpu.streams import gpu_used_gib

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    return total, {"vllm": vllm.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}, gpu_used_gib


@dataclass
class Phase:
    name: str
    experts: list[str]
    awake: set[str]
    budget_gb: float
    stream: Stream
    shift: int  # experts the hot set turns by at each epoch


def plan_phases(args, plan: dict, mode: dict, real: bool) -> list[Phase]:
    from coe_evals.gpu.vs_setup import REAL

    fit, every, budget, need = plan["fit"], list(plan["memory_gb"]), plan["budget_gb"], plan["memory_gb"]
    smallest = min(fit, key=need.get)
    phases = {
        "fit": [Phase("fit", fit, set(fit), budget, mode["fit"], -(-len(fit) // EPOCHS))],
        "shortage": [Phase("shortage", every, set(fit), budget, mode["shortage"], -(-len(every) // EPOCHS))],
        "dedicated": [Phase(f"dedicated-{n}", [n], {n}, need.get(n, need[smallest]), mode["dedicated"], 0)
                      for n in [smallest] + ([REAL] if real else [])],
    }
    return [p for name in args.phases for p in phases[name]]


async def run_vllm(setup, phase: Phase, arrivals, timeout: float, read, max_wait: float) -> dict:
    from coe_evals.gpu.direct_vllm import VllmOnly
    from coe_evals.gpu.shared_engines import SwitchClock, lend
    from coe_evals.gpu.streams import MemorySampler, replay, summarize

    clock = SwitchClock()
    direct = VllmOnly(lend({n: setup.engines[n] for n in phase.experts}, clock), setup.memory_gb, phase.budget_gb,
                      max_wait)
    with MemorySampler(read) as memory:
        outcomes, wall = await replay(arrivals, direct.sender(phase.stream.max_tokens), timeout)
        await direct.close()
    return summarize(outcomes, wall, window(phase), policy=direct.policy, **clock.report(), **memory.report())


async def run_coe(setup, phase: Phase, arrivals, timeout: float, read, max_wait: float) -> dict:
    from coe_evals.gpu.shared_engines import SwitchClock, lend
    from coe_evals.gpu.streams import MemorySampler, coe_sender, replay, summarize
    from coe_evals.gpu.vs_setup import coe_worker
    from workers.queue_memory import MemoryQueue

    clock, queue = SwitchClock(), MemoryQueue()
    worker = coe_worker(setup.registry, lend({n: setup.engines[n] for n in phase.experts}, clock), phase.budget_gb, queue)
    worker.scheduler.max_wait_s = max_wait
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))
    try:
        with MemorySampler(read) as memory:
            outcomes, wall = await replay(arrivals, coe_sender(queue, phase.stream.max_tokens, timeout), timeout)
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout)
    return summarize(outcomes, wall, window(phase), policy="coe", **clock.report(),
                     claim_rounds=worker.scheduler.stats.batches, **memory.report())


def window(phase: Phase) -> tuple[float, float]:
    return WARMUP * phase.stream.duration_s, phase.stream.duration_s


async def repeat(setup, phase: Phase, seed: int, coe_first: bool, timeout: float, read, max_wait: float) -> dict:
    """Both systems on one stream over the phase's experts, each starting from the phase's residency."""
    from coe_evals.gpu.streams import compare
    from coe_evals.gpu.vs_setup import set_residency
    from coe_evals.workload import make_shifting_workload

    s = phase.stream
    arrivals = make_shifting_workload(phase.experts, s.duration_s, s.rate, EPOCHS, phase.shift, seed=seed)
    out = {"seed": seed, "order": ["coe", "vllm"] if coe_first else ["vllm", "coe"], "requests": len(arrivals),
           "mix": {n: sum(a.expert == n for a in arrivals) for n in phase.experts}}
    for system in out["order"]:
        await asyncio.to_thread(set_residency, setup.engines, phase.awake)
        before = {n: e.llm for n, e in setup.engines.items()}
        run = run_coe if system == "coe" else run_vllm
        r = out[system] = await run(setup, phase, arrivals, timeout, read, max_wait)
        r["engines_started"] = sum(e.llm is not None and e.llm is not before[n] for n, e in setup.engines.items())
        r["engines_unloaded"] = sum(before[n] is not None and e.llm is None for n, e in setup.engines.items())
        log(f"  {system} ({r['policy']}): steady {r['steady_tokens_per_s']} tok/s, makespan {r['makespan_tokens_per_s']}, "
            f"ttft p50 {r['ttft_p50_s']} p99 {r['ttft_p99_s']}, latency p50 {r['latency_p50_s']} p99 {r['latency_p99_s']}, "
            f"switches {r['switches']} ({r['switch_s']}s), errors {r['errors']}, gpu peak {r['gpu_used_gib_peak']} GiB")
    out["compare"] = compare(out["vllm"], out["coe"])
    return out


def real_sample(engine) -> dict:
    """What the real SmolLM2 answers (greedy) through coe's engine: the weights and the chat template work."""
    from workers.jobs import GenerationRequest

    engine.wake()
    q = "What is the capital of France? Answer in one word."
    out = engine.generate([GenerationRequest(messages=[{"role": "user", "content": q}], max_tokens=12, temperature=0.0)])[0]
    return {"question": q, "answer": out.text, "completion_tokens": out.completion_tokens}


def main() -> None:
    args = parse()
    use_this_checkout()
    from coe_evals.gpu import vs_setup
    from coe_evals.gpu.repeats import summarize_repeats
    from coe_evals.gpu.vs_report import markdown

    mode = dict(MODES["quick" if args.quick else "full"])
    if args.stand_in:
        mode.update({k: Stream(v.duration_s / STAND_IN_SPEED, v.rate * STAND_IN_SPEED, v.max_tokens)
                     for k, v in mode.items() if isinstance(v, Stream)})
        args.max_wait /= STAND_IN_SPEED
    limit = args.time_limit or mode["time_limit_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    total_gb, versions, read = environment(args)
    plan = vs_setup.memory_plan(args.gpu_gb or total_gb, args.max_batch)
    name = args.name or "vs-vllm" + ("-quick" if args.quick else "") + ("-stand-in" if args.stand_in else "")
    report = Report(args.out / f"{name}.json", vs_setup.describe(args, total_gb, versions))
    report.data.update({"memory_plan": plan, "gpu_gb_used_for_plan": args.gpu_gb or round(total_gb, 1),
                        "time_limit_s": limit, "repeats": args.repeats, "max_wait_s": args.max_wait,
                        "warmup_fraction": WARMUP, "epochs": EPOCHS, "starts": []})
    log(f"{len(plan['memory_gb'])} experts need {plan['all_need_gb']} GB, {len(plan['fit'])} fit in "
        f"{plan['budget_gb']} GB (GPU {total_gb:.1f} GiB), {versions}")
    phases = plan_phases(args, plan, mode, args.real_model is not None)
    if "shortage" in args.phases and plan["all_need_gb"] <= plan["budget_gb"]:
        report.error("shortage", RuntimeError("every expert fits on this GPU: no shortage (use --gpu-gb)"))
        phases = [p for p in phases if p.name != "shortage"]
    try:
        real = vs_setup.assemble(args.real_model) if args.real_model else None
        folders, meta = vs_setup.build_folders(args.work, args.tokenizer, args.stand_in, log)
        from coe.core.registry import load_registry

        registry = load_registry(vs_setup.write_registry(args.work, folders, plan["memory_gb"], args.max_batch, real))
        needed = [n for n in registry.experts if any(n in p.experts for p in phases)]
        engines = vs_setup.start_engines(registry, needed, args.engine_args, log, report.data["starts"])
        setup = vs_setup.Setup(registry, engines, {n: e.memory_gb for n, e in registry.experts.items()}, meta)
        report.data["expert_models"] = meta
        report.save()
    except Exception as exc:
        report.error("setup", exc)
        raise SystemExit(1) from exc
    if read is None:
        def read() -> float:
            return sum(setup.memory_gb[n] for n, e in engines.items() if e.llm is not None and not e.asleep)

    async def run_all() -> None:
        for i, phase in enumerate(phases):
            s = phase.stream
            entry = report.data["phases"][phase.name] = {
                "experts": phase.experts, "awake_at_start": sorted(phase.awake), "budget_gb": phase.budget_gb,
                "memory_gb": {n: setup.memory_gb[n] for n in phase.experts}, "duration_s": s.duration_s,
                "rate_per_s": s.rate, "max_tokens": s.max_tokens, "hot_set_shift": phase.shift, "repeats": []}
            log(f"{phase.name}: {s.rate}/s for {s.duration_s}s over {len(phase.experts)} experts, budget {phase.budget_gb} GB")
            for r in range(args.repeats):
                if time.perf_counter() - T0 + 2 * (s.duration_s + 10) > limit:
                    report.data["skipped"].append(f"{phase.name} #{r}")
                    log(f"{phase.name} #{r}: skipped (would end after the {limit:.0f}s limit)")
                    continue
                try:
                    entry["repeats"].append(await repeat(setup, phase, args.seed + 100 * i + r, (i + r) % 2 == 0,
                                                         mode["timeout_s"], read, args.max_wait))
                except Exception as exc:
                    report.error(f"{phase.name} #{r}", exc)
                entry["summary"] = summarize_repeats(entry["repeats"])
                report.save()

    asyncio.run(run_all())
    if real:
        try:
            report.data["real_model_sample"] = real_sample(engines[vs_setup.REAL])
        except Exception as exc:
            report.error("real_model_sample", exc)
    report.save()
    report.path.with_suffix(".md").write_text(markdown(report.data))
    t0 = time.perf_counter()
    for e in engines.values():
        if time.perf_counter() - T0 < limit + 30:  # past it, the device call's own limit is near: leave them
            e.unload()
    report.data["shutdown_s"] = round(time.perf_counter() - t0, 1)
    report.save()
    log(f"done: {report.path}")


if __name__ == "__main__":
    main()
