"""Drive workers.engines.vllm.VllmEngine against a real vLLM; run as a script in an interpreter that has vllm.

    python tests/vllm_engine_check.py MODEL [cpu|gpu:0]

MODEL: a Hugging Face folder, or a GGUF reference the engine converts (package:..., parts:..., a .gguf).
Prints one JSON object: what each step returned and how long it took, and the answer-letter scores of a
multiple-choice question next to the transformers engine's (`local`) on the same weights. Used by
tests/test_vllm_engine.py (vLLM's CPU build, SmolLM2 weights) and usable on a GPU.
vLLM starts its engine core with 'spawn', which re-imports the main module:
everything runs under the __main__ guard.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from coe.core.settings import get_settings
    from workers.engines.base import EngineOptions, EngineSpec
    from workers.engines.local import LocalEngine
    from workers.engines.vllm import VllmEngine
    from workers.jobs import GenerationRequest

    model, device = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "cpu")
    path = model if Path(model).exists() else None
    spec = EngineSpec(key=f"vllm|{model}|{device}", engine="vllm", model=model, model_path=path, device=device,
                      memory_gb=1.0 if device == "cpu" else 8.0, max_batch=4,
                      options=EngineOptions(cache_dir=get_settings().cache_dir))
    extra = json.loads(os.environ.get("COE_VLLM_ENGINE_ARGS") or "{}")  # e.g. {"enforce_eager": true}
    engine = VllmEngine(spec, **{"max_model_len": 1024, "dtype": "bfloat16", **extra})
    out: dict = {"device": device}
    t = time.perf_counter()
    engine.load()
    out["load_s"] = round(time.perf_counter() - t, 2)
    ask = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    reqs = [
        GenerationRequest(messages=ask, max_tokens=8, temperature=0.0),
        GenerationRequest(messages=[{"role": "user", "content": "Count: one, two, three,"}], max_tokens=12, temperature=0.0, stop=["three"]),
        GenerationRequest(messages=ask, max_tokens=6, temperature=1.0, top_p=0.9, seed=7),
        GenerationRequest(messages=ask, max_tokens=6, temperature=1.0, top_p=0.9, seed=7, repetition_penalty=1.2),
    ]
    deltas: list[tuple[int, str]] = []
    t = time.perf_counter()
    first = engine.generate(reqs, lambda row, text: deltas.append((row, text)))
    out["generate_s"] = round(time.perf_counter() - t, 2)
    out["first"] = [c.__dict__ for c in first]
    out["deltas"] = deltas
    again = engine.generate([reqs[0], reqs[2]])
    out["again"] = [c.__dict__ for c in again]
    t = time.perf_counter()
    engine.sleep()
    out["sleep_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    engine.wake()
    out["wake_s"] = round(time.perf_counter() - t, 3)
    out["after_wake"] = [c.__dict__ for c in engine.generate([reqs[0]])]
    out.update(asyncio.run(submitted(engine, GenerationRequest)))
    mc = [GenerationRequest(messages=[{"role": "user", "content": "Which is a fruit? A) stone B) apple C) car D) cloud\n"
                                                                  "Answer with the letter."}], max_tokens=1)]
    letters = [" A", " B", " C", " D"]
    t = time.perf_counter()
    out["choices"] = engine.choice_logprobs(mc * 8, letters)
    out["choices_s"] = round(time.perf_counter() - t, 3)
    engine.unload()
    out["unloaded"] = engine.llm is None
    local = LocalEngine(EngineSpec(key="local", engine="local", model=model, model_path=path, device="cpu",
                                   memory_gb=1.0, max_batch=4, options=spec.options))
    local.load()
    out["choices_local"] = local.choice_logprobs(mc, letters)[0]
    print("RESULT " + json.dumps(out), flush=True)


async def submitted(engine, GenerationRequest) -> dict:
    """Requests one at a time: a short one submitted while a long one runs finishes first; a cancel aborts."""
    long_req = GenerationRequest(messages=[{"role": "user", "content": "Write a long story about a cat."}],
                                 max_tokens=256, temperature=0.0, stop=[])
    short_req = GenerationRequest(messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0.0)
    order: list[str] = []

    async def run(name, req):
        await engine.submit(req)
        order.append(name)

    long_task = asyncio.create_task(run("long", long_req))
    await asyncio.sleep(0.5)
    await run("short", short_req)
    await long_task
    cancel = asyncio.Event()
    seen: list[str] = []

    def on_text(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            cancel.set()

    cancelled = await engine.submit(long_req, on_text, cancel)
    return {"short_first": order == ["short", "long"], "cancelled": cancelled.__dict__, "running_after": len(engine.running)}


if __name__ == "__main__":
    main()
