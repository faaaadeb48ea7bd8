"""`coe bench quality`: does composing experts beat picking one model, per unit of compute?

One run, the whole service path: every expert answers the validation items and the held-out test items
of the mixed workload (MMLU by answer-letter log-likelihood, HumanEval by running the generated code in
the sandbox) through the queue and the worker; profiles are fitted on validation only (stage 2's cells
grouped by the category stage 1 predicts for each validation item); then each policy routes the test
items with the real routers (two-stage with its cost weight swept, skills k=1 and k=3
with the aggregator, whose merge runs as real jobs), next to every single expert, random and the
oracle. Writes quality.json (with every expert's answer to every validation and test item, and stage 1's
category for each, so stage 2 can be refitted and judged again offline), quality.md and quality.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer

from coe_evals import quality_policies as pol
from coe_evals.quality_report import goals, markdown, plot, summarise

COST_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4, 1.0)
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


async def _merge(runner, records, candidates: list[list[str]], aggregator: str):
    """The aggregator merges each item's k candidate answers, as real jobs (scoring for MMLU, code for code)."""
    from coe.aggregation import aggregation_messages
    from coe.data.scoring import ANSWER_PREFIX
    from coe.expert_runs import ask, grade_code, graded_answer

    async def one(rec, cands):
        cand_text = [(e, rec.answers[e].text) for e in cands]
        messages = aggregation_messages(rec.item.messages, cand_text)
        if rec.item.choices is not None:
            messages = messages + [{"role": "assistant", "content": ANSWER_PREFIX}]
        return graded_answer(aggregator, rec.item, await ask(runner, aggregator, rec.item, messages))

    calls = [lambda r=r, c=c: one(r, c) for r, c in zip(records, candidates)]
    merged = await runner.bounded(calls, f"aggregation by {aggregator}")
    code = [(r.item, a) for r, a in zip(records, merged) if r.item.problem is not None]
    if code:
        await grade_code(code)
    return merged


def _route(runner, name: str, options: dict, texts: list[str], vecs, k: int) -> tuple[list, object]:
    """The decisions of router `name` built as the service builds it (with `options`), and the router."""
    from routers import build_router

    ctx = runner.pipeline.router_context(name)
    router = build_router(name, replace(ctx, options={**ctx.options, **options}))
    return router.route(texts, vecs, k), router


async def evaluate(runner, val, val_vecs, test, experts: list[str], profile_path: Path,
                   seed: int) -> tuple[list[pol.PolicyRun], dict]:
    """Every policy on the test items, and what stage 2 was fitted on (its table's source and notes, and
    stage 1's category and confidence per test item). `val_vecs`: the validation items' embeddings."""
    from coe.expert_runs import records_json
    from coe_evals.quality_perquery import cascade_runs, choose_default, per_query_runs
    from routers.outcomes import outcomes_from_records

    params = {e: runner.registry.experts[e].params_b for e in experts}
    texts = [r.item.text for r in test]
    vecs = await asyncio.to_thread(runner.embedder.encode, texts)
    runs = [pol.single(test, e, params) for e in experts]
    runs.append(pol.uniform_random(test, experts, params, seed))
    stage2 = {}
    for w in COST_WEIGHTS:
        decisions, router = await asyncio.to_thread(_route, runner, "two_stage",
                                                    {"profile": str(profile_path), "cost_weight": w}, texts, vecs, 1)
        runs.append(pol.routed(f"two-stage w={w:g}", "two_stage", test, [d.experts[0] for d in decisions], params,
                               {"cost_weight": w}))
        stage2 = stage2 or {"table": router.map.source, "notes": router.map.notes,
                            "test_routes": [{"category": d.category, "p": round(d.confidence, 4), "fallback": d.fallback}
                                            for d in decisions]}
    skills_opts = {"profile": str(profile_path), "mode": "sample"}
    k1, _ = await asyncio.to_thread(_route, runner, "skills", skills_opts, texts, vecs, 1)
    runs.append(pol.routed("skills k=1", "skills", test, [d.experts[0] for d in k1], params, {"k": 1}))
    k3, _ = await asyncio.to_thread(_route, runner, "skills", skills_opts, texts, vecs, 3)
    aggregator = next((d.aggregator for d in k3 if d.aggregator), None) or runner.registry.aggregator.name
    candidates = [d.experts for d in k3]
    merged = await _merge(runner, test, candidates, aggregator)
    runs.append(pol.aggregated(f"skills k=3 + {aggregator}", test, candidates, merged, aggregator, params,
                               {"k": 3, "aggregator": aggregator}))
    runs.append(pol.oracle(test, experts, params))
    val_out = outcomes_from_records(records_json(val), params)
    test_out = outcomes_from_records(records_json(test), params)
    val_x = np.asarray(val_vecs)
    pq_runs, predictors = per_query_runs(test, val_out, test_out, val_x, np.asarray(vecs), params)
    cascades, _ = cascade_runs(test, val_out, test_out)
    stage2["predictors"] = predictors
    stage2["default_policy"] = await asyncio.to_thread(choose_default, val_out, val_x)
    return runs + pq_runs + cascades, stage2


