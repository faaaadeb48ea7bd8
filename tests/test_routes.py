"""routes.yaml and labelled data files: every problem named with file, route or line, and field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coe.core.registry import RegistryError, parse_registry
from coe.core.routes import RoutesError, load_routes, parse_routes
from coe.data.labelled import DataFileError, read_labelled

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
version: 1
routes:
  - {name: coding, kind: task, description: code, examples: ["fix my regex", "write a python loop", "what does chmod do"]}
  - {name: history, kind: subject, examples: ["who was Napoleon?"]}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RoutesError) as info:
        parse_routes(text, Path("routes.yaml"))
    return info.value.problems


def test_the_shipped_routes_file_is_valid():
    routes = load_routes(ROOT / "routes.yaml")
    assert {"coding", "writing", "chat", "reasoning", "extraction", "math_word_problems"} == set(routes.of_kind("task"))
    assert len(routes.of_kind("subject")) == 17 and "computer science" in routes.names


NEAR_COPY = 0.6
"""Cosine (service encoder) above which an example counts as a near copy of a held-out request. The tune rows,
written beside the test rows, all stay below 0.66 and 90% below 0.52; of 388 examples first written for the routes,
26% were above 0.8 (same canonical questions): those above 0.6 were dropped, see docs/routing.md."""


def test_route_examples_are_no_near_copies_of_held_out_user_requests():
    """The shipped user requests' test split is only reported on: no example of routes.yaml may restate one of its rows."""
    from coe.core.settings import get_settings
    from coe.data.labelled import USER_REQUESTS
    from coe.embedder import make_embedder

    embedder = make_embedder(get_settings())
    examples = [text for text, _ in load_routes(ROOT / "routes.yaml").examples()]
    held_out = [r.text for r in read_labelled(USER_REQUESTS) if r.split == "test"]
    assert not set(examples) & set(held_out)
    nearest = (embedder.encode(examples) @ embedder.encode(held_out).T).max(axis=1)
    near = [(round(float(s), 2), t) for s, t in zip(nearest, examples) if s > NEAR_COPY]
    assert not near, f"examples within cosine {NEAR_COPY} of a held-out request: {near}"


@pytest.mark.parametrize("change, expected", [
    (("kind: task, description: code", "kind: task, colour: red, description: code"), "route 'coding' (routes[0]), field 'colour': unknown field"),
    (("name: history", "name: coding"), "route 'coding': duplicate name"),
    (('examples: ["fix my regex", "write a python loop", "what does chmod do"]', "examples: []"),
     "route 'coding' (routes[0]): Value error, a task route is learned from its examples: give at least 3"),
    (("kind: subject", "kind: topic"), "route 'history' (routes[1]), field 'kind': Input should be 'task' or 'subject'"),
    (("name: coding", "name: Coding!"), "field 'name': String should match pattern"),
    (('"who was Napoleon?"', '"fix my regex"'), "route 'history': example 'fix my regex' is also an example of route 'coding'"),
    (('"who was Napoleon?"', '"' + "x" * 2001 + '"'), "field 'examples': Value error, example 0 has 2001 characters; at most 2000"),
    (('"who was Napoleon?"', '"  "'), "field 'examples': Value error, example 0 is empty"),
])
def test_routes_file_problems_name_file_route_and_field(change, expected):
    found = problems(GOOD.replace(*change))
    assert any(p.startswith("routes.yaml") for p in found)
    assert any(expected.replace("Value error, ", "") in p for p in found), found


def test_routes_file_that_is_not_a_mapping_or_yaml():
    assert "must be a mapping" in problems("- a\n- b\n")[0]
    assert "not valid YAML" in problems("routes: [unclosed")[0]


def test_expert_categories_must_name_routes():
    routes = parse_routes(GOOD, Path("routes.yaml"))
    experts = """
version: 1
experts:
  - {name: coder, engine: vllm, model: org/m, device: "gpu:0", params_b: 1, categories: [coding, astrology]}
"""
    with pytest.raises(RegistryError) as info:
        parse_registry(experts, Path("experts.yaml"), routes)
    assert info.value.problems == [
        "experts.yaml, expert 'coder' (experts[0]), field 'categories': ['astrology'] is not a route of routes.yaml "
        "(add the route there, or use one of: coding, history)"]
    parse_registry(experts, Path("experts.yaml"))  # without a routes file, categories are free text


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_labelled_jsonl_and_csv(tmp_path):
    rows = read_labelled(write(tmp_path / "d.jsonl", '{"text": "fix my regex", "label": "coding", "split": "test"}\n\n'
                                                     '{"text": "who was Napoleon?", "label": "history", "id": 7}\n'), {"coding", "history"})
    assert [(r.label, r.split) for r in rows] == [("coding", "test"), ("history", "tune")]
    rows = read_labelled(write(tmp_path / "d.csv", 'text,label,split\n"a, b and c",coding,train\nwho?,history,validation\n'))
    assert [(r.text, r.split, r.line) for r in rows] == [("a, b and c", "train", 2), ("who?", "validation", 3)]


