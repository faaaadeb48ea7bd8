"""Generated maths word problems: every answer re-derived here from the numbers the question states, splits that
never share a question, the same problems on every run, and a grader that reads the final number of an answer."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from fractions import Fraction

import pytest

from coe.core.settings import get_settings
from coe.data import maths
from coe.data.maths import Problem, is_correct, load_maths, numeric_answer
from coe.data.mixed import MATHS_ROUTE, load_items
from coe.expert_runs import graded_answer
from workers.jobs import Completion, JobResult

F = Fraction
N = 400


def _mean_of_scores(v: dict[str, Fraction]) -> Fraction:
    scores = [x for key, x in v.items() if re.fullmatch(r"s\d", key)]
    return sum(scores, F(0)) / len(scores)


# Each template's answer, written again from the numbers its question states (Problem.numbers), as a person would.
RECOMPUTE = {
    "shopping_change": lambda v: v["note"] - v["a"] * v["p"] - v["b"] * v["q"],
    "coupon_total": lambda v: v["a"] * v["p"] + v["b"] * v["q"] - v["off"],
    "bulk_price": lambda v: v["n"] / v["k"] * v["price"],
    "multipack_saving": lambda v: v["n"] * v["single"] - v["box"],
    "two_leg_trip": lambda v: (v["d1"] / v["s1"] + v["d2"] / v["s2"]) * 60,
    "tank_fill": lambda v: v["vol"] * (1 - 1 / v["k"]) / v["rate"],
    "discount_buy": lambda v: v["n"] * v["price"] * (1 - v["off"] / 100),
    "tip_split": lambda v: v["bill"] * (1 + v["tip"] / 100) / v["n"],
    "percent_raise": lambda v: v["salary"] + v["salary"] * v["rise"] / 100,
    "percent_change": lambda v: (v["new"] / v["old"] - 1) * 100,
    "fraction_left": lambda v: v["n"] * (1 - 1 / v["a"]) * (1 - 1 / v["b"]),
    "fraction_spent": lambda v: v["total"] * (1 - 1 / v["k"]) - v["lunch"],
    "ratio_difference": lambda v: v["total"] * (v["b"] - v["a"]) / (v["a"] + v["b"]),
    "ratio_part": lambda v: v["total"] * v["b"] / (v["a"] + v["b"]),
    # parent = k * child now, and parent + y = m * (child + y)
    "age_multiple": lambda v: v["years"] * (v["m"] - 1) / (v["k"] - v["m"]),
    "age_sum": lambda v: (v["total"] + v["gap"]) / 2 + v["later"],
    "ribbon_pieces": lambda v: v["length"] * 100 / v["piece"],
    "homework_split": lambda v: (v["hours"] * 60 + v["minutes"]) / v["days"],
    "flour_needed": lambda v: v["grams"] * v["batches"] / 1000 - v["have"],
    "average_score": _mean_of_scores,
    "score_needed": lambda v: v["target"] * (v["k"] + 1) - v["avg"] * v["k"],
    "floor_tiles": lambda v: (v["length"] * v["width"]) / (v["side"] / 100) ** 2,
    "fence_cost": lambda v: (2 * v["length"] + 2 * v["width"] - v["gate"]) * v["price"],
    "paint_litres": lambda v: v["length"] * v["height"] * v["coats"] / v["cover"],
    "packing_days": lambda v: (v["total"] - v["done"]) / (v["workers"] * v["rate"]),
    "painters_days": lambda v: v["w1"] * v["days"] / v["w2"],
    "savings_target": lambda v: (v["target"] - v["have"]) / v["weekly"],
    "pocket_money": lambda v: v["start"] + v["weeks"] * v["gets"] - v["weeks"] * v["spends"],
    "leftover_slices": lambda v: F(int(v["n"] * v["cut"]) % int(v["kids"])),
    "buses_cost": lambda v: math.ceil(v["people"] / v["seats"]) * v["fare"],
    "how_many_more": lambda v: v["k"] * v["a"] - v["fewer"] - v["a"],
    "stall_profit": lambda v: (v["n"] - v["broken"]) * v["price"] - v["n"] * v["cost"],
    "fuel_cost": lambda v: v["km"] / 100 * v["per100"] * v["price"],
    "weekly_pay": lambda v: v["wage"] * (v["hours"] * v["days"] + F(3, 2) * v["extra"]),
    "pages_left": lambda v: v["pages"] - v["monday"] - 2 * v["monday"],
    "recipe_scale": lambda v: v["grams"] / v["serves"] * v["people"],
}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Problem]]:
    return {split: load_maths(split, N) for split in ("validation", "test")}


def _all(splits: dict[str, list[Problem]]) -> list[Problem]:
    return splits["validation"] + splits["test"]


def test_every_answer_is_re_derived_from_the_stated_numbers(splits):
    assert set(RECOMPUTE) == {t.name for t in maths.TEMPLATES}
    for p in _all(splits):
        assert F(p.answer) == RECOMPUTE[p.template](p.numbers), (p.id, p.question, p.answer)


def test_every_number_the_answer_uses_is_written_in_the_question(splits):
    """Problem.numbers is what the question says: a template can't compute from a number the reader never sees."""
    for p in _all(splits):
        stated = {F(x) for x in re.findall(r"\d+(?:\.\d+)?", p.question.replace(",", ""))}
        assert set(p.numbers.values()) <= stated, (p.id, p.question, p.numbers)


