"""`coe profile`: measure every expert on validation questions and write the profile file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def profile(
    data: str = typer.Option("mmlu", help="mmlu (letters read from free text), or mixed (MMLU by letter "
                                          "log-likelihood + HumanEval by running the code: the quality benchmark's workload)"),
    split: str = typer.Option("validation", help="split to measure on"),
    limit: int = typer.Option(200, help="questions (a stable shuffle of the split; 0 = all)"),
    experts_file: Path = typer.Option(None, "--experts", "-e", help="experts file (default: $COE_EXPERTS_FILE or experts.yaml)"),
    out: Path = typer.Option(None, help="profile file (default: <artifacts_dir>/profile.json)"),
    max_tokens: int = typer.Option(8, help="answer tokens per question (the prompt asks for the letter only)"),
    batch: int = typer.Option(None, help="override every expert's max_batch for this run"),
    concurrency: int = typer.Option(64, help="jobs in flight at once"),
    skills_per_query: int = typer.Option(3, help="skills per question"),
    skill_source: str = typer.Option("embedding", help="'embedding' (top-s of the vocabulary) or 'keywords' (an LLM writes them)"),
    keyword_expert: str = typer.Option(None, help="expert that writes keywords (default: the fallback expert)"),
    aggregators: bool = typer.Option(False, "--aggregators", help="also measure every expert as the aggregator"),
    agg_limit: int = typer.Option(50, help="questions for the aggregator measurement"),
    agg_k: int = typer.Option(3, help="candidate answers per question for the aggregator measurement"),
    max_seconds: float = typer.Option(None, help="time budget for the answers: stop taking new questions past it"),
    seed: int = typer.Option(0),
    per_subcategory: int = typer.Option(10, help="mixed: MMLU questions per subcategory"),
    code: int = typer.Option(None, help="mixed: HumanEval problems (default: all of the split)"),
) -> None:
    """Run every expert on validation questions through the real dispatch path; write per-category,
    per-skill and global correctness, tokens and time per expert (the skills and two-stage routers read it)."""
    from coe.core.settings import get_settings
    from coe.profiling import Runner, measure_aggregators, profile_experts, select_questions
    from routers.skills_profile import PROFILE_FILE, save_profile

    settings = get_settings()
    if experts_file:
        settings = settings.model_copy(update={"experts_file": experts_file})
    out = out or settings.artifacts_dir / PROFILE_FILE
    if data == "mixed":
        prof = asyncio.run(profile_mixed(settings, split, per_subcategory, code, batch, concurrency, skills_per_query))
        save_profile(prof, out)
        show(prof)
        console.print(f"wrote {out}")
        return
    questions = select_questions(data, split, limit or None, settings.cache_dir)
    console.print(f"{len(questions)} {data} {split} questions")

    async def go() -> dict:
        runner = Runner(settings, batch=batch, concurrency=concurrency)
        await runner.start()
        try:
            experts = runner.registry.names
            meta = {"data": data, "split": split, "limit": limit, "experts_file": str(settings.experts_file),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            prof = await profile_experts(runner, questions, experts, max_tokens=max_tokens,
                                         skills_per_query=skills_per_query, skill_source=skill_source,
                                         keyword_expert=keyword_expert, seed=seed, meta=meta,
                                         max_seconds=max_seconds)
            if aggregators:
                candidates = runner.router.experts  # experts the router may recruit
                prof["aggregators"] = await measure_aggregators(
                    runner, prof, questions, candidates, experts, k=agg_k, limit=agg_limit, max_tokens=max_tokens,
                    seed=seed)
            prof["worker"] = {"batches": runner.worker.scheduler.stats.batches,
                              "switches": runner.worker.scheduler.stats.switches}
            return prof
        finally:
            await runner.stop()

    prof = asyncio.run(go())
    save_profile(prof, out)
    show(prof)
    console.print(f"wrote {out}")


def show(prof: dict) -> None:
    table = Table("expert", "accuracy", "correct/total", "unparsed", "prompt tok", "completion tok", "time (s)", "tok/s")
    for name, e in prof["experts"].items():
        table.add_row(name, f"{e['accuracy']:.3f}", f"{e['correct']}/{e['total']}", str(e["unparsed"]),
                      str(e.get("prompt_tokens", "")), str(e.get("completion_tokens", "")),
                      f"{e.get('time_s', e.get('engine_s', 0)):.1f}", f"{e.get('tokens_per_s', 0):.1f}")
    console.print(table)
    agg = prof.get("aggregators")
    if agg:
        t = Table("aggregator", "accuracy", "correct/total", "unparsed")
        for name, s in agg["scores"].items():
            t.add_row(name + (" (best)" if name == agg["best"] else ""), f"{s['accuracy']:.3f}",
                      f"{s['correct']}/{s['total']}", str(s["unparsed"]))
        console.print(t)
        console.print(f"majority of the {agg['k']} candidates: {agg['majority_of_candidates']:.3f}")


async def profile_mixed(settings, split: str, per_subcategory: int, n_code: int | None, batch: int | None,
                        concurrency: int, skills_per_query: int) -> dict:
    """Every expert on the mixed workload's `split`, graded; the profile keeps per-route and per-skill counts."""
    from coe.data.mixed import load_items
    from coe.expert_runs import mixed_profile, run_experts
    from coe.profiling import Runner

    items = load_items(settings.cache_dir, split, per_subcategory, n_code)
    console.print(f"{len(items)} mixed {split} items")
    runner = Runner(settings, batch=batch, concurrency=concurrency)
    await runner.start()
    try:
        started = time.perf_counter()
        records = await run_experts(runner, items, runner.registry.names)
        vecs = await asyncio.to_thread(runner.embedder.encode, [r.item.text for r in records])
        for r, row in zip(records, runner.index.top(vecs, skills_per_query)):
            r.skills = [name for name, _ in row]
        meta = {"data": "mixed", "split": split, "per_subcategory": per_subcategory, "n_code": n_code,
                "experts_file": str(settings.experts_file), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "wall_s": round(time.perf_counter() - started, 1)}
        return mixed_profile(records, runner.registry.names, meta)
    finally:
        await runner.stop()