@pytest.mark.parametrize("name, text, expected", [
    ("d.csv", "question,label\nwho?,history\n", "missing column 'text' (found: question, label)"),
    ("d.csv", "text,label\nwho?,\n,history\n", "line 2: empty 'label'"),
    ("d.jsonl", '{"text": "x", "label": "history", "split": "dev"}\n', "line 1: split 'dev' is not one of train, validation, tune, test"),
    ("d.jsonl", '{"text": "x", "label": "history"}\nnot json\n', "line 2: not valid JSON"),
    ("d.jsonl", "", "no rows: the file is empty"),
    ("d.txt", "text,label\n", "unknown format '.txt'"),
    ("d.jsonl", '{"text": "x", "label": "cooking"}\n{"text": "y", "label": "cooking"}\n{"text": "z", "label": "art"}\n',
     "labels that are not routes: 'art' (1 rows), 'cooking' (2 rows)"),
])
def test_labelled_file_problems(tmp_path, name, text, expected):
    with pytest.raises(DataFileError) as info:
        read_labelled(write(tmp_path / name, text), {"coding", "history"})
    assert any(expected in p for p in info.value.problems), info.value.problems
    assert str(tmp_path / name) in str(info.value)


def coe(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coe.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "1000", **env}, timeout=600)


def test_routes_validate_and_list_commands(tmp_path):
    env = {"COE_EXPERTS_FILE": str(ROOT / "experts.yaml"), "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    ok = coe("routes", "validate", env=env, cwd=ROOT)
    assert ok.returncode == 0 and "23 routes (6 task, 17 subject)" in ok.stdout
    assert "coding" in coe("routes", "list", env=env, cwd=ROOT).stdout
    bad = write(tmp_path / "routes.yaml", GOOD.replace("kind: subject", "kind: topic"))
    out = coe("routes", "validate", "--routes", str(bad), env=env, cwd=ROOT)
    assert out.returncode == 1 and "route 'history' (routes[1]), field 'kind'" in out.stderr


def test_train_refuses_bad_data_and_writes_nothing(tmp_path):
    write(tmp_path / "routes.yaml", GOOD)
    write(tmp_path / "experts.yaml", "version: 1\nexperts:\n  - {name: e, engine: vllm, model: org/m, device: 'gpu:0', "
                                     "params_b: 1, categories: [coding], fallback: true}\n")
    env = {"COE_EXPERTS_FILE": str(tmp_path / "experts.yaml"), "COE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    unknown = write(tmp_path / "u.jsonl", json.dumps({"text": "bake bread", "label": "cooking"}) + "\n")
    out = coe("train", "--data", str(unknown), env=env, cwd=tmp_path)
    assert out.returncode == 1 and "labels that are not routes: 'cooking' (1 rows)" in out.stderr
    wrong = write(tmp_path / "w.csv", "prompt,label\nfix it,coding\n")
    out = coe("train", "--data", str(wrong), env=env, cwd=tmp_path)
    assert out.returncode == 1 and "missing column 'text' (found: prompt, label)" in out.stderr
    empty = write(tmp_path / "e.csv", "text,label\nfix it,coding\n,history\n")
    out = coe("train", "--data", str(empty), env=env, cwd=tmp_path)
    assert out.returncode == 1 and "line 3: empty 'text'" in out.stderr
    assert not (tmp_path / "artifacts").exists()


def test_train_from_a_labelled_file_alone(tmp_path):
    """`coe train --data file.csv` with no MMLU: the routes' examples plus the file's rows make a working router."""
    write(tmp_path / "routes.yaml", GOOD)
    write(tmp_path / "experts.yaml", "version: 1\nexperts:\n  - {name: e, engine: vllm, model: org/m, device: 'gpu:0', "
                                     "params_b: 1, categories: [coding, history], fallback: true}\n")
    lines = ["text,label,split"]
    lines += [f"how do I write a {w} loop in python,coding,tune" for w in ("for", "while", "nested", "async", "infinite", "reverse")]
    lines += [f"who won the battle of {w},history,tune" for w in ("Hastings", "Waterloo", "Actium", "Tours", "Lepanto", "Agincourt")]
    lines += ["why does my javascript promise never resolve,coding,test", "when did the Roman empire fall,history,test"]
    data = write(tmp_path / "mine.csv", "\n".join(lines) + "\n")
    env = {"COE_EXPERTS_FILE": str(tmp_path / "experts.yaml"), "COE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    out = coe("train", "--data", str(data), env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    manifest = json.loads(next((tmp_path / "artifacts" / "two_stage").glob("*/manifest.json")).read_text())
    assert manifest["labels"] == ["coding", "history"] and manifest["stage1"] == "RouteMixture"
    assert manifest["routes"]["names"] == ["coding", "history"] and manifest["metrics"]["mine.csv"]["accuracy"] == 1.0
    assert not list((tmp_path / "artifacts" / "two_stage").glob(".*tmp"))
