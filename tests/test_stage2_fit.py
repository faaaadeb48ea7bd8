"""Stage 2 fitted on a profile's per-item answers: cells by stage 1's predicted category, small cells shrunk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coe.core.registry import parse_registry
from routers.two_stage.stage2 import build_map, load_scores
from routers.two_stage.stage2_fit import PRIOR_GRID, Counts, fit_profile, loo_log_likelihood

ROOT = Path(__file__).resolve().parent.parent
EXPERTS = """
version: 1
experts:
  - {name: coder, engine: vllm, model: org/coder, device: "gpu:0", params_b: 0.5, categories: [coding, computer science]}
  - {name: chat, engine: vllm, model: org/chat, device: "gpu:0", params_b: 0.135, categories: [law, history, chat],
     fallback: true}
"""
SUBJECTS = ["math", "physics", "history", "law", "economics", "biology"]


@pytest.fixture(scope="module")
def registry():
    return parse_registry(EXPERTS, ROOT / "t.yaml")


def record(i: str, gold_label: str, group: str, right: dict[str, bool], predicted: str | None = None) -> dict:
    """A profile record as coe.expert_runs / coe.profiling write it: the gold answer and each expert's."""
    rec = {"id": i, "subcategory": gold_label, "category": group, "gold": "A",
           "answers": {e: "A" if ok else "B" for e, ok in right.items()}}
    if predicted:
        rec["predicted"] = predicted
    return rec


def save(tmp_path: Path, records: list[dict], stage2: dict | None = None) -> Path:
    experts = {e: {"categories": {}} for e in records[0]["answers"]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"version": 1, "experts": experts, "records": records, **({"stage2": stage2} if stage2 else {})}))
    return path


def test_a_tiny_cell_does_not_flip_the_choice(tmp_path, registry):
    # coder is right on 6 of 8 items of every subject, chat on 2; on `other`'s only two items chat happened to win
    records = [record(f"{s}{i}", s, "mmlu", {"coder": i < 6, "chat": i in (5, 7)}) for s in SUBJECTS for i in range(8)]
    records += [record(f"other{i}", "other", "mmlu", {"coder": False, "chat": True}) for i in range(2)]
    path = save(tmp_path, records)
    labels = SUBJECTS + ["other"]
    table = load_scores(registry, labels, path)
    assert "shrinkage" in table.source and "leave-one-out" in table.source
    fit = fit_profile(json.loads(path.read_text()), ["coder", "chat"], labels)
    assert fit.prior_strength >= 8  # the subjects do not differ, so the data asks for strong shrinkage
    assert build_map(table, registry).assignment["other"] == "coder"
    assert table.score("chat", "other") < table.score("coder", "other")
    # the cell alone (almost no shrinkage) would have flipped it: that is what shrinkage prevents
    raw = load_scores(registry, labels, path, prior_strength=0.01)
    assert build_map(raw, registry).assignment["other"] == "chat"


def code_and_knowledge_records() -> list[dict]:
    """The quality benchmark's failure, in small: stage 1 calls HumanEval requests `computer science`; the coder
    passes 11 of 16 of them, the chat model none; on 3 MMLU computer-science questions chat is right once."""
    recs = [record(f"code{i}", "coding", "humaneval", {"coder": i < 11, "chat": False}, "computer science")
            for i in range(16)]
    recs += [record(f"cs{i}", "computer science", "mmlu", {"coder": False, "chat": i == 0}, "computer science")
             for i in range(3)]
    recs += [record(f"{s}{i}", s, "mmlu", {"coder": i == 0, "chat": i == 1}, s) for s in SUBJECTS for i in range(3)]
    return recs


def test_predicted_grouping_routes_code_to_the_coder(tmp_path, registry):
    path = save(tmp_path, code_and_knowledge_records(), {"grouping": "predicted", "artifact": "v1"})
    labels = SUBJECTS + ["computer science", "coding"]
    table = load_scores(registry, labels, path, artifact_version="v1")
    assert "stage-1 predicted categories" in table.source
    m = build_map(table, registry)
    assert m.assignment["computer science"] == "coder"
    assert any("coding" in n and "declared" in n for n in m.notes)  # stage 1 never said `coding`: declared score
    assert m.assignment["coding"] == "coder"


