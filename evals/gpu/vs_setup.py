"""Set-up for evals/gpu/vs_vllm.py: the experts (built, or stand-ins), their registry, the shared engines.

One vllm engine (coe's `VllmEngine`: an AsyncLLM on its own event loop) per expert, started once,
one after the other; those beyond what fits awake are put to sleep right after their start. Both
systems under test then run on these same engine processes: coe through its Worker, vLLM directly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

QUICK_ARCHS = ["qwen2.5-0.5b"] * 4
FULL_ARCHS = ["qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-1.5b", "qwen2.5-0.5b",
              "qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-1.5b", "qwen2.5-0.5b"]
"""Zipf rank order: expert-00 is the most asked. Twice as many experts as fit awake (half)."""
REAL = "smollm2-real"


@dataclass
class Setup:
    registry: object
    engines: dict  # expert name -> started VllmEngine
    memory_gb: dict[str, float]
    meta: list[dict] = field(default_factory=list)


def memory_per_expert(total_gb: float, fit: int) -> float:
    """What each expert gets: room for `fit` awake plus one starting, under 85% of the GPU; at most 16 GB."""
    return float(min(16, int(0.85 * total_gb / (fit + 1))))


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


def build_folders(work: Path, archs: list[str], tokenizer: Path | None, stand_in: bool, log) -> tuple[list[Path], list[dict]]:
    """One folder per expert; one random-weight build per architecture, the other experts link to it."""
    from coe_evals.gpu.gpu_models import build_model, link_model

    built: dict[str, tuple[Path, dict]] = {}
    folders, meta = [], []
    for i, arch in enumerate(archs):
        folder = work / "models" / f"expert-{i:02d}-{arch}"
        if stand_in:
            folder.mkdir(parents=True, exist_ok=True)
            info = {"arch": arch, "weights": "none (stand-in)"}
        else:
            if arch not in built:
                base = work / "models" / f"base-{arch}"
                t0 = time.perf_counter()
                built[arch] = (base, build_model(base, arch, tokenizer, seed=1000 + len(built)))
                log(f"built {arch} in {time.perf_counter() - t0:.1f}s")
            shutil.rmtree(folder, ignore_errors=True)
            link_model(built[arch][0], folder)
            info = dict(built[arch][1])
        folders.append(folder)
        meta.append(info)
    return folders, meta


def write_registry(work: Path, folders: list[Path], memory_gb: float, max_batch: int,
                   real_model: Path | None) -> Path:
    import yaml

    experts = [{"name": f"expert-{i:02d}", "engine": "vllm", "model": str(f), "device": "gpu:0", "memory_gb": memory_gb,
                "max_batch": max_batch, "params_b": 1.0} for i, f in enumerate(folders)]
    if real_model is not None:
        experts.append({"name": REAL, "engine": "vllm", "model": str(real_model), "device": "gpu:0",
                        "memory_gb": memory_gb, "max_batch": max_batch, "params_b": 0.135})
    path = work / "experts.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "experts": experts}, sort_keys=False))
    return path


def start_engines(registry, engine_args: dict, fit: int, log, report_starts: list) -> dict:
    """Every expert's engine, started one after the other; beyond the first `fit`, put to sleep at once."""
    from workers.engines import create_engine
    from workers.engines.base import EngineOptions
    from workers.worker import engine_spec

    options = EngineOptions(vllm_args=engine_args)
    engines = {}
    for i, (name, expert) in enumerate(registry.experts.items()):
        engine = create_engine(engine_spec(registry, expert, options))
        t0 = time.perf_counter()
        engine.load()
        start_s = time.perf_counter() - t0
        engine.generate([_warm_request()])  # first request: untimed warm-up
        entry = {"expert": name, "start_s": round(start_s, 2)}
        if i >= fit:
            t0 = time.perf_counter()
            engine.sleep()
            entry["first_sleep_s"] = round(time.perf_counter() - t0, 3)
        report_starts.append(entry)
        log(f"started {name} in {start_s:.1f}s" + (f", asleep in {entry['first_sleep_s']}s" if i >= fit else ""))
        engines[name] = engine
    return engines


def _warm_request():
    from workers.jobs import GenerationRequest

    return GenerationRequest(messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0.0)


def set_residency(engines: dict, awake: set[str]) -> None:
    """Put to sleep every engine not in `awake` (first, to free memory), then wake those in it."""
    for name, e in engines.items():
        if name not in awake and e.llm is not None and not e.asleep:
            e.sleep()
    for name in awake:
        engines[name].wake()


def coe_worker(registry, engines: dict, budget_gb: float, queue):
    """coe's Worker on gpu:0 over the shared engines, its scheduler told which are awake."""
    from workers.scheduler import Tier
    from workers.worker import Worker

    w = Worker(registry, queue, device="gpu:0", policy="grouped", memory_budget_gb=budget_gb)
    for name, engine in engines.items():
        key = registry.experts[name].weights_key
        w.engines[key] = engine
        w.scheduler.groups[key].tier = Tier.ASLEEP if engine.asleep else Tier.RESIDENT
    w.ready.set()
    return w


def describe(args, total_gb: float, versions: dict) -> dict:
    return {"note": "random bf16 weights of real layer shapes (SmolLM2's tokenizer and vocabulary); "
                    "both systems on the same engine processes, one after the other",
            "gpu_total_gib": round(total_gb, 1), "versions": versions, "mode": "quick" if args.quick else "full",
            "stand_in": bool(args.stand_in), "engine_args": json.loads(args.engine_args)}
