"""Grade-school maths word problems, generated here, with answers computed by code; and their grader.

No maths word-problem data set ships with the packages this project can install and no hub is reachable, so
the maths domain of the quality benchmark is generated. Nothing is copied from a public data set: each of the
36 templates (coe/data/maths_shop.py, coe/data/maths_measure.py) draws names, objects and numbers from a
seeded `random.Random`, writes the question in one of a few wordings, and computes the answer exactly in
Python with `fractions.Fraction` from the drawn numbers (coe/data/maths_draw.py). A draw is rejected and
redrawn (`Redraw`) until every quantity on the way is sensible (no negative or fractional counts of people or
things) and the answer is a non-negative whole number or a decimal of at most 2 places, so every answer is
verified and has one canonical form ('42', '3.5').

Splits: the i-th problem of a split comes from `random.Random(SEEDS[split] + i)` and template i mod the number
of templates; a question belongs to the split named by the parity of the first byte of its sha256, and a draw
for the other split (or a repeat within the split) is redrawn. So the splits never share a question, and a
split is the same on every run and Python version (no `hash()`, only `random.Random(int)`).

The grader reads the final number out of a model's prose or program output (`numeric_answer`) and compares it
with the gold answer as an exact fraction (`is_correct`: '3.50' == '3.5', '$1,200' == '1200').
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from coe.data import maths_measure, maths_shop
from coe.data.maths_draw import Draw, Redraw, Template, canonical

Split = Literal["validation", "test"]
SEEDS: dict[str, int] = {"validation": 1_000_000, "test": 2_000_000}
MAX_DRAWS = 5_000
MAX_TOKENS = 384
INSTRUCTION = ("Work it out step by step, then give the final answer as a number on the last line, "
               "in the form 'The answer is N.'")

TEMPLATES: list[Template] = maths_shop.TEMPLATES + maths_measure.TEMPLATES


@dataclass(frozen=True)
class Problem:
    id: str  # 'maths:<template>:<split>-<i>'
    question: str
    answer: str  # canonical: '42' or '3.5'
    template: str
    steps: int  # arithmetic operations from the stated numbers to the answer
    numbers: dict[str, Fraction] = field(default_factory=dict, hash=False)  # every number the question states

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": f"{self.question}\n\n{INSTRUCTION}"}]


def _split_of(question: str) -> str:
    return "validation" if hashlib.sha256(question.encode("utf-8")).digest()[0] % 2 == 0 else "test"


def _problem(t: Template, rng: random.Random, split: str, i: int, seen: set[str]) -> Problem:
    """The first draw of template `t` that is sensible, has a short answer, belongs to `split` and is new."""
    for _ in range(MAX_DRAWS):
        d = Draw(rng)
        try:
            question, answer = t.make(d)
        except Redraw:
            continue
        if answer < 0 or (answer * 100).denominator != 1 or _split_of(question) != split or question in seen:
            continue
        return Problem(f"maths:{t.name}:{split}-{i}", question, canonical(answer), t.name, t.steps, d.numbers)
    raise RuntimeError(f"template {t.name} found no problem for {split} item {i} in {MAX_DRAWS} draws")


def load_maths(split: str, n: int) -> list[Problem]:
    """The first `n` problems of `split` ('validation' or 'test'): templates in turn, the same on every run."""
    if split not in SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SEEDS)}")
    problems: list[Problem] = []
    seen: set[str] = set()
    for i in range(n):
        p = _problem(TEMPLATES[i % len(TEMPLATES)], random.Random(SEEDS[split] + i), split, i, seen)
        seen.add(p.question)
        problems.append(p)
    return problems


_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUMBER})")
_FRAC_RE = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")
_MARKERS = [re.compile(p, re.IGNORECASE) for p in (
    r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}",
    r"####\s*([^\n]*)",
    r"answer\s+is\s*:?\s*([^\n]*)",
    r"answer\s*:\s*([^\n]*)",
)]


def _value(token: str) -> Fraction | None:
    try:
        return Fraction(token.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _as_text(x: Fraction) -> str:
    """A terminating decimal as '3.5'; anything else as 'p/q'."""
    d = x.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return str(x)
    sign, x = ("-", -x) if x < 0 else ("", x)
    places = 0
    while (x * 10**places).denominator != 1:
        places += 1
    whole, frac = divmod(int(x * 10**places), 10**places)
    return sign + (f"{whole}.{frac:0{places}d}" if places else str(whole))


def numeric_answer(text: str) -> str | None:
    """The final number of an answer: the one after the last explicit marker ('\\boxed{X}', '#### X',
    'the answer is X', 'Answer: X'), else the last number in the text. Currency signs, thousands commas,
    a trailing full stop, units and % are ignored; a fraction '3/4' reads as 0.75."""
    text = _FRAC_RE.sub(r"\1/\2", text)
    marked = [m for rx in _MARKERS for m in rx.finditer(text)]
    for m in sorted(marked, key=lambda m: m.start(), reverse=True):
        found = _NUMBER_RE.search(m.group(1))
        if found and (value := _value(found.group())) is not None:
            return _as_text(value)
    for token in reversed(_NUMBER_RE.findall(text)):
        if (value := _value(token)) is not None:
            return _as_text(value)
    return None


def is_correct(text: str, gold: str) -> bool:
    """Whether the answer's final number equals the gold answer exactly ('3.50' == '3.5', '$1,200' == '1200')."""
    answer = numeric_answer(text)
    return answer is not None and Fraction(answer) == Fraction(gold)