def test_gold_grouping_when_the_profile_was_grouped_by_another_artifact(tmp_path, registry):
    path = save(tmp_path, code_and_knowledge_records(), {"grouping": "predicted", "artifact": "v1"})
    labels = SUBJECTS + ["computer science", "coding"]
    table = load_scores(registry, labels, path, artifact_version="v2")
    assert "gold labels" in table.source
    assert any("artifact v1" in n and "v2" in n and "coe profile" in n for n in table.notes)
    # by gold label the code items sit under `coding`, and `computer science` holds the 3 MMLU questions only
    profile = json.loads(path.read_text())
    gold = fit_profile(profile, ["coder", "chat"], labels, artifact_version="v2")
    predicted = fit_profile(profile, ["coder", "chat"], labels, artifact_version="v1")
    assert (gold.items[labels.index("computer science")], gold.items[labels.index("coding")]) == (3, 16)
    assert (predicted.items[labels.index("computer science")], predicted.items[labels.index("coding")]) == (19, 0)
    # and those 3 questions, where chat was right once, decide it: the quality benchmark's failure
    assert build_map(table, registry).assignment["computer science"] == "chat"
    other_stage1 = load_scores(registry, labels, path)  # a router with its own stage 1 (kNN, random) asks by gold label
    assert "gold labels" in other_stage1.source


def test_shrunk_cell_formula():
    # one group, two cells; expert 0: 3/4 right in cell 0 and 0/1 in cell 1
    y = np.array([[1], [1], [1], [0], [0]], dtype=float)
    cell, group = np.array([0, 0, 0, 0, 1]), np.zeros(5, dtype=int)
    m, k = 4.0, 2.0
    s = Counts.of(y, cell, group, 2, 1).cell_scores(m, k)
    overall = (3 + 1) / (5 + 2)
    g = (3 + k * overall) / (5 + k)
    assert s[0, 0] == pytest.approx((3 + m * g) / (4 + m))
    assert s[1, 0] == pytest.approx((0 + m * g) / (1 + m))
    assert np.isnan(s[2, 0])  # nothing outside the labels
    assert PRIOR_GRID[0] < m < PRIOR_GRID[-1]


def test_leave_one_out_equals_refitting_without_each_item():
    rng = np.random.default_rng(3)
    n, labels, groups = 40, 4, 2
    y = (rng.random((n, 3)) < [0.3, 0.5, 0.7]).astype(float)
    cell, group = rng.integers(0, labels + 1, n), rng.integers(0, groups, n)  # label `labels`: outside the table
    m, k = 4.0, 2.0
    expected = 0.0
    for r in range(n):
        rest = np.arange(n) != r
        if cell[r] == labels or not (cell[rest] == cell[r]).any():
            continue  # outside the table, or alone in its cell: nothing to predict it from
        s = Counts.of(y[rest], cell[rest], group[rest], labels, groups).cell_scores(m, k, cell[r])
        expected += float(np.sum(y[r] * np.log(s) + (1 - y[r]) * np.log(1 - s)))
    got = loo_log_likelihood(Counts.of(y, cell, group, labels, groups), y, cell, group, m, k, labels)
    assert got == pytest.approx(expected)


def test_count_only_profile_shrinks_toward_the_experts_overall_accuracy(tmp_path, registry):
    path = tmp_path / "profile.json"
    cells = {"coder": {"math": (9, 10), "law": (1, 2)}, "chat": {"math": (2, 10), "law": (2, 2)}}
    path.write_text(json.dumps({"experts": {e: {"categories": {k: {"correct": c, "total": t} for k, (c, t) in cs.items()}}
                                            for e, cs in cells.items()}}))
    table = load_scores(registry, ["math", "law", "history"], path)
    assert table.score("coder", "law") == pytest.approx((1 + 8 * (10 + 1) / (12 + 2)) / (2 + 8))
    assert table.score("chat", "history") == 1.0  # no item: the declared score
    assert "counts only" in " ".join(table.notes)
    assert build_map(table, registry).assignment["law"] == "coder"
