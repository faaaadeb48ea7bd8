"""Judge stage 2 again on a stored quality benchmark, without running any model: `coe bench quality --replay FILE`.

quality.json keeps every expert's graded answer to every test item (and, from this version on, to every
validation item). The replay asks the current two-stage artifact's stage 1 for each item's category, refits
stage 2's score table as the service would, and routes the stored test items through the real router
(TwoStageRouter.decide: tau fallback, then the map), at each cost weight; an item's quality and compute are
the stored answer of the expert it is sent to. Fitted on:
  - the stored validation answers (val_records), when the file has them: profiles on validation, report on test;
  - else, on the test answers cross-fitted: FOLDS folds (stratified by domain, by a hash of the id), each
    fold routed by a table fitted on the other folds only, so no item's own answers choose its expert.
Variants side by side: cells by stage-1 predicted category with shrinkage (the service's stage 2), cells by
gold label with shrinkage, cells by gold label with the smoothing used before, (correct + 1) / (total + 2),
and the categories declared in experts.yaml. Where the stored records carry their texts (the composition
benchmark's do), the per-query routers and cascades are refitted on the validation answers and judged too.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from coe_evals import quality_policies as pol
from coe_evals.quality_report import summarise, wilson

FOLDS = 4
VARIANTS = ("predicted + shrinkage", "gold + shrinkage", "gold, (c+1)/(n+2) (before)", "declared")


def _fit_record(rec: dict, predicted: str) -> dict:
    """A stored, graded item as a profile record (routers/two_stage/stage2_fit.py counts it)."""
    return {"id": rec["id"], "subcategory": rec["label"], "category": rec["domain"], "gold": "pass", "predicted": predicted,
            "answers": {e: "pass" if a["correct"] else "fail" for e, a in rec["answers"].items()}}


def _folds(records: list[dict]) -> np.ndarray:
    order = sorted(range(len(records)), key=lambda i: (records[i]["domain"], hashlib.sha256(records[i]["id"].encode()).hexdigest()))
    fold = np.zeros(len(records), dtype=int)
    for rank, i in enumerate(order):
        fold[i] = rank % FOLDS
    return fold


def _before_map(router, fit_records: list[dict], registry, cost_weight: float):
    """Stage 2 as it was before this version: cells by gold label, (correct + 1) / (total + 2)."""
    from routers.two_stage.stage2 import build_map, declared_scores
    from routers.two_stage.stage2_fit import is_right

    table = declared_scores(registry, router.labels, router.artifact.manifest.get("parents"))
    for i, e in enumerate(table.experts):
        for j, label in enumerate(router.labels):
            cell = [is_right(r, e) for r in fit_records if r["subcategory"] == label]
            if cell:
                table.scores[i, j] = (sum(cell) + 1) / (len(cell) + 2)
    table.source = "cells by gold labels, (correct + 1) / (total + 2), no shrinkage"
    return build_map(table, registry, cost_weight=cost_weight,
                     label_weights=router.artifact.manifest.get("label_weights"))


def _picks(ctx, artifact, variant: str, fit_records: list[dict], probs: np.ndarray, cost_weight: float,
           workdir: Path) -> tuple[list[str], str]:
    """The first expert the router picks for each item, with a table fitted on `fit_records`."""
    from routers.two_stage.router import TwoStageRouter

    path = workdir / "profile.json"
    grouping = {"grouping": "predicted", "artifact": artifact.manifest["version"]} if variant.startswith("predicted") else {}
    experts = sorted({e for r in fit_records for e in r["answers"]})
    path.write_text(json.dumps({"version": 1, "experts": {e: {} for e in experts}, "records": fit_records,
                                **({"stage2": grouping} if grouping else {})}))
    profile = "" if variant in ("declared", VARIANTS[2]) else str(path)
    router = TwoStageRouter(replace(ctx, options={**ctx.options, "profile": profile, "cost_weight": cost_weight}), artifact)
    if variant == VARIANTS[2]:
        router.map = _before_map(router, fit_records, ctx.registry, cost_weight)
    return [d.experts[0] for d in router.decide(probs)], router.map.source.rpartition("profile.json: ")[2]


def _per_query(val: list[dict], test: list[dict], test_items: list, params: dict[str, float],
               embedder) -> tuple[list[pol.PolicyRun], dict]:
    """The per-query routers and cascades refitted on the stored validation answers (their texts are stored since
    the composition run), judged on the stored test answers: predictors can be improved without any model run."""
    from coe_evals.quality_perquery import cascade_runs, per_query_runs
    from routers.outcomes import outcomes_from_records

    val_out, test_out = outcomes_from_records(val, params), outcomes_from_records(test, params)
    val_x, test_x = np.asarray(embedder.encode(val_out.texts)), np.asarray(embedder.encode(test_out.texts))
    runs, predictors = per_query_runs(test_items, val_out, test_out, val_x, test_x, params)
    cascades, _ = cascade_runs(test_items, val_out, test_out)
    return runs + cascades, predictors


def replay(result_path: Path, settings, cost_weights: tuple[float, ...], log) -> dict:
    from coe.core.registry import load_registry
    from coe.core.routes import load_routes_if_present
    from coe.data.mixed import load_items
    from coe.embedder import make_embedder
    from coe.expert_runs import Answer, ItemRecord
    from routers import build_router
    from routers.base import RouterContext

    res = json.loads(Path(result_path).read_text())
    registry = load_registry(settings.experts_file)
    embedder = make_embedder(settings)
    ctx = RouterContext(registry, embedder, settings.artifacts_dir, options=dict(settings.router_options.get("two_stage", {})),
                        budget_b=settings.router_budget_b, routes=load_routes_if_present(settings.routes_path))
    stage1 = build_router("two_stage", replace(ctx, options={**ctx.options, "profile": ""}))
    records = res["test_records"] + res.get("val_records", [])
    maths = 1 + max((int(r["id"].rsplit("-", 1)[1]) for r in records if r["domain"] == "maths"), default=-1)
    items = {it.id: it for split in ("validation", "test")
             for it in load_items(settings.cache_dir, split, 10**6, None, n_maths=maths, mmlu_scored=False)}

    def categorised(records: list[dict]) -> np.ndarray:
        texts = [items[r["id"]].text for r in records]
        return stage1.predict_proba(texts, embedder.encode(texts))

    test = res["test_records"]
    test_probs = categorised(test)
    test_items = [ItemRecord(items[r["id"]], answers={e: Answer(**a) for e, a in r["answers"].items()}) for r in test]
    domains = [r["domain"] for r in test]
    cats = [stage1.labels[j] for j in test_probs.argmax(1)]
    test_fit = [_fit_record(r, c) for r, c in zip(test, cats)]
    if res.get("val_records"):
        val = res["val_records"]
        val_cats = [stage1.labels[j] for j in categorised(val).argmax(1)]
        splits = [(np.arange(len(test)), [_fit_record(r, c) for r, c in zip(val, val_cats)])]
        fitted_on = f"the {len(val)} stored validation items"
    else:
        fold = _folds(test)
        splits = [(np.flatnonzero(fold == f), [t for t, g in zip(test_fit, fold) if g != f]) for f in range(FOLDS)]
        fitted_on = f"the test items themselves, cross-fitted in {FOLDS} folds (no validation answers stored)"
    log(f"stage 1 of {stage1.artifact.manifest['version']} on {len(test)} test items; stage 2 fitted on {fitted_on}")
    params = {e: registry.experts[e].params_b for e in test[0]["answers"]}
    experts = list(params)
    summaries = [summarise(pol.single(test_items, e, params), domains) for e in experts]
    summaries.append(summarise(pol.oracle(test_items, experts, params), domains))
    sources = {}
    with tempfile.TemporaryDirectory(prefix="coe-replay-") as tmp:
        for variant in VARIANTS:
            for w in cost_weights:
                picks = [""] * len(test)
                for idx, fit_records in splits:
                    chosen, sources[variant] = _picks(ctx, stage1.artifact, variant, fit_records, test_probs[idx], w, Path(tmp))
                    for i, e in zip(idx, chosen):
                        picks[i] = e
                run = pol.routed(f"two-stage w={w:g} [{variant}]", "two_stage", test_items, picks, params,
                                 {"cost_weight": w, "variant": variant})
                summaries.append(summarise(run, domains))
    predictors = {}
    if res.get("val_records") and all(r.get("text") for r in test + res["val_records"]):
        per_query, predictors = _per_query(res["val_records"], test, test_items, params, embedder)
        summaries += [summarise(run, domains) for run in per_query]
    code = [c for c, d in zip(cats, domains) if d == "humaneval"]
    return {"source": str(result_path), "artifact": stage1.artifact.manifest["version"], "tau": stage1.tau,
            "predictors": predictors,
            "fitted_on": fitted_on, "n_test": len(test), "stage2_tables": sources,
            "humaneval_categories": {c: code.count(c) for c in sorted(set(code))},
            "policies": summaries}


def replay_markdown(rep: dict, command: str) -> str:
    lines = ["# Quality benchmark, stage 2 replayed (no model run)", "", f"Command: `{command}`", "",
             f"Stored answers: `{rep['source']}`, {rep['n_test']} test items. Stage 1: artifact {rep['artifact']} "
             f"(tau {rep['tau']:.3f}); stage 1's categories for the HumanEval items: {rep['humaneval_categories']}. "
             f"Stage 2 fitted on {rep['fitted_on']}.", "",
             "| policy | overall (95% CI) | mmlu | humaneval | maths | compute / query (B·tok) | shares |",
             "|---|---|---|---|---|---|---|"]
    for s in rep["policies"]:
        o = s["overall"]
        lo, hi = wilson(o["correct"], o["n"])
        doms = " | ".join(f"{s[d]['score']:.3f} ({s[d]['correct']}/{s[d]['n']})" if d in s else "-"
                          for d in ("mmlu", "humaneval", "maths"))
        share = ", ".join(f"{e} {v:.0%}" for e, v in s["share"].items())
        lines.append(f"| {s['policy']} | {o['score']:.3f} ({lo:.3f}-{hi:.3f}) | {doms} | {s['compute_per_query']:,.0f} | {share} |")
    lines += ["", "Stage 2 tables (last fold):", ""] + [f"- {v}: {src}" for v, src in rep["stage2_tables"].items()]
    return "\n".join(lines) + "\n"
