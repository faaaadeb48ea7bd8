"""What the maths word-problem templates are made of: a seeded draw that remembers each number the question
states, the rule that redraws a nonsensical draw, and how numbers and prices are written.

A template (coe/data/maths_shop.py, coe/data/maths_measure.py) is a function of a `Draw` that returns the
question and its exact answer as a Fraction; it calls `need`/`whole` to reject a draw whose quantities are
not sensible, and coe/data/maths.py draws again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

NAMES = ["Amara", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Isla", "Jamal", "Kofi", "Lena",
         "Mateo", "Nadia", "Owen", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara", "Zoe",
         "Liam", "Mei", "Noah", "Aisha", "Tom", "Ines", "Oscar"]
GOODS = ["notebooks", "apples", "cupcakes", "pencils", "bottles of juice", "comic books", "packets of seeds",
         "tennis balls", "candles", "sandwiches", "birthday cards", "bags of crisps"]
CURRENCIES = ["$", "£", "€"]


class Redraw(Exception):
    """The numbers drawn give a nonsensical quantity (a negative or fractional count, say): draw again."""


class Draw:
    """One attempt at a template: a seeded source of numbers that remembers each number the question states."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.numbers: dict[str, Fraction] = {}

    def num(self, key: str, lo: int, hi: int, step: int = 1) -> int:
        value = self.rng.randrange(lo, hi + 1, step)
        self.numbers[key] = Fraction(value)
        return value

    def money(self, key: str, lo_cents: int, hi_cents: int, step_cents: int = 25) -> Fraction:
        value = Fraction(self.rng.randrange(lo_cents, hi_cents + 1, step_cents), 100)
        self.numbers[key] = value
        return value

    def one_of(self, key: str, values: Sequence[int | Fraction]) -> Fraction:
        value = Fraction(self.rng.choice(values))
        self.numbers[key] = value
        return value

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def names(self, k: int) -> list[str]:
        return self.rng.sample(NAMES, k)

    @staticmethod
    def need(condition: bool) -> None:
        if not condition:
            raise Redraw

    def whole(self, x: Fraction) -> int:
        """An intermediate count: it has to be a whole, non-negative number."""
        self.need(x.denominator == 1 and x >= 0)
        return int(x)


def canonical(x: Fraction) -> str:
    """'42' or '3.5' (no trailing zeros); only for non-negative values of at most 2 decimal places."""
    cents = x * 100
    if x < 0 or cents.denominator != 1:
        raise ValueError(f"{x} is not a non-negative decimal of at most 2 places")
    whole, frac = divmod(int(cents), 100)
    return str(whole) if frac == 0 else f"{whole}.{frac:02d}".rstrip("0")


def money(cur: str, x: Fraction) -> str:
    """How a price is written: '$12', '£3.50', '€1,250'."""
    whole, frac = divmod(int(x * 100), 100)
    return f"{cur}{whole:,}" if frac == 0 else f"{cur}{whole:,}.{frac:02d}"


Make = Callable[[Draw], tuple[str, Fraction]]  # a template's draw: the question and its exact answer


@dataclass(frozen=True)
class Template:
    name: str
    steps: int
    make: Make


def registry(into: list[Template]) -> Callable[[int], Callable[[Make], Make]]:
    """A decorator factory that adds each template, under its function's name, to `into` in definition order."""
    def template(steps: int) -> Callable[[Make], Make]:
        def register(make: Make) -> Make:
            into.append(Template(make.__name__, steps, make))
            return make
        return register
    return template
