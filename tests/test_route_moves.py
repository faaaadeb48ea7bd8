"""Routes that do not steal: `coe train` reports the validation items a new route takes from the older ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coe.route_moves import compare, warnings

ROOT = Path(__file__).resolve().parent.parent
ROUTES = """
version: 1
routes:
  - {name: coding, kind: task, description: code, examples: ["fix my regex", "write a python function", "what does chmod do"]}
  - {name: history, kind: subject, examples: ["who was Napoleon?", "when did the Berlin wall fall?"]}
"""
LOOPS = """  - name: loops
    kind: task
    description: "Loops in any language: for, while, do-while, iterating, breaking out, infinite loops."
    examples: ["how do I write a do-while loop in python", "how do I write a foreach loop in python",
               "how do I write a counting loop in python", "how do I write a labelled loop in python",
               "how do I write an endless loop in python", "how do I write a parallel loop in python"]
"""
EXPERTS = ("version: 1\nexperts:\n  - {name: e, engine: vllm, model: org/m, device: 'gpu:0', params_b: 1, "
           "categories: [coding, history, loops], fallback: true}\n")


def test_moves_are_counted_per_previous_route_with_where_they_went_and_who_was_right():
    before = ["coding"] * 10 + ["history"] * 10
    after = ["coding"] * 6 + ["loops"] * 3 + ["history"] + ["history"] * 10
    truth = ["coding"] * 9 + ["loops"] + ["history"] * 10
    moves = {m.route: m for m in compare(before, after, truth)}
    assert moves["coding"].held == 10 and moves["coding"].moved_to == {"loops": 3, "history": 1}
    assert moves["coding"].right_before == 3 and moves["coding"].right_after == 0  # the three loops were coding's
    assert moves["history"].moved == 0
    [line] = warnings(list(moves.values()), share=0.05)
    assert line.startswith("route 'coding': 4 of its 10 validation items (40%) now go to loops (3), history (1)")
    assert warnings(list(moves.values()), share=0.5) == []


def test_a_few_moved_items_of_a_small_route_are_not_warned_about():
    moves = compare(["law"] * 4, ["law", "law", "law", "history"], ["law"] * 4)
    assert moves[0].share == 0.25 and warnings(moves, share=0.05) == []


def test_coe_train_reports_and_warns_when_a_new_route_takes_an_older_routes_requests(tmp_path):
    """Train on coding + history, then declare a `loops` route: the coding requests about loops move to it."""
    (tmp_path / "routes.yaml").write_text(ROUTES)
    (tmp_path / "experts.yaml").write_text(EXPERTS)
    lines = ["text,label,split"]
    lines += [f"how do I write a {w} loop in python,coding,tune" for w in ("for", "while", "nested", "async", "infinite", "reverse")]
    lines += [f"fix the {w} error in my javascript,coding,tune" for w in ("type", "syntax", "reference", "range")]
    lines += [f"who won the battle of {w},history,tune" for w in ("Hastings", "Waterloo", "Actium", "Tours", "Lepanto", "Agincourt")]
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "COE_EXPERTS_FILE": str(tmp_path / "experts.yaml"), "COE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}

    def train():
        out = subprocess.run([sys.executable, "-m", "coe.cli", "train", "--data", "mine.csv"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return " ".join(out.stdout.split())  # rich wraps long lines

    first = train()
    assert "route moves: no previous artifact to compare with" in first
    (tmp_path / "routes.yaml").write_text(ROUTES + LOOPS)
    second = train()
    assert "route moves against" in second and "validation items now take another route" in second
    assert "warning: route 'coding':" in second and "now go to loops" in second
    manifests = sorted((tmp_path / "artifacts" / "two_stage").glob("*/manifest.json"))
    review = json.loads(manifests[-1].read_text())["review"]
    assert review["n_items"] == 16 and review["moves"]["coding"]["moved_to"]["loops"] >= 3
    assert review["moves"]["history"]["moved"] == 0
