"""Maths word-problem templates about quantities: time and speed, rates, fractions, ratios, ages, units, averages,
area, work, sharing and comparisons."""

from __future__ import annotations

import math
from fractions import Fraction

from coe.data.maths_draw import Draw, Template, canonical, registry

TEMPLATES: list[Template] = []
template = registry(TEMPLATES)


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
