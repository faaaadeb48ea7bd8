"""`coe bench engine`: llama.cpp (cyllama, the `llamacpp` engine) against transformers (the `local` engine) on the
default experts' weights, side by side in one run, through the code the service runs.

For each expert of the experts file (one per model: the pairs that only change the strategy share the weights) and
each engine, one after the other in this process (greedy decoding, the
same chat prompts and max_tokens):
  batch 1    the prompts one at a time;
  8 streams  8 requests at once: llamacpp through `submit` (continuous batching: each joins the running batch,
             its text streams); local through one streamed `generate` of 8 rows (its batch API: it has no submit).
Reported: completion tokens/s (all streams together, prefill included), time to first token (submission to the
first streamed text; mean and worst), and the load average at start and end (other processes share the cores).
The ceiling, llama-cpp-python built from source for this CPU (scripts/setup_llamacpp.sh, never on the default
path), is measured at batch 1 in its own process when its venv (.venv-llamacpp) exists; otherwise it is
reported as not measured. `llamacpp+confidence` is llama.cpp with every request asking for its confidence
(Completion.mean_logprob, a full-vocabulary read of the logits per token), to show what that costs.
Writes engine.json and engine.md under the output folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from coe.core.assets import resolve_model_path
from coe.core.registry import ExpertConfig, load_registry
from coe.core.settings import get_settings
from workers.engines import create_engine
from workers.engines.base import EngineOptions, EngineSpec
from workers.jobs import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
CEILING_PYTHON = ROOT / ".venv-llamacpp" / "bin" / "python"
PROMPTS = [
    "Who was Napoleon?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "A farmer has 17 sheep and all but 9 run away. How many are left? Explain.",
    "Write a haiku about the sea.",
    'Extract the name and age as JSON: "Maria is 34 and lives in Lisbon."',
    "Explain how photosynthesis works, step by step.",
    "Describe the causes of the French Revolution.",
    "What are the main differences between Python and C?",
]
STREAMS = 8


CONFIDENCE = "+confidence"


def _request(prompt: str, max_tokens: int, confidence: bool = False) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0,
                             confidence=confidence)


def _summary(runs: list[tuple[float, float, int]], wall: float) -> dict:
    """runs: (submitted, first text, completion tokens) per request, perf_counter times."""
    ttft = [first - sent for sent, first, _ in runs]
    tokens = sum(n for _, _, n in runs)
    return {"requests": len(runs), "tokens": tokens, "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "ttft_mean_s": round(statistics.mean(ttft), 3), "ttft_max_s": round(max(ttft), 3)}


async def _submitted(engine, reqs: list[GenerationRequest]) -> list[tuple[float, float, int]]:
    """Every request through `submit` at once; (submitted, first text, tokens) each."""
    async def one(req: GenerationRequest) -> tuple[float, float, int]:
        first: list[float] = []
        sent = time.perf_counter()
        out = await engine.submit(req, lambda _text: first or first.append(time.perf_counter()))
        return sent, (first or [time.perf_counter()])[0], out.completion_tokens

    return list(await asyncio.gather(*(one(r) for r in reqs)))


def _generated(engine, reqs: list[GenerationRequest]) -> list[tuple[float, float, int]]:
    """The requests as one streamed `generate` call; (submitted, first text, tokens) each."""
    first: dict[int, float] = {}
    sent = time.perf_counter()
    out = engine.generate(reqs, on_delta=lambda row, _text: first.setdefault(row, time.perf_counter()))
    return [(sent, first.get(i, time.perf_counter()), c.completion_tokens) for i, c in enumerate(out)]


def _run(engine, reqs: list[GenerationRequest]) -> tuple[list[tuple[float, float, int]], float]:
    t0 = time.perf_counter()
    if engine.supports_streaming_submit:
        runs = asyncio.run(_submitted(engine, reqs))
    else:
        runs = _generated(engine, reqs)
    return runs, time.perf_counter() - t0


def bench_one(expert: ExpertConfig, name: str, max_tokens: int, prompts: int, threads: int) -> dict:
    engine_name, confidence = name.removesuffix(CONFIDENCE), name.endswith(CONFIDENCE)
    spec = EngineSpec(key=f"bench-{engine_name}", engine=engine_name, model=expert.model, model_path=None, device="cpu",
                      memory_gb=expert.memory_gb, max_batch=STREAMS, chat_template=expert.chat_template,
                      completion=expert.completion, experts=(expert.name,),
                      options=EngineOptions(cache_dir=get_settings().cache_dir, threads=threads))
    engine = create_engine(spec)
    t0 = time.perf_counter()
    engine.load()
    out: dict = {"expert": expert.name, "engine": name, "load_s": round(time.perf_counter() - t0, 2)}
    try:
        _run(engine, [_request(PROMPTS[0], 4)])  # warm-up
        b1 = [_run(engine, [_request(p, max_tokens, confidence)]) for p in PROMPTS[:prompts]]
        out["batch1"] = _summary([r for runs, _ in b1 for r in runs], sum(wall for _, wall in b1))
        runs, wall = _run(engine, [_request(PROMPTS[i % len(PROMPTS)], max_tokens, confidence) for i in range(STREAMS)])
        out["streams8"] = _summary(runs, wall)
    finally:
        engine.unload()
    return out


CEILING_SCRIPT = """
import json, sys, time
import llama_cpp
gguf, max_tokens, threads, prompts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
llm = llama_cpp.Llama(model_path=gguf, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
tokens, ttft, wall = 0, [], 0.0
for p in prompts:
    t0, first = time.perf_counter(), None
    for chunk in llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=max_tokens, temperature=0.0,
                                            stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1  # one streamed chunk per token
            first = first or time.perf_counter()
    wall += time.perf_counter() - t0
    ttft.append((first or time.perf_counter()) - t0)
print(json.dumps({"llama_cpp_python": llama_cpp.__version__, "tokens": tokens, "wall": wall, "ttft": ttft}))
"""


def bench_ceiling(expert: ExpertConfig, max_tokens: int, prompts: int, threads: int) -> dict:
    """llama-cpp-python from source at batch 1, in its own venv and process; only where that venv exists."""
    if not CEILING_PYTHON.exists():
        return {"expert": expert.name, "engine": "llama-cpp-python (source build)",
                "not_measured": "no source build here (.venv-llamacpp; scripts/setup_llamacpp.sh, never on the default path)"}
    gguf = resolve_model_path(expert.model, cache_dir=get_settings().cache_dir)
    proc = subprocess.run([str(CEILING_PYTHON), "-c", CEILING_SCRIPT, str(gguf), str(max_tokens), str(threads),
                           json.dumps(PROMPTS[:prompts])], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"expert": expert.name, "engine": "llama-cpp-python (source build)", "error": proc.stderr[-500:]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"expert": expert.name, "engine": f"llama-cpp-python {r['llama_cpp_python']} (source build)",
            "batch1": {"tokens": r["tokens"], "seconds": round(r["wall"], 2), "tokens_per_s": round(r["tokens"] / r["wall"], 1),
                       "ttft_mean_s": round(statistics.mean(r["ttft"]), 3)}}


def bench_engine(experts_file: Path, out_dir: Path, max_tokens: int = 64, prompts: int = 3,
                 engines: tuple[str, ...] = ("llamacpp", "local"), threads: int | None = None, log=print) -> dict:
    threads = threads or os.cpu_count() or 1
    registry = load_registry(experts_file)
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": threads, "max_tokens": max_tokens,
        "prompts_batch1": prompts, "streams": STREAMS, "experts_file": str(experts_file),
        "command": " ".join(["coe bench engine", *sys.argv[3:]]).strip() if sys.argv[1:2] == ["bench"] else
                   f"coe bench engine --max-tokens {max_tokens} --prompts {prompts}",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()], "runs": [],
    }
    measured: set[str] = set()
    for expert in registry.experts.values():
        if expert.model in measured:  # another strategy on the same weights: the engine does the same work
            continue
        measured.add(expert.model)
        for name in engines:
            log(f"{expert.name}: {name} ...")
            result["runs"].append(bench_one(expert, name, max_tokens, prompts, threads))
            log(json.dumps(result["runs"][-1]))
        result["runs"].append(bench_ceiling(expert, max_tokens, prompts, threads))
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "engine.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "engine.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [
        "# Engine benchmark: llama.cpp (cyllama) vs transformers on the default experts",
        "",
        f"{result['machine']}, {result['threads']} threads, greedy, max_tokens {result['max_tokens']}; batch 1 = "
        f"{result['prompts_batch1']} prompts one at a time, 8 streams = {result['streams']} requests at once "
        "(llamacpp: `submit`, continuous batching; local: one streamed `generate`). tok/s counts completion tokens "
        "over wall time, prefill included; TTFT is submission to first streamed text.",
        "",
        f"Command: `{result['command']}`. Load average (1/5/15 min) at start {result['loadavg_start']}, "
        f"at end {result['loadavg_end']}.",
        "",
        "| expert | engine | load s | batch 1 tok/s | batch 1 TTFT s | 8 streams tok/s | 8 streams TTFT mean / max s |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["runs"]:
        if "not_measured" in r or "error" in r:
            lines.append(f"| {r['expert']} | {r['engine']} | — | — | — | — | {r.get('not_measured') or r['error']} |")
        elif "streams8" not in r:
            b1 = r["batch1"]
            lines.append(f"| {r['expert']} | {r['engine']} | — | {b1['tokens_per_s']} | {b1['ttft_mean_s']} | — | — |")
        else:
            b1, s8 = r["batch1"], r["streams8"]
            lines.append(f"| {r['expert']} | {r['engine']} | {r['load_s']} | {b1['tokens_per_s']} | {b1['ttft_mean_s']} | "
                         f"{s8['tokens_per_s']} | {s8['ttft_mean_s']} / {s8['ttft_max_s']} |")
    lines += ["", "Speed-up of llamacpp over local (tok/s):", ""]
    by = {(r["expert"], r["engine"]): r for r in result["runs"] if "streams8" in r}
    for expert in dict.fromkeys(r["expert"] for r in result["runs"]):
        fast, slow = by.get((expert, "llamacpp")), by.get((expert, "local"))
        if fast and slow:
            lines.append(f"- {expert}: batch 1 {fast['batch1']['tokens_per_s'] / slow['batch1']['tokens_per_s']:.1f}x, "
                         f"8 streams {fast['streams8']['tokens_per_s'] / slow['streams8']['tokens_per_s']:.1f}x")
    return "\n".join(lines) + "\n"