async def run_benchmark(settings, per_subcategory: int, n_code: int | None, val_per_subcategory: int,
                        val_code: int | None, seed: int, batch: int | None, log, code_max_tokens: int,
                        per_category: int | None = None, n_maths: int = 0, val_maths: int = 0,
                        concurrency: int = 64) -> dict:
    """The whole run as quality.json holds it; with `per_category` (the smoke run) MMLU is sampled by its 4
    categories instead of its 17 subcategories."""
    from coe.data.mixed import load_items
    from coe.expert_runs import mixed_profile, records_json, run_experts
    from coe.profiling import Runner, group_by_stage1
    from routers.skills_profile import save_profile

    val_items = load_items(settings.cache_dir, "validation", val_per_subcategory, val_code, code_max_tokens, per_category,
                           n_maths=val_maths, mmlu_scored=False, maths_max_tokens=code_max_tokens)
    test_items = load_items(settings.cache_dir, "test", per_subcategory, n_code, code_max_tokens, per_category,
                            n_maths=n_maths, mmlu_scored=False, maths_max_tokens=code_max_tokens)
    runner = Runner(settings, batch=batch, progress=log, concurrency=concurrency)
    await runner.start()
    try:
        experts = runner.registry.names
        timings = {}
        t0 = time.perf_counter()
        val = await run_experts(runner, val_items, experts)
        timings["validation_answers_s"] = round(time.perf_counter() - t0, 1)
        vecs = await asyncio.to_thread(runner.embedder.encode, [r.item.text for r in val])
        for r, row in zip(val, runner.index.top(vecs, 3)):
            r.skills = [n for n, _ in row]
        profile = mixed_profile(val, experts, {"data": "mixed", "split": "validation"})
        await group_by_stage1(runner.pipeline.router_context("two_stage"), profile, [r.item.text for r in val], vecs)
        profile_path = Path(tempfile.mkdtemp(prefix="coe-quality-")) / "profile.json"
        save_profile(profile, profile_path)
        t0 = time.perf_counter()
        test = await run_experts(runner, test_items, experts)
        timings["test_answers_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        runs, stage2 = await evaluate(runner, val, vecs, test, experts, profile_path, seed)
        timings["policies_s"] = round(time.perf_counter() - t0, 1)
        domains = [r.item.domain for r in test]
        return {"experts": {e: {"params_b": runner.registry.experts[e].params_b,
                                "model": runner.registry.experts[e].model,
                                "engine": runner.registry.experts[e].engine} for e in runner.registry.names},
                "n_validation": len(val), "n_test": len(test),
                "n_test_by_domain": {d: domains.count(d) for d in sorted(set(domains))},
                "validation_profile": {e: {k: v for k, v in p.items() if k != "skills"}
                                       for e, p in profile["experts"].items()},
                "policies": [summarise(run, domains) for run in runs], "timings": timings,
                "stage2": {**(profile.get("stage2") or {}), "table": stage2["table"], "notes": stage2["notes"],
                           "predictors": stage2["predictors"], "default_policy": stage2["default_policy"]},
                "outcome_experts": {e: {"params_b": runner.registry.experts[e].params_b,
                                        "strategy": runner.registry.experts[e].strategy} for e in experts},
                "val_records": [{**rec, **{k: p[k] for k in ("predicted", "predicted_p") if k in p}}
                                for rec, p in zip(records_json(val), profile["records"])],
                "test_records": [{**rec, "routed": route} for rec, route in zip(records_json(test), stage2["test_routes"])]}
    finally:
        await runner.stop()


def outcomes_file(res: dict) -> dict:
    """The validation answers as the per-query routers read them (routers/outcomes.py): what the service serves
    from when this file is its outcomes.json."""
    return {"version": 1, "source": res["command"], "experts": res["outcome_experts"],
            "default_policy": res["stage2"]["default_policy"]["chosen"],
            "records": [{"id": r["id"], "domain": r["domain"], "label": r["label"], "text": r["text"],
                         "skills": r.get("skills", []), "answers": {e: {k: a[k] for k in ("correct", "prompt_tokens", "completion_tokens", "confidence")}
                                     for e, a in r["answers"].items()}} for r in res["val_records"]]}


def quality(
    experts_file: Path = typer.Option(None, "--experts", "-e", help="experts file (default: $COE_EXPERTS_FILE)"),
    quick: bool = typer.Option(False, help="the smoke run: on each split, 1 MMLU question per category (4), 1 code "
                                           "problem and 2 maths problems, at most 192 tokens an answer"),
    per_subcategory: int = typer.Option(20, help="held-out MMLU questions per subcategory"),
    code: int = typer.Option(None, help="held-out HumanEval problems (default: all 98 of the test split)"),
    maths: int = typer.Option(200, help="held-out maths word problems (coe/data/maths.py, generated with verified answers)"),
    val_maths: int = typer.Option(200, help="validation maths word problems"),
    val_per_subcategory: int = typer.Option(10, help="validation MMLU questions per subcategory (profiles)"),
    val_code: int = typer.Option(None, help="validation HumanEval problems (default: all 66)"),
    batch: int = typer.Option(None, help="override every expert's max_batch"),
    concurrency: int = typer.Option(64, help="requests in flight at once (a GPU run takes more)"),
    code_max_tokens: int = typer.Option(384, help="tokens an expert may write for one HumanEval or maths answer"),
    seed: int = typer.Option(0),
    default_cost_weight: float = typer.Option(None, help="the two-stage setting judged by the goals (default: COE_ROUTER_COST_WEIGHT)"),
    out: Path = typer.Option(DEFAULT_OUT, help="where quality.json/.md/.png go"),
    replay: Path = typer.Option(None, help="no model run: refit stage 2 on a stored quality.json's answers and route its "
                                           "test items again (writes quality-replay.json/.md; evals/quality_replay.py)"),
) -> None:
    """Quality against compute of every policy on the held-out mixed workload (MMLU + HumanEval), in one run."""
    from coe.core.settings import get_settings

    settings = get_settings()
    if experts_file:
        settings = settings.model_copy(update={"experts_file": experts_file})
    if replay:
        from coe_evals.quality_replay import replay as run_replay, replay_markdown

        rep = run_replay(replay, settings, COST_WEIGHTS, typer.echo)
        command = "coe bench quality " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality-replay.json").write_text(json.dumps({**rep, "command": command}, indent=1) + "\n")
        (out / "quality-replay.md").write_text(replay_markdown(rep, command))
        typer.echo(replay_markdown(rep, command))
        return
    per_category = None
    if quick:
        per_category, code, val_code, maths, val_maths = 1, 1, 1, 2, 2
        code_max_tokens = min(code_max_tokens, 192)  # 2 cores: a smoke run of every pair within minutes
    load_before = os.getloadavg()
    started = time.perf_counter()
    res = asyncio.run(run_benchmark(settings, per_subcategory, code, val_per_subcategory, val_code, seed, batch,
                                    lambda m: print(m, file=sys.stderr, flush=True), code_max_tokens, per_category,
                                    maths, val_maths, concurrency))
    weight = settings.router_cost_weight if default_cost_weight is None else default_cost_weight
    res.update({"mode": "quick" if quick else "full", "default_cost_weight": weight,
                "goals": goals(res["policies"], weight), "seconds": round(time.perf_counter() - started, 1),
                "command": "coe bench quality " + " ".join(shlex.quote(a) for a in sys.argv[3:]),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "load_avg": [round(x, 2) for x in (*load_before, *os.getloadavg())]})
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "outcomes.json").write_text(json.dumps(outcomes_file(res), indent=1) + "\n")
    (out / "quality.md").write_text(markdown(res))
    plot(res, out / "quality.png")
    typer.echo(markdown(res))
    typer.echo(f"wrote {out}/quality.json, quality.md, quality.png in {res['seconds']} s")
