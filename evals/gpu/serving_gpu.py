"""Serving on a GPU through the project's own Worker + Scheduler + vllm engine (no API, in-process queue).

    python evals/gpu/serving_gpu.py --tokenizer TOKENIZER_FOLDER --out OUT_DIR [--quick]

No model hub is reachable on the device, so the experts are built here: config.json
of real architectures and sizes (Qwen2.5-0.5B, Llama-3.2-1B, Qwen2.5-1.5B layer
shapes) with RANDOM bf16 weights (each expert its own file, its own seed), and a
small real tokenizer (SmolLM2's) whose vocabulary (49,152) replaces the models'
own, so the embedding matrices are smaller than the originals'. Speed depends on
shapes, not on values; answers are noise.

Phases, each written to OUT_DIR/gpu-serving.json as soon as it ends:
  switch      one expert started with vLLM's defaults (torch.compile + CUDA graphs),
              then sleep/wake cycles: engine start vs wake-from-sleep.
  prime       every expert started once through the worker (cold starts, timed),
              the least recently used put to sleep as the memory budget demands.
  grouped     the request stream served with policy 'grouped'.
  throughput  per architecture: one batch through the worker (submit to last
              result) vs the same prompts through the bare vLLM engine (llm.generate).
  fcfs        the same request stream with policy 'fcfs' (last: the slowest).
vLLM starts its engine core with 'spawn', which re-imports the main module: all
work happens under the __main__ guard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from checkout import use_this_checkout  # a sibling: these scripts run as plain files




# Eight experts that do not all fit: memory_gb sums to 80 GB on a card of about 79 GB, budget 30 GB.
EXPERTS = [("qwen2.5-0.5b", 8.0)] * 4 + [("llama-3.2-1b", 12.0)] * 2 + [("qwen2.5-1.5b", 12.0)] * 2


RESULT_NAME = ["gpu-serving"]


def write_json(out: Path, report: dict) -> None:
    (out / f"{RESULT_NAME[0]}.json").write_text(json.dumps(report, indent=2) + "\n")


def log(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def chat(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question {i}: explain, step by step, how a bicycle stays upright."}]


async def throughput(worker, key: str, expert: str, batch: int, max_tokens: int, repeats: int) -> dict:
    """One batch of `batch` chats: through the worker (submit to last result) vs the bare AsyncLLM, alternating."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    from workers.jobs import GenerationRequest, Job
    from workers.queue_memory import MemoryQueue

    engine = worker.engines[key]
    reqs = [GenerationRequest(messages=chat(i), max_tokens=max_tokens, temperature=0.0) for i in range(batch)]
    prompts = [{"prompt_token_ids": engine.prompt_ids(r.messages)} for r in reqs]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)
    for r in reqs:
        r.stop = []
    rows = {"worker": [], "bare": []}

    async def via_worker() -> tuple[float, int]:
        queue = MemoryQueue()
        worker.queue = queue
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        t0 = time.perf_counter()
        jobs = [Job(expert=expert, request=r) for r in reqs]
        for j in jobs:
            await queue.submit(j)
        results = [await queue.wait_result(j.id, 600) for j in jobs]
        dt = time.perf_counter() - t0
        stop.set()
        await task
        return dt, sum(r.completion.completion_tokens for r in results if r.ok)

    await via_worker()  # makes the expert resident; not timed
    async def bare_batch() -> tuple[float, int]:  # on the engine's own loop, where its AsyncLLM lives
        async def one(i: int, prompt: dict) -> int:
            async for out in engine.llm.generate(prompt, params, f"bare-{time.time_ns()}-{i}"):
                last = out
            return len(last.outputs[0].token_ids)

        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
        return time.perf_counter() - t0, tokens

    def bare() -> tuple[float, int]:
        return engine.runner.call(bare_batch())

    for r in range(repeats):  # alternate which side goes first
        if r % 2:
            rows["bare"].append(bare())
            rows["worker"].append(await via_worker())
        else:
            rows["worker"].append(await via_worker())
            rows["bare"].append(bare())
    res = {}
    for k, v in rows.items():
        tps = [t / d for d, t in v]
        res[k] = {"tokens_per_s_median": round(statistics.median(tps), 1), "runs": [(round(d, 3), t) for d, t in v]}
    res["worker_vs_bare"] = round(res["worker"]["tokens_per_s_median"] / res["bare"]["tokens_per_s_median"], 3)
    res["loss_pct"] = round(100 * (1 - res["worker_vs_bare"]), 1)
    res["batch"], res["max_tokens"] = batch, max_tokens
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path("/tmp/coe-models"))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--budget-gb", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--skip", default="", help="comma-separated phases to skip")
    ap.add_argument("--engine-args", default='{"enforce_eager": true, "max_model_len": 2048}',
                    help="vLLM arguments (JSON) for the worker's engines (the switch phase also runs vLLM's defaults)")
    ap.add_argument("--archs", default="", help="comma-separated architectures: one expert of each instead of the eight")
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per side in the throughput phase")
    ap.add_argument("--cpu-local", action="store_true", help="dry run of the driver logic on CPU with the local engine")
    ap.add_argument("--name", default="gpu-serving", help="file stem of the JSON written to --out")
    args = ap.parse_args()
    RESULT_NAME[0] = args.name
    experts = [(a, m) for a, m in EXPERTS if not args.archs or a in args.archs.split(",")]
    if args.archs:
        experts = list({a: (a, m) for a, m in experts}.values())
    use_this_checkout()
    from coe_evals.bench_serving import evict_all, instrument, make_workload, run_policy, write_experts_file
    from coe_evals.gpu.gpu_models import build_model

    args.out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"note": "random bf16 weights of real layer shapes; SmolLM2 tokenizer (vocab 49152) replaces each model's vocabulary",
                    "command": " ".join(sys.argv), "phases": {}}
    engine = "local" if args.cpu_local else "vllm"
    device = "cpu" if args.cpu_local else "gpu:0"
    if not args.cpu_local:
        import torch

        import vllm

        report["device"] = torch.cuda.get_device_name(0)
        report["gpu_total_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        report["versions"] = {"vllm": vllm.__version__, "torch": torch.__version__}
        report["engine_args"] = json.loads(args.engine_args)

    # ---- models
    t0 = time.perf_counter()
    folders, experts_meta = [], []
    for i, (arch, mem) in enumerate(experts):
        folder = args.models / f"expert-{i:02d}-{arch}"
        if args.cpu_local:
            folders.append(args.tokenizer)  # the real SmolLM2 folder: only the logic is under test
            experts_meta.append({"arch": "smollm2-135m", "memory_gb": 1.0})
            continue
        meta = build_model(folder, arch, args.tokenizer, seed=1000 + i)
        meta["memory_gb"] = mem
        folders.append(folder)
        experts_meta.append(meta)
    report["experts"] = experts_meta
    report["build_s"] = round(time.perf_counter() - t0, 1)
    log(f"models built in {report['build_s']}s")
    write_json(args.out, report)

    # ---- switch: vLLM defaults (compile + CUDA graphs) start vs wake
    if "switch" not in skip and not args.cpu_local:
        from workers.engines.base import EngineSpec
        from workers.engines.vllm import VllmEngine
        from workers.jobs import GenerationRequest

        res = {}
        # the second start of the same model finds torch.compile's cache warm; the eager start is measured in 'prime'
        for label, extra in (("defaults", {"max_model_len": 2048}), ("defaults-warm-compile-cache", {"max_model_len": 2048})):
            spec = EngineSpec(key=f"switch-{label}", engine="vllm", model=str(folders[0]), model_path=str(folders[0]),
                              device="gpu:0", memory_gb=8.0, max_batch=64)
            eng = VllmEngine(spec, **extra)
            t = time.perf_counter(); eng.load(); start_s = time.perf_counter() - t
            eng.generate([GenerationRequest(messages=chat(0), max_tokens=8, temperature=0.0)])
            sleeps, wakes = [], []
            for _ in range(3):
                t = time.perf_counter(); eng.sleep(); sleeps.append(time.perf_counter() - t)
                t = time.perf_counter(); eng.wake(); wakes.append(time.perf_counter() - t)
                eng.generate([GenerationRequest(messages=chat(1), max_tokens=4, temperature=0.0)])
            eng.unload()
            res[label] = {"engine_start_s": round(start_s, 2), "sleep_s": [round(x, 3) for x in sleeps],
                          "wake_s": [round(x, 3) for x in wakes],
                          "start_over_wake_median": round(start_s / statistics.median(wakes), 1)}
            log(f"switch {label}: {res[label]}")
            report["phases"]["switch"] = res
            write_json(args.out, report)

    # ---- the worker with eight experts
    import yaml

    from coe.core.registry import load_registry

    work = args.models / "registry"
    work.mkdir(parents=True, exist_ok=True)
    path = write_experts_file(work, folders, engine=engine, device=device, memory_gb=1.0, max_batch=64)
    spec = yaml.safe_load(path.read_text())
    for e, meta in zip(spec["experts"], experts_meta):
        e["memory_gb"] = meta["memory_gb"]
        if args.cpu_local:
            e["model"] = str(args.tokenizer)
            e["name"] = e["name"]
    if args.cpu_local:  # one folder for all: make the weights keys differ through symlinked folders
        for i, e in enumerate(spec["experts"]):
            d = work / f"m{i}"
            d.mkdir(exist_ok=True)
            for f in args.tokenizer.iterdir():
                if f.is_file() and not (d / f.name).exists():
                    (d / f.name).symlink_to(f.resolve())
            e["model"] = str(d)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    registry = load_registry(path)
    names = list(registry.experts)
    budget = 2.0 if args.cpu_local else args.budget_gb
    report["budget_gb"] = budget
    report["memory_gb_total"] = sum(m["memory_gb"] for m in experts_meta)

    async def phases() -> None:
        # prime: start every engine once (cold starts), one request each, grouped
        prime = make_workload(names, len(names), arrival="burst", seed=1)
        for i, a in enumerate(prime):
            a.expert = names[i]
        from workers.engines.base import EngineOptions

        options = EngineOptions(vllm_args=json.loads(args.engine_args))
        res, worker = await run_policy(registry, prime, "grouped", budget, device=device, max_tokens=4,
                                       worker_kwargs={"engine_options": options})
        loads = [t for k, _, t in instrument(worker) if k == "load"]
        report["phases"]["prime"] = {"engine_starts_s": [round(x, 2) for x in loads], "result": asdict(res)}
        log(f"prime: starts {report['phases']['prime']['engine_starts_s']}")
        write_json(args.out, report)
        stream = make_workload(names, args.requests, 1.0, "poisson", args.rate, seed=0)
        report["mix"] = {n: sum(a.expert == n for a in stream) for n in names}
        for policy in [p for p in ("grouped", "throughput", "fcfs") if p not in skip]:
            if policy == "throughput":
                tp = {}
                seen = set()
                for i, (arch, _) in enumerate(experts):
                    if arch in seen:
                        continue
                    seen.add(arch)
                    key = registry.experts[names[i]].weights_key
                    if args.cpu_local:
                        continue
                    tp[arch] = await throughput(worker, key, names[i], batch=64, max_tokens=128, repeats=args.repeats)
                    log(f"throughput {arch}: {tp[arch]}")
                    report["phases"]["throughput"] = tp
                    write_json(args.out, report)
                continue
            evict_all(worker)
            res, worker = await run_policy(registry, stream, policy, budget, device=device, max_tokens=args.max_tokens,
                                           reuse_worker=worker)
            report["phases"][policy] = asdict(res)
            log(f"{policy}: wall {res.wall_s}s switches {res.switches} ({res.loads} loads, {res.wakes} wakes) "
                f"batches {res.batches} tok/s {res.tokens_per_s} p50 {res.p50_latency_s} p99 {res.p99_latency_s} "
                f"errors {res.errors} actions {res.actions}")
            write_json(args.out, report)
        g, f = report["phases"].get("grouped"), report["phases"].get("fcfs")
        if g and f:
            report["grouped_speedup_wall"] = round(f["wall_s"] / g["wall_s"], 2)
            log(f"grouped vs fcfs: {report['grouped_speedup_wall']}x")
        write_json(args.out, report)
        for key, eng in worker.engines.items():
            eng.unload()

    asyncio.run(phases())
    log("done")


if __name__ == "__main__":
    main()