def test_answers_are_short_non_negative_decimals_in_canonical_form(splits):
    for p in _all(splits):
        assert re.fullmatch(r"\d+(\.\d?[1-9])?", p.answer), (p.id, p.answer)
        assert 2 <= p.steps <= 4


def test_counts_of_things_and_people_are_whole():
    """The invariants the templates redraw for, on a few that could go wrong: no fractional pieces, people or days."""
    for p in load_maths("test", N):
        if p.template in {"fraction_left", "ribbon_pieces", "floor_tiles", "packing_days", "savings_target",
                          "leftover_slices", "how_many_more", "pages_left", "age_multiple", "homework_split"}:
            assert F(p.answer).denominator == 1 and F(p.answer) > 0, (p.id, p.question, p.answer)
        if p.template == "fraction_left":
            given = p.numbers["n"] / p.numbers["a"]
            assert given.denominator == 1 and ((p.numbers["n"] - given) / p.numbers["b"]).denominator == 1
        if p.template in {"ratio_part", "ratio_difference"}:
            assert (p.numbers["total"] / (p.numbers["a"] + p.numbers["b"])).denominator == 1


def test_at_least_25_templates_in_400_problems(splits):
    for problems in splits.values():
        assert len({p.template for p in problems}) >= 25
        assert all(p.id.startswith(f"maths:{p.template}:") for p in problems)


def test_splits_never_share_a_question_or_an_id(splits):
    val, test = splits["validation"], splits["test"]
    assert not {p.question for p in val} & {p.question for p in test}
    assert not {p.id for p in val} & {p.id for p in test}
    for problems in (val, test):
        assert len({p.question for p in problems}) == len({p.id for p in problems}) == N


def test_the_same_problems_on_every_load_and_in_every_process(splits):
    assert load_maths("validation", N) == splits["validation"]
    assert load_maths("test", 50) == splits["test"][:50], "a shorter load is a prefix of a longer one"
    code = "from coe.data.maths import load_maths; print(repr([(p.id, p.question, p.answer) " \
           "for p in load_maths('test', 60)]))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outs == {repr([(p.id, p.question, p.answer) for p in splits["test"][:60]]) + "\n"}


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        load_maths("train", 5)


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is $1,250.00.", "1250"),
    ("x = 4\nSo 12 apples", "12"),
    ("#### 7", "7"),
    ("\\boxed{3/4}", "0.75"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("42%", "42"),
    ("Answer: 3.50", "3.5"),
    ("First 20 - 8 = 12, then 12 / 3 = 4. The answer is 4. Check: 4 * 3 = 12.", "4"),
    ("She pays €37.25 in total", "37.25"),
    ("The answer is 1/3", "1/3"),
    ("The temperature fell to -5 degrees", "-5"),
    ("no numbers here", None),
])
def test_the_grader_reads_the_final_number(text, expected):
    assert numeric_answer(text) == expected


@pytest.mark.parametrize(("text", "gold", "right"), [
    ("The answer is 3.50.", "3.5", True),
    ("It costs 1,200 in all.", "1200", True),
    ("The answer is $12", "12", True),
    ("So each kid gets 3 slices and 2 are left. The answer is 2.", "2", True),
    ("The answer is 12.", "13", False),
    ("I am not sure.", "5", False),
])
def test_is_correct_compares_exact_numbers(text, gold, right):
    assert is_correct(text, gold) is right


def test_load_items_adds_maths_items_graded_by_their_number():
    cache = get_settings().cache_dir
    assert not [it for it in load_items(cache, "test", 1, 0) if it.domain == "maths"], "n_maths defaults to 0"
    items = load_items(cache, "test", 1, 0, n_maths=5)
    sums = [it for it in items if it.domain == "maths"]
    assert [it.id for it in sums] == [p.id for p in load_maths("test", 5)] and items[-5:] == sums
    item = sums[0]
    assert item.label == MATHS_ROUTE and item.choices is None and item.gold == load_maths("test", 1)[0].answer
    assert item.text in item.messages[-1]["content"] and "The answer is N." in item.messages[-1]["content"]
    answer = f"Let me work it out.\nThe answer is {item.gold}."
    result = JobResult("job", "terse", Completion(answer, 40, 12))
    assert graded_answer("terse", item, result).correct
    wrong = JobResult("job", "terse", Completion("The answer is 100000.", 40, 5))
    assert not graded_answer("terse", item, wrong).correct
