"""`coe profile`: measure every expert on validation questions (MMLU, the mixed workload, or the user's own
labelled questions with answers) and write the profile file the skills and two-stage routers read."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
FILE_MAX_TOKENS = 48


def profile(
    data: str = typer.Option("mmlu", help="mmlu (letters read from free text), mixed (MMLU by letter "
                                          "log-likelihood + HumanEval by running the code: the quality benchmark's workload), "
                                          "outcomes (no model run: the graded answers `coe bench quality` stored in "
                                          "outcomes.json beside the experts file), "
                                          "or a .jsonl/.csv file of your own questions: text, label, answer "
                                          "(+ choices for multiple choice) [, split]"),
    split: str = typer.Option(None, help="split to measure on (default: validation; for a file, every row but "
                                         "split=test)"),
    limit: int = typer.Option(200, help="questions (mmlu: a stable shuffle of the split; a file: its first rows; 0 = all)"),
    experts_file: Path = typer.Option(None, "--experts", "-e", help="experts file (default: $COE_EXPERTS_FILE or experts.yaml)"),
    out: Path = typer.Option(None, help="profile file (default: <artifacts_dir>/profile.json)"),
    max_tokens: int = typer.Option(None, help="answer tokens per question (default: 8 for mmlu, whose prompt asks for "
                                               "the letter only; 48 for a file's exact-match questions)"),
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
    if_stale: bool = typer.Option(False, "--if-stale", help="outcomes: only when the profile is missing or was "
                                                             "built from other outcomes or for another stage 1 "
                                                             "(a profile you measured is kept)"),
) -> None:
    """Run every expert on validation questions through the real dispatch path; write per-category,
    per-skill and global correctness, tokens and time per expert (the skills and two-stage routers read it)."""
    from coe.core.settings import get_settings
    from coe.profiling import Runner, measure_aggregators, profile_experts, select_questions
    from routers.skills_profile import PROFILE_FILE

    settings = get_settings()
    if experts_file:
        settings = settings.model_copy(update={"experts_file": experts_file})
    out = out or settings.artifacts_dir / PROFILE_FILE
    if data == "outcomes":
        from_outcomes(settings, out, if_stale)
        return
    if data not in ("mmlu", "mixed"):
        items = file_items(settings, Path(data), split, limit, max_tokens or FILE_MAX_TOKENS)
        meta = {"data": str(data), "split": split or "all but test", "limit": limit}
        prof = asyncio.run(profile_items(settings, items, meta, batch, concurrency, skills_per_query))
        finish(prof, out)
        return
    split = split or "validation"
    if data == "mixed":
        from coe.data.mixed import load_items

        items = load_items(settings.cache_dir, split, per_subcategory, code)
        console.print(f"{len(items)} mixed {split} items")
        meta = {"data": "mixed", "split": split, "per_subcategory": per_subcategory, "n_code": code}
        prof = asyncio.run(profile_items(settings, items, meta, batch, concurrency, skills_per_query))
        finish(prof, out)
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
            prof = await profile_experts(runner, questions, experts, max_tokens=max_tokens or 8,
                                         skills_per_query=skills_per_query, skill_source=skill_source,
                                         keyword_expert=keyword_expert, seed=seed, meta=meta,
                                         max_seconds=max_seconds)
            if aggregators:
                candidates = runner.router.experts  # experts the router may recruit
                prof["aggregators"] = await measure_aggregators(
                    runner, prof, questions, candidates, experts, k=agg_k, limit=agg_limit, max_tokens=max_tokens,
                    seed=seed)
            prof["worker"] = {"batches": sum(w.scheduler.stats.batches for w in runner.workers),
                              "switches": sum(w.scheduler.stats.switches for w in runner.workers)}
            return prof
        finally:
            await runner.stop()

    finish(asyncio.run(go()), out)


def from_outcomes(settings, out: Path, if_stale: bool) -> None:
    """Stage 2's profile from the measured answers in outcomes.json, grouped by this machine's stage 1."""
    from coe.core.registry import load_registry
    from coe.core.routes import load_routes_if_present
    from coe.embedder import make_embedder
    from coe.profile_outcomes import is_current, profile_from_outcomes
    from coe.profiling import group_by_stage1
    from routers.base import RouterContext
    from routers.quality import OUTCOMES_FILE
    from routers.two_stage.artifact import ArtifactError, read_manifest, resolve_version

    source = settings.experts_file.parent / OUTCOMES_FILE
    if not source.is_file():
        console.print(f"[yellow]no {source}: stage 2 keeps the declared categories (measure with coe bench quality "
                      f"or coe profile --data mixed)[/yellow]")
        return
    try:
        version = read_manifest(resolve_version(settings.artifacts_dir)).get("version")
    except ArtifactError:
        version = None
    if if_stale and is_current(out, source, version):
        return
    registry = load_registry(settings.experts_file)
    try:
        prof, texts = profile_from_outcomes(source, registry.names)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        console.print(f"[red]{source}: not a usable outcomes file ({exc})[/red]")
        raise typer.Exit(1) from None
    ctx = RouterContext(registry, make_embedder(settings), settings.artifacts_dir,
                        options=dict(settings.router_options.get("two_stage", {})),
                        routes=load_routes_if_present(settings.routes_path))
    asyncio.run(group_by_stage1(ctx, prof, texts))
    finish(prof, out)


def finish(prof: dict, out: Path) -> None:
    """Write the profile (atomically: a failed run leaves the old one) and say what stage 2 will use."""
    from routers.skills_profile import save_profile

    save_profile(prof, out)
    show(prof)
    info = prof.get("stage2") or {}
    if info.get("grouping") == "predicted":
        console.print(f"stage 2 cells: the categories stage 1 of {info['artifact']} predicts "
                      f"({info['below_tau']} of {prof['n_questions']} below its tau)")
    else:
        console.print(f"[yellow]stage 2 cells: gold labels ({info.get('reason', 'no stage-1 predictions')})[/yellow]")
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


def file_items(settings, path: Path, split: str | None, limit: int, max_tokens: int) -> list:
    """The user's questions as items, every row checked first (errors name file, line and field; exit 1)."""
    from coe.core.routes import load_routes_if_present
    from coe.data.answered import answered_items, read_answered
    from coe.data.labelled import DataFileError

    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file; --data takes mmlu, mixed or a .jsonl/.csv file")
    routes = load_routes_if_present(settings.routes_path)
    try:
        rows = read_answered(path, routes.names if routes else None)
    except DataFileError as exc:
        console.print(f"[red]{exc.path}:[/red]\n  " + "\n  ".join(exc.problems))
        raise typer.Exit(1) from None
    picked = [r for r in rows if (r.row.split == split if split else r.row.split != "test")]
    if not picked:
        console.print(f"[red]{path}: no rows with split {split or 'other than test'}[/red]")
        raise typer.Exit(1)
    picked = picked[:limit] if limit else picked
    kinds = sum(r.choices is not None for r in picked)
    console.print(f"{len(picked)} questions of {path} ({kinds} multiple choice, {len(picked) - kinds} exact match)")
    return answered_items(picked, path.name, max_tokens)


async def profile_items(settings, items: list, meta: dict, batch: int | None, concurrency: int,
                        skills_per_query: int) -> dict:
    """Every expert on the items through the real path, graded; the profile keeps per-route, per-skill and
    per-predicted-category counts."""
    from coe.expert_runs import mixed_profile, run_experts
    from coe.profiling import Runner, group_by_stage1

    runner = Runner(settings, batch=batch, concurrency=concurrency)
    await runner.start()
    try:
        started = time.perf_counter()
        records = await run_experts(runner, items, runner.registry.names)
        texts = [r.item.text for r in records]
        vecs = await asyncio.to_thread(runner.embedder.encode, texts)
        for r, row in zip(records, runner.index.top(vecs, skills_per_query)):
            r.skills = [name for name, _ in row]
        meta = {**meta, "experts_file": str(settings.experts_file), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "wall_s": round(time.perf_counter() - started, 1)}
        profile = mixed_profile(records, runner.registry.names, meta)
        await group_by_stage1(runner.pipeline.router_context("two_stage"), profile, texts, vecs)
        return profile
    finally:
        await runner.stop()
