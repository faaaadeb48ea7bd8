"""Grade-school maths word problems, generated here, with answers computed by code; and their grader.

No maths word-problem data set ships with the packages this project can install and no hub is reachable, so
the maths domain of the quality benchmark is generated. Nothing is copied from a public data set: each of the
templates below draws names, objects and numbers from a seeded `random.Random`, writes the question in one of
a few wordings, and computes the answer exactly in Python with `fractions.Fraction` from the drawn numbers. A
draw is rejected and redrawn (`Redraw`) until every quantity on the way is sensible (no negative or fractional
counts of people or things) and the answer is a non-negative whole number or a decimal of at most 2 places,
so every answer is verified and has one canonical form ('42', '3.5').

Splits: the i-th problem of a split comes from `random.Random(SEEDS[split] + i)` and template i mod the number
of templates; a question belongs to the split named by the parity of the first byte of its sha256, and a draw
for the other split (or a repeat within the split) is redrawn. So the splits never share a question, and a
split is the same on every run and Python version (no `hash()`, only `random.Random(int)`).

The grader reads the final number out of a model's prose or program output (`numeric_answer`) and compares it
with the gold answer as an exact fraction (`is_correct`: '3.50' == '3.5', '$1,200' == '1200').
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Literal, Sequence, TypeVar

Split = Literal["validation", "test"]
SEEDS: dict[str, int] = {"validation": 1_000_000, "test": 2_000_000}
MAX_DRAWS = 5_000
MAX_TOKENS = 384
INSTRUCTION = ("Work it out step by step, then give the final answer as a number on the last line, "
               "in the form 'The answer is N.'")

T = TypeVar("T")

NAMES = ["Amara", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Isla", "Jamal", "Kofi", "Lena",
         "Mateo", "Nadia", "Owen", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara", "Zoe",
         "Liam", "Mei", "Noah", "Aisha", "Tom", "Ines", "Oscar"]
GOODS = ["notebooks", "apples", "cupcakes", "pencils", "bottles of juice", "comic books", "packets of seeds",
         "tennis balls", "candles", "sandwiches", "birthday cards", "bags of crisps"]
CURRENCIES = ["$", "£", "€"]


class Redraw(Exception):
    """The numbers drawn give a nonsensical quantity or an answer that is not a short decimal: draw again."""


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


TEMPLATES: list[Template] = []


def template(steps: int) -> Callable[[Make], Make]:
    def register(make: Make) -> Make:
        TEMPLATES.append(Template(make.__name__, steps, make))
        return make
    return register


@template(steps=3)
def shopping_change(d: Draw) -> tuple[str, Fraction]:
    name, cur, (g1, g2) = d.names(1)[0], d.pick(CURRENCIES), d.rng.sample(GOODS, 2)
    a, p = d.num("a", 2, 6), d.money("p", 75, 650)
    b, q = d.num("b", 2, 4), d.money("q", 50, 400)
    note = d.one_of("note", [20, 50, 100])
    total = a * p + b * q
    d.need(total < note)
    q_text = d.pick([
        f"{name} buys {a} {g1} at {money(cur, p)} each and {b} {g2} at {money(cur, q)} each, and pays with a "
        f"{money(cur, note)} note. How much change should {name} get?",
        f"{name} has a {money(cur, note)} note. At the shop {name} picks up {a} {g1} costing {money(cur, p)} each "
        f"and {b} {g2} costing {money(cur, q)} each. How much change is left after paying?",
    ])
    return q_text, note - total


@template(steps=3)
def coupon_total(d: Draw) -> tuple[str, Fraction]:
    name, cur, (g1, g2) = d.names(1)[0], d.pick(CURRENCIES), d.rng.sample(GOODS, 2)
    a, p = d.num("a", 2, 8), d.money("p", 100, 900)
    b, q = d.num("b", 2, 6), d.money("q", 100, 600)
    off = d.money("off", 200, 1000, 100)
    d.need(off < a * p + b * q)
    q_text = d.pick([
        f"A box of {g1} costs {money(cur, p)} and a box of {g2} costs {money(cur, q)}. {name} buys {a} boxes of "
        f"{g1} and {b} boxes of {g2}, and uses a coupon for {money(cur, off)} off the total. How much does {name} pay?",
        f"{name} has a coupon worth {money(cur, off)} off a whole order. The order is {a} boxes of {g1} at "
        f"{money(cur, p)} a box and {b} boxes of {g2} at {money(cur, q)} a box. What does {name} pay in the end?",
    ])
    return q_text, a * p + b * q - off


@template(steps=2)
def bulk_price(d: Draw) -> tuple[str, Fraction]:
    name, cur, goods = d.names(1)[0], d.pick(CURRENCIES), d.pick(GOODS)
    k, price = d.num("k", 2, 6), d.money("price", 100, 800, 50)
    n = d.num("n", 8, 60)
    packs = d.whole(Fraction(n, k))
    q_text = d.pick([
        f"A market stall sells {goods} at {k} for {money(cur, price)}. How much do {n} {goods} cost?",
        f"{name} needs {n} {goods} for a party. They are sold {k} for {money(cur, price)}. What will they cost?",
    ])
    return q_text, packs * price


@template(steps=2)
def multipack_saving(d: Draw) -> tuple[str, Fraction]:
    cur, goods = d.pick(CURRENCIES), d.pick(["granola bars", "yoghurts", "juice boxes", "muffins", "bread rolls"])
    n, box = d.one_of("n", [6, 8, 10, 12, 18, 24]), d.money("box", 300, 2000, 10)
    single = d.money("single", 40, 200, 5)
    d.need(n * single * Fraction(6, 10) <= box < n * single * Fraction(95, 100))
    q_text = d.pick([
        f"A pack of {n} {goods} costs {money(cur, box)}, while a single one costs {money(cur, single)}. How much "
        f"is saved by buying the pack instead of {n} single {goods}?",
        f"Single {goods} cost {money(cur, single)} each, or you can get a pack of {n} for {money(cur, box)}. "
        f"How much cheaper is the pack than buying {n} singles?",
    ])
    return q_text, n * single - box


@template(steps=4)
def two_leg_trip(d: Draw) -> tuple[str, Fraction]:
    name = d.names(1)[0]
    d1, s1 = d.num("d1", 10, 200, 5), d.num("s1", 30, 110, 10)
    d2, s2 = d.num("d2", 5, 120, 5), d.num("s2", 20, 100, 10)
    m1, m2 = Fraction(d1 * 60, s1), Fraction(d2 * 60, s2)
    d.need(m1.denominator == 1 and m2.denominator == 1)
    q_text = d.pick([
        f"{name} drives {d1} km on the motorway at {s1} km/h, then {d2} km on country roads at {s2} km/h. "
        f"How many minutes does the whole journey take?",
        f"On a trip, {name} covers the first {d1} km at an average speed of {s1} km/h and the remaining {d2} km "
        f"at {s2} km/h. How long is the trip in minutes?",
    ])
    return q_text, m1 + m2


@template(steps=3)
def tank_fill(d: Draw) -> tuple[str, Fraction]:
    vol, k, rate = d.num("vol", 60, 600, 10), d.num("k", 2, 5), d.num("rate", 4, 25)
    d.whole(Fraction(vol, k))
    q_text = d.pick([
        f"A water tank holds {vol} litres and is already 1/{k} full. A hose adds {rate} litres a minute. "
        f"How many minutes will it take to fill the tank?",
        f"A hose pours {rate} litres of water a minute into a {vol}-litre tank that is 1/{k} full. How long, "
        f"in minutes, until the tank is full?",
    ])
    return q_text, (vol - Fraction(vol, k)) / rate


@template(steps=3)
def discount_buy(d: Draw) -> tuple[str, Fraction]:
    name, cur = d.names(1)[0], d.pick(CURRENCIES)
    thing = d.pick(["jackets", "pairs of trainers", "lamps", "backpacks", "board games"])
    price, off, n = d.money("price", 1000, 12000, 100), d.one_of("off", [10, 15, 20, 25, 30, 40, 50]), d.num("n", 2, 5)
    q_text = d.pick([
        f"{thing.capitalize()} normally cost {money(cur, price)} each, but this week everything is {off}% off. "
        f"How much does {name} pay for {n} of them?",
        f"{name} buys {n} {thing} in a {off}% off sale. The usual price is {money(cur, price)} each. "
        f"What is the total cost?",
    ])
    return q_text, n * price * (100 - off) / 100


@template(steps=3)
def tip_split(d: Draw) -> tuple[str, Fraction]:
    cur = d.pick(CURRENCIES)
    bill, tip, n = d.money("bill", 2000, 30000, 10), d.one_of("tip", [10, 12, 15, 18, 20]), d.num("n", 2, 8)
    q_text = d.pick([
        f"Dinner for {n} friends comes to {money(cur, bill)}. They add a {tip}% tip and split the total equally. "
        f"How much does each friend pay?",
        f"The bill is {money(cur, bill)} and we want to leave a {tip}% tip. If {n} of us share it equally, "
        f"how much does each person pay?",
    ])
    return q_text, bill * (100 + tip) / 100 / n


@template(steps=2)
def percent_raise(d: Draw) -> tuple[str, Fraction]:
    name, cur = d.names(1)[0], d.pick(CURRENCIES)
    salary, rise = d.num("salary", 18000, 90000, 500), d.num("rise", 2, 12)
    q_text = d.pick([
        f"{name} earns {money(cur, Fraction(salary))} a year and gets a {rise}% pay rise. What is the new yearly "
        f"salary?",
        f"After a {rise}% raise, what will {name}'s salary be if it is {money(cur, Fraction(salary))} a year now?",
    ])
    return q_text, salary * Fraction(100 + rise, 100)


@template(steps=3)
def percent_change(d: Draw) -> tuple[str, Fraction]:
    unit = d.pick(["kWh of electricity", "litres of water", "visitors", "cups of coffee"])
    old, new = d.num("old", 20, 400), d.num("new", 20, 400)
    d.need(old < new <= 2 * old)
    q_text = d.pick([
        f"Last month a café used {old} {unit}; this month it used {new}. By what percent did it go up?",
        f"A household went from {old} {unit} a month to {new}. What is the percentage increase?",
    ])
    return q_text, Fraction(new - old, old) * 100


@template(steps=4)
def fraction_left(d: Draw) -> tuple[str, Fraction]:
    a_name, b_name, c_name = d.names(3)
    thing = d.pick(["marbles", "stickers", "sweets", "trading cards", "stamps"])
    n, a, b = d.num("n", 12, 120), d.num("a", 2, 5), d.num("b", 2, 5)
    rest = n - d.whole(Fraction(n, a))
    given = d.whole(Fraction(rest, b))
    q_text = d.pick([
        f"{a_name} has {n} {thing}. {a_name} gives 1/{a} of them to {b_name}, then 1/{b} of what is left to "
        f"{c_name}. How many {thing} does {a_name} keep?",
        f"Out of {n} {thing}, {a_name} hands 1/{a} to {b_name}. Of the rest, 1/{b} go to {c_name}. How many "
        f"{thing} are left with {a_name}?",
    ])
    return q_text, Fraction(rest - given)


@template(steps=3)
def fraction_spent(d: Draw) -> tuple[str, Fraction]:
    name, cur = d.names(1)[0], d.pick(CURRENCIES)
    total, k, lunch = d.num("total", 20, 200, 5), d.num("k", 2, 5), d.money("lunch", 300, 1500, 50)
    left = total - Fraction(total, k) - lunch
    d.need(left >= 0)
    q_text = d.pick([
        f"{name} gets {money(cur, Fraction(total))} for a birthday, spends 1/{k} of it on books and then "
        f"{money(cur, lunch)} on lunch. How much money is left?",
        f"With {money(cur, Fraction(total))} in a wallet, {name} buys lunch for {money(cur, lunch)} after spending "
        f"1/{k} of the original amount on books. How much remains?",
    ])
    return q_text, left


@template(steps=3)
def ratio_difference(d: Draw) -> tuple[str, Fraction]:
    x, y = d.names(2)
    cur = d.pick(CURRENCIES)
    total, a, b = d.num("total", 20, 900, 10), d.num("a", 1, 5), d.num("b", 2, 9)
    d.need(a < b and math.gcd(a, b) == 1)
    d.whole(Fraction(total, a + b))
    q_text = d.pick([
        f"{x} and {y} share {money(cur, Fraction(total))} in the ratio {a}:{b}. How much more does {y} get than {x}?",
        f"A prize of {money(cur, Fraction(total))} is split between {x} and {y} in the ratio {a}:{b}. "
        f"What is the difference between their shares?",
    ])
    return q_text, Fraction(total, a + b) * (b - a)


@template(steps=2)
def ratio_part(d: Draw) -> tuple[str, Fraction]:
    group = d.pick(["club", "choir", "chess class", "swimming team"])
    a, b, total = d.num("a", 1, 7), d.num("b", 1, 7), d.num("total", 12, 90)
    d.need(a != b and math.gcd(a, b) == 1)
    d.whole(Fraction(total, a + b))
    q_text = d.pick([
        f"The ratio of boys to girls in a {group} is {a}:{b}, and there are {total} members. How many girls are there?",
        f"A {group} has {total} members, with boys and girls in the ratio {a}:{b}. How many of them are girls?",
    ])
    return q_text, Fraction(total, a + b) * b


@template(steps=3)
def age_multiple(d: Draw) -> tuple[str, Fraction]:
    parent, child = d.names(2)
    son = d.rng.randint(2, 15)
    k = d.num("k", 3, 6)
    m = d.num("m", 2, k - 1)
    years = d.whole(Fraction(son * (k - m), m - 1))
    d.need(0 < years <= 30)
    d.numbers["years"] = Fraction(years)
    q_text = d.pick([
        f"{parent} is {k} times as old as {child}. In {years} years, {parent} will be {m} times as old as {child}. "
        f"How old is {child} now?",
        f"In {years} years {parent} will be {m} times as old as {child}, yet today {parent} is {k} times "
        f"{child}'s age. How old is {child} today?",
    ])
    return q_text, Fraction(son)


@template(steps=3)
def age_sum(d: Draw) -> tuple[str, Fraction]:
    older, younger = d.names(2)
    gap, total, later = d.num("gap", 1, 12), d.num("total", 10, 80), d.num("later", 2, 10)
    d.need(total > gap)
    d.whole(Fraction(total - gap, 2))
    q_text = d.pick([
        f"{older} is {gap} years older than {younger}, and their ages add up to {total}. How old will {older} "
        f"be in {later} years?",
        f"Together {older} and {younger} are {total} years old. {older} is {gap} years older. What age "
        f"will {older} be {later} years from now?",
    ])
    return q_text, Fraction(total + gap, 2) + later


@template(steps=2)
def ribbon_pieces(d: Draw) -> tuple[str, Fraction]:
    name = d.names(1)[0]
    thing = d.pick(["ribbon", "rope", "string", "fabric strip"])
    length = d.money("length", 150, 2000, 50)  # metres, in halves
    piece = d.num("piece", 5, 80, 5)  # centimetres
    q_text = d.pick([
        f"{name} has {canonical(length)} m of {thing} and cuts it into pieces {piece} cm long. How many pieces "
        f"are there?",
        f"How many {piece} cm pieces can be cut from {canonical(length)} m of {thing} with nothing left over?",
    ])
    return q_text, Fraction(d.whole(length * 100 / piece))


@template(steps=3)
def homework_split(d: Draw) -> tuple[str, Fraction]:
    name = d.names(1)[0]
    hours, minutes, days = d.num("hours", 1, 6), d.num("minutes", 5, 55, 5), d.num("days", 2, 6)
    q_text = d.pick([
        f"{name} has {hours} hours {minutes} minutes of homework and wants to spread it evenly over {days} "
        f"evenings. How many minutes is that each evening?",
        f"Over {days} evenings, {name} will do {hours} hours and {minutes} minutes of revision, the same amount "
        f"each evening. How many minutes a night?",
    ])
    return q_text, Fraction(d.whole(Fraction(hours * 60 + minutes, days)))


@template(steps=3)
def flour_needed(d: Draw) -> tuple[str, Fraction]:
    name = d.names(1)[0]
    grams, batches, have = d.num("grams", 150, 600, 25), d.num("batches", 2, 12), d.money("have", 50, 300, 50)
    need = Fraction(grams * batches, 1000) - have
    d.need(need > 0)
    q_text = d.pick([
        f"One batch of cookies takes {grams} g of flour. {name} is baking {batches} batches for a fair and already "
        f"has {canonical(have)} kg of flour. How many more kilograms of flour are needed?",
        f"{name} has {canonical(have)} kg of flour at home. A batch of bread rolls uses {grams} grams. How many "
        f"kilograms of flour must {name} buy to bake {batches} batches?",
    ])
    return q_text, need


@template(steps=2)
def average_score(d: Draw) -> tuple[str, Fraction]:
    name = d.names(1)[0]
    k = d.pick([3, 4, 5])
    scores = [d.num(f"s{i}", 40, 100) for i in range(k)]
    listed = ", ".join(str(s) for s in scores[:-1]) + f" and {scores[-1]}"
    q_text = d.pick([
        f"{name} scored {listed} on {k} maths quizzes. What is the mean score?",
        f"What is the average of {name}'s test marks if they were {listed}?",
    ])
    return q_text, Fraction(sum(scores), k)


@template(steps=3)
def score_needed(d: Draw) -> tuple[str, Fraction]:
    name = d.names(1)[0]
    k, avg, target = d.num("k", 2, 6), d.num("avg", 55, 90), d.num("target", 60, 95)
    needed = target * (k + 1) - avg * k
    d.need(0 <= needed <= 100 and target != avg)
    q_text = d.pick([
        f"After {k} tests, {name}'s average is {avg}. What score does {name} need on the next test to bring the "
        f"average to {target}?",
        f"{name} wants an average of {target} over {k + 1} tests. The first {k} average {avg}. What must the last "
        f"test score be?",
    ])
    return q_text, Fraction(needed)


@template(steps=3)
def floor_tiles(d: Draw) -> tuple[str, Fraction]:
    length, width = d.money("length", 200, 900, 50), d.money("width", 150, 700, 50)  # metres, in halves
    side = d.one_of("side", [20, 25, 30, 40, 50])  # centimetres
    along, across = d.whole(length * 100 / side), d.whole(width * 100 / side)
    q_text = d.pick([
        f"A room is {canonical(length)} m by {canonical(width)} m. How many square tiles of side {canonical(side)} cm "
        f"cover the floor?",
        f"Square tiles {canonical(side)} cm on a side are used to cover a {canonical(length)} m by "
        f"{canonical(width)} m floor. How many tiles are needed?",
    ])
    return q_text, Fraction(along * across)


@template(steps=4)
def fence_cost(d: Draw) -> tuple[str, Fraction]:
    cur = d.pick(CURRENCIES)
    length, width, gate = d.num("length", 5, 40), d.num("width", 4, 30), d.num("gate", 1, 3)
    price = d.money("price", 500, 3000, 50)
    q_text = d.pick([
        f"A rectangular garden is {length} m long and {width} m wide. It is fenced all round except for a "
        f"{gate} m gate. Fencing costs {money(cur, price)} a metre. How much does the fencing cost?",
        f"Fencing costs {money(cur, price)} per metre. How much will it cost to fence a {length} m by {width} m "
        f"field, leaving a {gate} m gap for the gate?",
    ])
    return q_text, (2 * (length + width) - gate) * price


@template(steps=3)
def paint_litres(d: Draw) -> tuple[str, Fraction]:
    length, height = d.money("length", 200, 800, 50), d.money("height", 200, 300, 50)
    coats, cover = d.num("coats", 2, 3), d.one_of("cover", [5, 8, 10, 12, 16])
    q_text = d.pick([
        f"One litre of paint covers {cover} square metres. A wall is {canonical(length)} m wide and "
        f"{canonical(height)} m high and needs {coats} coats. How many litres of paint are needed?",
        f"How many litres of paint do {coats} coats on a {canonical(length)} m by {canonical(height)} m wall "
        f"take, if each litre covers {cover} square metres?",
    ])
    return q_text, length * height * coats / cover


@template(steps=3)
def packing_days(d: Draw) -> tuple[str, Fraction]:
    goods = d.pick(["boxes", "parcels", "crates", "gift bags"])
    total, done = d.num("total", 200, 3000, 50), d.num("done", 20, 800, 10)
    workers, rate = d.num("workers", 2, 8), d.num("rate", 10, 60, 5)
    d.need(done < total)
    days = d.whole(Fraction(total - done, workers * rate))
    q_text = d.pick([
        f"A warehouse must pack {total:,} {goods}. {done} are packed already. {workers} workers each pack {rate} "
        f"{goods} a day. How many more days will the job take?",
        f"There are {workers} packers, and each packs {rate} {goods} a day. An order of {total:,} {goods} has "
        f"{done:,} done. How many days until it is finished?",
    ])
    return q_text, Fraction(days)


@template(steps=2)
def painters_days(d: Draw) -> tuple[str, Fraction]:
    w1, days, w2 = d.num("w1", 2, 9), d.num("days", 2, 15), d.num("w2", 2, 9)
    d.need(w1 != w2)
    q_text = d.pick([
        f"If {w1} painters take {days} days to paint a school, how many days would {w2} painters take at the "
        f"same rate?",
        f"{w1} workers can build a wall in {days} days. Working at the same pace, how long would {w2} workers take?",
    ])
    return q_text, Fraction(w1 * days, w2)


@template(steps=2)
def savings_target(d: Draw) -> tuple[str, Fraction]:
    name, cur = d.names(1)[0], d.pick(CURRENCIES)
    goal = d.pick(["a bike", "a games console", "a guitar", "a school trip", "a tablet"])
    target, have, weekly = d.num("target", 100, 1500, 10), d.num("have", 0, 300, 10), d.num("weekly", 5, 60, 5)
    d.need(have < target)
    weeks = d.whole(Fraction(target - have, weekly))
    q_text = d.pick([
        f"{name} is saving for {goal} that costs {money(cur, Fraction(target))}. {name} has "
        f"{money(cur, Fraction(have))} now and saves {money(cur, Fraction(weekly))} a week. How many weeks until "
        f"{name} can buy it?",
        f"If {name} puts away {money(cur, Fraction(weekly))} every week, starting from {money(cur, Fraction(have))}, "
        f"how many weeks will it take to reach {money(cur, Fraction(target))} for {goal}?",
    ])
    return q_text, Fraction(weeks)


@template(steps=3)
def pocket_money(d: Draw) -> tuple[str, Fraction]:
    name, cur = d.names(1)[0], d.pick(CURRENCIES)
    start, gets, spends, weeks = (d.money("start", 0, 5000, 50), d.money("gets", 300, 2000, 50),
                                  d.money("spends", 100, 1500, 25), d.num("weeks", 3, 12))
    d.need(gets > spends)
    q_text = d.pick([
        f"{name} starts with {money(cur, start)}, gets {money(cur, gets)} of pocket money every week and spends "
        f"{money(cur, spends)} of it. How much money does {name} have after {weeks} weeks?",
        f"Each week {name} receives {money(cur, gets)} and spends {money(cur, spends)}. Having {money(cur, start)} "
        f"at the start, how much will {name} have {weeks} weeks later?",
    ])
    return q_text, start + weeks * (gets - spends)


@template(steps=2)
def leftover_slices(d: Draw) -> tuple[str, Fraction]:
    food = d.pick([("pizzas", "slices"), ("cakes", "pieces"), ("chocolate bars", "squares"), ("pies", "slices")])
    n, cut, kids = d.num("n", 2, 6), d.num("cut", 6, 12), d.num("kids", 3, 11)
    left = (n * cut) % kids
    d.need(left > 0)
    q_text = d.pick([
        f"We have {n} {food[0]} cut into {cut} {food[1]} each and {kids} children. Every child gets the same "
        f"number of {food[1]}, as many as possible. How many {food[1]} are left over?",
        f"{kids} children share {n} {food[0]}, each cut into {cut} {food[1]}, so that everyone gets the same whole "
        f"number of {food[1]} and as many as possible. How many {food[1]} are left?",
    ])
    return q_text, Fraction(left)


@template(steps=3)
def buses_cost(d: Draw) -> tuple[str, Fraction]:
    cur = d.pick(CURRENCIES)
    people, seats, fare = d.num("people", 40, 400), d.one_of("seats", [30, 40, 45, 50, 52]), d.num("fare", 80, 400, 10)
    d.need(people > 2 * seats and people % int(seats) != 0)
    buses = -(-people // int(seats))
    q_text = d.pick([
        f"{people} pupils are going on a school trip. Each coach holds {seats} pupils and costs "
        f"{money(cur, Fraction(fare))} to hire. How much do the coaches cost in all?",
        f"A coach seats {seats} people and costs {money(cur, Fraction(fare))} for the day. How much does it cost "
        f"to hire enough coaches to take {people} people?",
    ])
    return q_text, Fraction(buses * fare)


@template(steps=3)
def how_many_more(d: Draw) -> tuple[str, Fraction]:
    a_name, b_name, c_name = d.names(3)
    thing = d.pick(["stickers", "shells", "badges", "books", "postcards"])
    a, k, fewer = d.num("a", 4, 40), d.num("k", 2, 5), d.num("fewer", 1, 30)
    more = k * a - fewer - a
    d.need(more > 0)
    q_text = d.pick([
        f"{a_name} has {a} {thing}. {b_name} has {k} times as many as {a_name}, and {c_name} has {fewer} fewer "
        f"than {b_name}. How many more {thing} does {c_name} have than {a_name}?",
        f"{c_name} has {fewer} {thing} fewer than {b_name}, and {b_name} has {k} times as many as {a_name}, who "
        f"has {a}. How many more {thing} does {c_name} have than {a_name}?",
    ])
    return q_text, Fraction(more)


@template(steps=4)
def stall_profit(d: Draw) -> tuple[str, Fraction]:
    name, cur = d.names(1)[0], d.pick(CURRENCIES)
    goods = d.pick(["mugs", "plant pots", "jars of jam", "bracelets", "scented candles"])
    n, cost, broken, price = (d.num("n", 10, 80), d.money("cost", 50, 600, 25), d.num("broken", 2, 9),
                              d.money("price", 100, 1200, 25))
    profit = (n - broken) * price - n * cost
    d.need(broken < n and profit > 0)
    q_text = d.pick([
        f"{name} buys {n} {goods} for {money(cur, cost)} each to sell at a stall. {broken} of them break, and "
        f"{name} sells all the rest for {money(cur, price)} each. What is the profit?",
        f"At a craft fair {name} sells {goods} at {money(cur, price)} each. {name} paid {money(cur, cost)} each for "
        f"{n} of them, but {broken} could not be sold. If every other one sold, how much profit did {name} make?",
    ])
    return q_text, profit


@template(steps=3)
def fuel_cost(d: Draw) -> tuple[str, Fraction]:
    cur = d.pick(CURRENCIES)
    per100, km, price = d.num("per100", 4, 12), d.num("km", 50, 900, 10), d.money("price", 120, 200, 2)
    q_text = d.pick([
        f"A car uses {per100} litres of fuel per 100 km. Fuel costs {money(cur, price)} a litre. How much does the "
        f"fuel for a {km} km trip cost?",
        f"How much will the fuel cost for a {km} km drive if the car burns {per100} litres every 100 km and a litre "
        f"costs {money(cur, price)}?",
    ])
    return q_text, Fraction(per100 * km, 100) * price


@template(steps=4)
def weekly_pay(d: Draw) -> tuple[str, Fraction]:
    name, cur = d.names(1)[0], d.pick(CURRENCIES)
    wage, hours, days, extra = (d.money("wage", 900, 2500, 50), d.num("hours", 4, 9), d.num("days", 3, 6),
                                d.num("extra", 1, 8))
    q_text = d.pick([
        f"{name} earns {money(cur, wage)} an hour and works {hours} hours a day for {days} days. {name} also works "
        f"{extra} hours of overtime, paid at 1.5 times the usual rate. How much does {name} earn that week?",
        f"Overtime pays 1.5 times the normal rate of {money(cur, wage)} an hour. This week {name} worked {days} "
        f"days of {hours} hours plus {extra} overtime hours. What is {name}'s pay for the week?",
    ])
    return q_text, wage * hours * days + wage * Fraction(3, 2) * extra


@template(steps=3)
def pages_left(d: Draw) -> tuple[str, Fraction]:
    name = d.names(1)[0]
    pages, monday = d.num("pages", 120, 600, 10), d.num("monday", 10, 90)
    left = pages - 3 * monday
    d.need(left > 0)
    q_text = d.pick([
        f"A book has {pages} pages. {name} reads {monday} pages on Monday and twice as many on Tuesday. How many "
        f"pages are left to read?",
        f"{name} read {monday} pages of a {pages}-page novel on Monday, and on Tuesday read double that. How many "
        f"pages are still to go?",
    ])
    return q_text, Fraction(left)


@template(steps=2)
def recipe_scale(d: Draw) -> tuple[str, Fraction]:
    ingredient = d.pick(["flour", "rice", "sugar", "pasta", "butter"])
    serves, grams, people = d.num("serves", 2, 8), d.num("grams", 50, 800, 25), d.num("people", 3, 20)
    d.need(serves != people)
    q_text = d.pick([
        f"A recipe that serves {serves} needs {grams} g of {ingredient}. How many grams are needed for {people} "
        f"people?",
        f"How much {ingredient}, in grams, do you need to feed {people} people if {grams} g is enough for {serves}?",
    ])
    return q_text, Fraction(grams * people, serves)


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
