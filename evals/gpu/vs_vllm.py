"""coe against vLLM as a user would deploy it, on one GPU, with the same request stream.

    python evals/gpu/vs_vllm.py --tokenizer TOKENIZER_FOLDER --out OUT_DIR [--quick] [--real-model FOLDER]
    python evals/gpu/vs_vllm.py --stand-in --quick --out OUT_DIR     (the plumbing, on a CPU, no vLLM)

The stream: Zipf popularity over the experts, Poisson arrivals, every client streaming (time to first
token, latency to the last, completion tokens/s over the wall time). Served by
  vllm  one AsyncLLM per model, each request straight to its model (direct_vllm.py): all awake when
        they fit; when they do not, wake the model a request needs and sleep the least recently used;
  coe   the real Worker (continuous loop, residency scheduler) over the in-process queue, its vllm
        engines on AsyncLLM.
Phases (each system in turn, on the same engine processes, order alternating between phases):
  fit        the models that fit, all awake;
  oversub    twice as many models as fit (memory budget for half), starting with the first half awake;
  dedicated  one model alone, awake: TTFT of a dedicated vLLM engine vs coe's async engine on it
             (also on real SmolLM2-135M weights when --real-model is given).
Reported per system: tokens/s, TTFT and latency p50/p99, switches, GPU memory in use (peak, mean).
The JSON (OUT_DIR/<name>.json) is rewritten after every phase; a phase that fails is recorded and the
next one runs; phases that would overrun --time-limit are skipped. vLLM starts its engine cores with
'spawn', which re-imports this module: all work happens under the __main__ guard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from pathlib import Path

from checkout import use_this_checkout  # a sibling: these scripts run as plain files

T0 = time.perf_counter()

MODES = {  # requests, arrivals/s, max_tokens, per phase; timeout per run
    "quick": {"dedicated": (60, 15.0, 64), "fit": (120, 30.0, 64), "oversub": (120, 30.0, 64), "timeout_s": 60.0,
              "time_limit_s": 230.0},
    "full": {"dedicated": (150, 20.0, 128), "fit": (300, 40.0, 128), "oversub": (300, 40.0, 128), "timeout_s": 90.0,
             "time_limit_s": 520.0},
}


STAND_IN_SPEED = 4.0




def log(msg: str) -> None:
    print(f"[vs-vllm {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Report:
    def __init__(self, path: Path, head: dict):
        self.path, self.data = path, {**head, "command": " ".join(sys.argv), "phases": {}, "errors": {}, "skipped": []}

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - T0, 1)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")

    def phase(self, name: str, value) -> None:
        self.data["phases"][name] = value
        self.save()

    def error(self, name: str, exc: BaseException) -> None:
        self.data["errors"][name] = "".join(traceback.format_exception(exc))[-3000:]
        log(f"{name} FAILED: {type(exc).__name__}: {exc}")
        self.save()


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, help="folder with SmolLM2's tokenizer files (not needed with --stand-in)")
    ap.add_argument("--real-model", type=Path, help="folder of real SmolLM2-135M weights (parts are joined)")
    ap.add_argument("--quick", action="store_true", help="4 experts (2 fit), short streams: under 4 minutes")
    ap.add_argument("--stand-in", action="store_true", help="a stand-in AsyncLLM instead of vLLM: the plumbing on a CPU")
    ap.add_argument("--work", type=Path, default=Path("/tmp/coe-vs-vllm"))
    ap.add_argument("--engine-args", default='{"enforce_eager": true, "max_model_len": 2048}', help="vLLM arguments, JSON")
    ap.add_argument("--max-batch", type=int, default=64, help="max_num_seqs of every engine")
    ap.add_argument("--time-limit", type=float, help="seconds; phases that would end later are skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", help="file stem of the JSON (default vs-vllm[-quick][-stand-in])")
    args = ap.parse_args()
    if not args.stand_in and args.tokenizer is None:
        ap.error("--tokenizer is needed to build the models (or use --stand-in)")
    return args


def environment(args) -> tuple[float, dict, object]:
    """GPU size, versions, and how GPU memory in use is read."""
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


async def run_vllm(setup, names: list[str], budget: float, arrivals, max_tokens: int, timeout: float, read) -> dict:
    from coe_evals.gpu.direct_vllm import DirectVllm
    from coe_evals.gpu.streams import MemorySampler, replay, summarize

    direct = DirectVllm({n: setup.engines[n] for n in names}, setup.memory_gb, budget)
    with MemorySampler(read) as memory:
        outcomes, wall = await replay(arrivals, direct.sender(max_tokens), timeout)
    return summarize(outcomes, wall, **direct.report(), **memory.report())


async def run_coe(setup, budget: float, arrivals, max_tokens: int, timeout: float, read) -> dict:
    from coe_evals.gpu.streams import MemorySampler, coe_sender, replay, summarize
    from coe_evals.gpu.vs_setup import coe_worker
    from workers.queue_memory import MemoryQueue

    queue = MemoryQueue()
    worker = coe_worker(setup.registry, setup.engines, budget, queue)
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))
    try:
        with MemorySampler(read) as memory:
            outcomes, wall = await replay(arrivals, coe_sender(queue, max_tokens, timeout), timeout)
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout)
    st = worker.scheduler.stats
    return summarize(outcomes, wall, switches=st.switches, wakes=st.wakes, loads=st.loads, sleeps=st.evictions,
                     switch_s=round(st.switch_seconds, 3), claim_rounds=st.batches,
                     max_wait_s=worker.scheduler.max_wait_s, **memory.report())


async def pair(setup, names: list[str], awake: set[str], budget: float, spec: tuple, seed: int, timeout: float,
               read, coe_first: bool) -> dict:
    """Both systems on the same stream over `names`, each starting with `awake` awake."""
    from coe_evals.gpu.streams import compare
    from coe_evals.gpu.vs_setup import set_residency
    from coe_evals.workload import make_workload

    requests, rate, max_tokens = spec
    arrivals = make_workload(names, requests, 1.0, "poisson", rate, seed)
    out = {"experts": names, "awake_at_start": sorted(awake), "budget_gb": budget, "requests": requests,
           "rate_per_s": rate, "max_tokens": max_tokens, "mix": {n: sum(a.expert == n for a in arrivals) for n in names}}
    for system in (("coe", "vllm") if coe_first else ("vllm", "coe")):
        await asyncio.to_thread(set_residency, setup.engines, awake)
        before = {n: e.llm for n, e in setup.engines.items()}
        run = run_coe(setup, budget, arrivals, max_tokens, timeout, read) if system == "coe" else \
            run_vllm(setup, names, budget, arrivals, max_tokens, timeout, read)
        out[system] = await run
        out[system]["engines_started"] = sum(e.llm is not None and e.llm is not before[n] for n, e in setup.engines.items())
        out[system]["engines_unloaded"] = sum(before[n] is not None and e.llm is None for n, e in setup.engines.items())
        r = out[system]
        log(f"  {system}: {r['tokens_per_s']} tok/s, ttft p50 {r['ttft_p50_s']} p99 {r['ttft_p99_s']}, latency p50 "
            f"{r['latency_p50_s']} p99 {r['latency_p99_s']}, switches {r['switches']}, errors {r['errors']}, "
            f"gpu peak {r['gpu_used_gib_peak']} GiB")
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

    mode = dict(MODES["quick" if args.quick else "full"])
    if args.stand_in:  # the stand-in is no GPU: arrivals come STAND_IN_SPEED times faster, to test the plumbing quickly
        mode.update({k: (v[0], v[1] * STAND_IN_SPEED, v[2]) for k, v in mode.items() if isinstance(v, tuple)})
    limit = args.time_limit or mode["time_limit_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    total_gb, versions, read = environment(args)
    archs = vs_setup.QUICK_ARCHS if args.quick else vs_setup.FULL_ARCHS
    fit = len(archs) // 2
    mem = vs_setup.memory_per_expert(total_gb, fit)
    name = args.name or "vs-vllm" + ("-quick" if args.quick else "") + ("-stand-in" if args.stand_in else "")
    report = Report(args.out / f"{name}.json", vs_setup.describe(args, total_gb, versions))
    report.data.update({"memory_gb_per_expert": mem, "fit": fit, "experts": len(archs), "time_limit_s": limit})
    log(f"{len(archs)} experts ({fit} fit), {mem} GB each, GPU {total_gb:.1f} GiB, {versions}")
    try:
        real = vs_setup.assemble(args.real_model) if args.real_model else None
        folders, meta = vs_setup.build_folders(args.work, archs, args.tokenizer, args.stand_in, log)
        from coe.core.registry import load_registry

        registry = load_registry(vs_setup.write_registry(args.work, folders, mem, args.max_batch, real))
        starts: list = []
        report.phase("start", starts)
        engines = vs_setup.start_engines(registry, json.loads(args.engine_args), fit, log, starts)
        setup = vs_setup.Setup(registry, engines, {n: e.memory_gb for n, e in registry.experts.items()}, meta)
        report.data["expert_models"] = meta
        report.phase("start", starts)
    except Exception as exc:
        report.error("setup", exc)
        raise SystemExit(1) from exc
    if read is None:  # stand-in: what the awake engines were given
        def read() -> float:
            return sum(setup.memory_gb[n] for n, e in engines.items() if e.llm is not None and not e.asleep)

    names = [n for n in registry.experts if n != vs_setup.REAL]
    phases = [("fit", names[:fit], set(names[:fit]), fit * mem, mode["fit"]),
              ("oversub", names, set(names[:fit]), fit * mem, mode["oversub"])]
    phases += [(f"dedicated-{n}", [n], {n}, mem, mode["dedicated"]) for n in [names[0]] + ([vs_setup.REAL] if real else [])]

    async def run_all() -> None:
        for i, (phase, experts, awake, budget, spec) in enumerate(phases):
            needed = 2 * (spec[0] / spec[1] + 5)  # both systems: the arrivals, then the last answers
            if time.perf_counter() - T0 + needed > limit:
                report.data["skipped"].append(phase)
                log(f"{phase}: skipped (would end after the {limit:.0f}s limit)")
                continue
            log(f"{phase}: {spec[0]} requests at {spec[1]}/s over {len(experts)} experts, budget {budget} GB")
            try:
                report.phase(phase, await pair(setup, experts, awake, budget, spec, args.seed + i, mode["timeout_s"],
                                               read, coe_first=i % 2 == 0))
            except Exception as exc:
                report.error(phase, exc)

    asyncio.run(run_all())
    if real:
        try:
            report.data["real_model_sample"] = real_sample(engines[vs_setup.REAL])
        except Exception as exc:
            report.error("real_model_sample", exc)
    t0 = time.perf_counter()
    for e in engines.values():
        if time.perf_counter() - T0 < limit + 25:
            e.unload()
    report.data["shutdown_s"] = round(time.perf_counter() - t0, 1)
    report.save()
    log(f"done: {report.path}")


if __name__ == "__main__":
    main()
