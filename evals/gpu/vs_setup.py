"""Set-up for evals/gpu/vs_vllm.py: the experts (built, or stand-ins), their memory, registry and shared engines.

The experts are real-sized models (Llama-3.1-8B, Qwen2.5-3B, Llama-3.2-3B/1B, Qwen2.5-1.5B layer shapes,
random bf16 weights, gpu_models.py), more of them than one GPU holds even with its memory split between
them. Each expert gets the memory it needs (`gpu_models.memory_need_gb`: weights, a KV cache for its whole
batch of this benchmark's requests, activations and graphs), which is also its share in the memory split:
more would be KV cache this stream never fills. `fit`: the longest prefix of MODELS whose needs add up
to what the GPU can give (`usable_gb`).

One vllm engine (coe's `VllmEngine`: an AsyncLLM on its own event loop) per expert, started once, one
after the other, each put to sleep after its warm-up request (so the next one starts with the GPU
free); `set_residency` then sets who is awake before every run. Both systems run on these engine
processes, borrowed (shared_engines.py): coe through its Worker, vLLM directly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

MODELS = ["llama-3.1-8b", "qwen2.5-3b", "llama-3.2-3b", "qwen2.5-1.5b", "llama-3.2-1b",
          "llama-3.1-8b", "llama-3.2-3b", "qwen2.5-1.5b"]
"""expert-00 ... expert-07, in this order; an architecture that comes twice is built once (disk: about 31 GB)."""
REAL = "smollm2-real"
TOKENS_PER_REQUEST = 320
"""KV cache each engine is sized for: max_num_seqs (its batch) requests of up to this many tokens (prompt and
answer: the stream's prompts are under 60 tokens, its answers at most 128)."""
GPU_SHARE = 0.9
ASLEEP_GB = 1.5
"""What an engine keeps on the GPU while asleep (CUDA context, CUDA graph pool, buffers outside vLLM's sleep pool):
an estimate. The previous run (3bb2f16, enforce_eager) had 24.95 GiB in use with one 16 GB engine awake and
eight asleep, about 1 GB each; CUDA graphs add their pool. Each run records the GPU memory really in use."""


@dataclass
class Setup:
    registry: object
    engines: dict  # expert name -> started VllmEngine
    memory_gb: dict[str, float]
    meta: list[dict] = field(default_factory=list)


def usable_gb(total_gb: float, engines: int) -> float:
    """Memory the awake engines may take: GPU_SHARE of the GPU less what the sleeping ones keep."""
    return round(GPU_SHARE * total_gb - ASLEEP_GB * engines, 1)


def memory_plan(total_gb: float, max_batch: int) -> dict:
    """Each expert's memory, the budget, and which experts fit awake at once."""
    from coe_evals.gpu.gpu_models import memory_need_gb

    need = {f"expert-{i:02d}": memory_need_gb(arch, max_batch * TOKENS_PER_REQUEST) for i, arch in enumerate(MODELS)}
    budget = usable_gb(total_gb, len(MODELS))
    fit, used = [], 0.0
    for name, gb in need.items():
        if used + gb > budget:
            break
        fit.append(name)
        used += gb
    return {"memory_gb": need, "budget_gb": budget, "fit": fit, "all_need_gb": sum(need.values()),
            "archs": dict(zip(need, MODELS))}


def assemble(folder: Path) -> Path:
    """A carried model folder whose weights came in parts: join them (checked against model.safetensors.sha256)."""
    parts = sorted(folder.glob("model.safetensors.part.*"))
    target = folder / "model.safetensors"
    if parts and not target.exists():
        with target.open("wb") as out:
            for p in parts:
                out.write(p.read_bytes())
        want = folder / "model.safetensors.sha256"
        if want.exists() and hashlib.sha256(target.read_bytes()).hexdigest() != want.read_text().split()[0]:
            target.unlink()
            raise RuntimeError(f"{folder}: the joined weights do not match model.safetensors.sha256")
    if not target.exists():
        raise RuntimeError(f"{folder}: no model.safetensors (nor parts of it)")
    return folder


def build_folders(work: Path, tokenizer: Path | None, stand_in: bool, log) -> tuple[list[Path], list[dict]]:
    """One folder per expert of MODELS; one random-weight build per architecture (kept in `work` for the next
    call on the same machine), the other experts link to it."""
    from coe_evals.gpu.gpu_models import build_model, link_model, params

    folders, meta, seeds = [], [], {}
    for i, arch in enumerate(MODELS):
        folder = work / "models" / f"expert-{i:02d}-{arch}"
        info = {"arch": arch, "params": params(arch), "bytes": 2 * params(arch)}
        if stand_in:
            folder.mkdir(parents=True, exist_ok=True)
            info["weights"] = "none (stand-in)"
        else:
            base = work / "models" / f"base-{arch}"
            seeds.setdefault(arch, 1000 + len(seeds))
            if not (base / ".built").exists():  # a build cut short (the call's time ran out) is made again
                t0 = time.perf_counter()
                build_model(base, arch, tokenizer, seed=seeds[arch])
                (base / ".built").touch()
                log(f"built {arch} in {time.perf_counter() - t0:.1f}s")
            shutil.rmtree(folder, ignore_errors=True)
            link_model(base, folder)
        folders.append(folder)
        meta.append(info)
    return folders, meta


def write_registry(work: Path, folders: list[Path], memory_gb: dict[str, float], max_batch: int,
                   real_model: Path | None) -> Path:
    import yaml

    experts = [{"name": f"expert-{i:02d}", "engine": "vllm", "model": str(f), "device": "gpu:0",
                "memory_gb": memory_gb[f"expert-{i:02d}"], "max_batch": max_batch, "params_b": 1.0}
               for i, f in enumerate(folders)]
    if real_model is not None:
        experts.append({"name": REAL, "engine": "vllm", "model": str(real_model), "device": "gpu:0",
                        "memory_gb": min(memory_gb.values()), "max_batch": max_batch, "params_b": 0.135})
    path = work / "experts.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "experts": experts}, sort_keys=False))
    return path


def start_engines(registry, names: list[str], engine_args: dict, log, report_starts: list) -> dict:
    """The engines of `names`, started one after the other, each put to sleep after an untimed warm-up request."""
    from workers.engines import create_engine
    from workers.engines.base import EngineOptions
    from workers.worker import engine_spec

    options = EngineOptions(vllm_args=engine_args)
    engines = {}
    for name in names:
        engine = create_engine(engine_spec(registry, registry.experts[name], options))
        t0 = time.perf_counter()
        engine.load()
        start_s = time.perf_counter() - t0
        engine.generate([_warm_request()])
        t0 = time.perf_counter()
        engine.sleep()
        entry = {"expert": name, "start_s": round(start_s, 2), "first_sleep_s": round(time.perf_counter() - t0, 3)}
        report_starts.append(entry)
        log(f"started {name} in {start_s:.1f}s, asleep in {entry['first_sleep_s']}s")
        engines[name] = engine
    return engines


def _warm_request():
    from workers.jobs import GenerationRequest

    return GenerationRequest(messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0.0)


def set_residency(engines: dict, awake: set[str]) -> None:
    """Every engine started; those not in `awake` asleep (first, to free memory), those in it awake."""
    for name, e in engines.items():
        if name not in awake:
            if e.llm is None:
                e.load()
            e.sleep()
    for name in awake:
        engines[name].wake()


def coe_worker(registry, engines: dict, budget_gb: float, queue):
    """coe's Worker on gpu:0 over the borrowed engines of the run's experts, its scheduler told which are awake."""
    from coe.core.registry import Registry
    from workers.scheduler import Tier
    from workers.worker import Worker

    spec = registry.spec.model_copy(update={"experts": [e for e in registry.spec.experts if e.name in engines]})
    w = Worker(Registry(spec, registry.path), queue, device="gpu:0", policy="grouped", memory_budget_gb=budget_gb)
    for name, engine in engines.items():
        key = registry.experts[name].weights_key
        w.engines[key] = engine
        w.scheduler.groups[key].tier = (Tier.COLD if engine.llm is None else
                                         Tier.ASLEEP if engine.asleep else Tier.RESIDENT)
    w.ready.set()
    return w


def describe(args, total_gb: float, versions: dict) -> dict:
    return {"note": "random bf16 weights of real layer shapes (SmolLM2's tokenizer and vocabulary); "
                    "both systems on the same engine processes, one after the other",
            "gpu_total_gib": round(total_gb, 1), "versions": versions, "mode": "quick" if args.quick else "full",
            "stand_in": bool(args.stand_in), "engine_args": args.engine_args}
