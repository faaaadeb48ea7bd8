"""`coe profile --data FILE`: the user's own questions (multiple choice by letter log-likelihood, or exact match)
answered by real SmolLM2 experts through the queue and worker, written as the profile both routers read, with
stage 2's cells grouped by what the trained stage 1 predicts; bad files fail with file, line and field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coe.core.registry import load_registry
from coe.core.settings import get_settings
from coe.data.answered import exact_match, normalise, read_answered
from coe.data.labelled import DataFileError
from coe.embedder import make_embedder
from routers.base import RouterContext, build_router

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    {"text": "What is 2 + 2?", "label": "math", "choices": ["3", "4", "5", "6"], "answer": "B"},
    {"text": "Who was the first president of the United States?", "label": "history",
     "choices": ["Lincoln", "Washington"], "answer": "b"},
    {"text": "What is the capital of France?", "label": "geography", "answer": "Paris"},
    {"text": "Held-out question", "label": "math", "answer": "1", "split": "test"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_profile(tmp_path: Path, data: Path, out: Path, artifacts: Path) -> subprocess.CompletedProcess:
    experts = tmp_path / "experts.yaml"
    shutil.copy(ROOT / "tests" / "fixtures" / "working-experts.yaml", experts)
    env = {**os.environ, "COE_EXPERTS_FILE": str(experts), "COE_ARTIFACTS_DIR": str(artifacts), "COE_TORCH_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "coe.cli", "profile", "--data", str(data), "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_profile_from_a_users_file_end_to_end(tmp_path, mmlu_slice_artifacts):
    data = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    out = tmp_path / "profile.json"
    proc = run_profile(tmp_path, data, out, mmlu_slice_artifacts)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    said = " ".join(proc.stdout.split())  # rich wraps long lines
    assert "2 multiple choice, 1 exact match" in said  # the test row is held out
    prof = json.loads(out.read_text())
    names = ["stem", "humanities", "generalist", "aggregator"]
    assert list(prof["experts"]) == names and prof["n_questions"] == 3
    version = (mmlu_slice_artifacts / "two_stage" / "LATEST").read_text().strip()
    assert prof["stage2"]["grouping"] == "predicted" and prof["stage2"]["artifact"] == version
    assert f"stage 2 cells: the categories stage 1 of {version} predicts" in said
    by_label = {r["subcategory"]: r for r in prof["records"]}
    assert set(by_label) == {"math", "history", "geography"}
    assert set(by_label["math"]["answers"].values()) <= set("ABCD") and by_label["math"]["gold"] == "B"
    assert set(by_label["history"]["answers"].values()) <= {"A", "B"} and by_label["history"]["gold"] == "B"
    assert by_label["geography"]["gold"] == "pass" and set(by_label["geography"]["answers"].values()) <= {"pass", "fail"}
    for name in names:
        e = prof["experts"][name]
        assert e["total"] == 3 and e["prompt_tokens"] > 0
        assert sum(c["total"] for c in e["predicted_categories"].values()) == 3
        assert set(e["predicted_categories"]) == {r["predicted"] for r in prof["records"]}
    # the service's two-stage router reads it as cells by its own stage 1's predictions
    settings = get_settings()
    router = build_router("two_stage", RouterContext(load_registry(tmp_path / "experts.yaml"), make_embedder(settings),
                                                     mmlu_slice_artifacts, options={"profile": str(out)}))
    assert "stage-1 predicted categories" in router.map.source


def test_a_bad_file_names_file_line_and_field_and_writes_nothing(tmp_path, mmlu_slice_artifacts):
    rows = [ROWS[0], {"text": "Q?", "label": "math", "answer": ""},
            {"text": "Q?", "label": "math", "choices": ["a", "b", "c", "d"], "answer": "E"},
            {"text": "", "label": "math", "answer": "x"}]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "profile.json"
    out.write_text('{"experts": {}}')  # an existing profile stays as it was
    proc = run_profile(tmp_path, data, out, mmlu_slice_artifacts)
    assert proc.returncode == 1
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "bad.jsonl" in said and "line 2: empty 'answer'" in said and "line 4: empty 'text'" in said
    assert "line 3: 'answer' must be the letter of one of the 4 choices (A-D), got 'E'" in said
    assert out.read_text() == '{"experts": {}}'


def test_csv_choices_and_answer_checks(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('text,label,choices,answer\n'
                    'Pick one,math,"[""1"", ""2"", ""3""]",c\n'
                    'Pick two,math,yes | no,A\n'
                    'Say it,chat,,Hello there\n')
    rows = read_answered(path)
    assert [r.choices for r in rows] == [("1", "2", "3"), ("yes", "no"), None]
    assert [r.answer for r in rows] == ["C", "A", "Hello there"]
    with pytest.raises(DataFileError, match="labels that are not routes: 'chat'"):
        read_answered(path, known_labels=["math"])
    no_answer = tmp_path / "no-answer.jsonl"
    write_jsonl(no_answer, [{"text": "q", "label": "math"}])
    with pytest.raises(DataFileError, match="missing column 'answer'"):
        read_answered(no_answer)
    one = tmp_path / "one.jsonl"
    write_jsonl(one, [{"text": "q", "label": "math", "choices": ["only"], "answer": "A"}])
    with pytest.raises(DataFileError, match="line 1: 'choices' has 1 options; give 2 to 10"):
        read_answered(one)


def test_exact_match_is_normalised():
    assert normalise("  The Eiffel-Tower!  ") == "eiffeltower"
    assert exact_match("Paris.", "paris") and exact_match("the answer", "Answer")
    assert not exact_match("Paris is the capital", "Paris")


def outcomes_experts(tmp_path: Path, answers: dict[str, list[bool]]) -> Path:
    """An experts file with an outcomes.json beside it, as `coe bench quality` writes them, for two experts."""
    experts = tmp_path / "experts.yaml"
    shutil.copy(ROOT / "tests" / "fixtures" / "working-experts.yaml", experts)
    texts = ["What is 7 times 8?", "Who wrote Hamlet?", "Write a function that reverses a string."]
    domains = ["maths", "mmlu", "humaneval"]
    records = [{"id": f"item-{i}", "domain": d, "label": d, "text": t, "skills": [],
                "answers": {e: {"correct": ok[i], "prompt_tokens": 20, "completion_tokens": 10, "confidence": None}
                            for e, ok in answers.items()}}
               for i, (t, d) in enumerate(zip(texts, domains))]
    (tmp_path / "outcomes.json").write_text(json.dumps(
        {"version": 1, "source": "a test", "experts": {e: {"params_b": 0.1, "strategy": "direct"} for e in answers},
         "default_policy": {"router": "two_stage", "options": {}}, "records": records}))
    return experts


def test_set_up_turns_the_measured_outcomes_into_stage_2s_profile_without_running_a_model(tmp_path, mmlu_slice_artifacts):
    experts = outcomes_experts(tmp_path, {"stem": [True, False, True], "humanities": [False, True, False]})
    out = tmp_path / "profile.json"
    env = {**os.environ, "COE_EXPERTS_FILE": str(experts), "COE_ARTIFACTS_DIR": str(mmlu_slice_artifacts)}
    cmd = [sys.executable, "-m", "coe.cli", "profile", "--data", "outcomes", "--if-stale", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prof = json.loads(out.read_text())
    assert list(prof["experts"]) == ["stem", "humanities"]  # the registered experts the outcomes measured
    assert (prof["experts"]["stem"]["correct"], prof["experts"]["humanities"]["correct"]) == (2, 1)
    version = (mmlu_slice_artifacts / "two_stage" / "LATEST").read_text().strip()
    assert prof["stage2"] == {**prof["stage2"], "grouping": "predicted", "artifact": version}
    router = build_router("two_stage", RouterContext(load_registry(experts), make_embedder(get_settings()),
                                                     mmlu_slice_artifacts, options={"profile": str(out)}))
    assert "stage-1 predicted categories" in router.map.source

    stamp = out.stat().st_mtime_ns  # a second set-up finds it current and leaves it
    assert subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    assert out.stat().st_mtime_ns == stamp

    out.write_text(json.dumps({"version": 1, "data": "mine.jsonl", "experts": {}}))  # a profile the user measured
    assert subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    assert json.loads(out.read_text())["data"] == "mine.jsonl"
