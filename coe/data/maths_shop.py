"""Maths word-problem templates about money: shopping, change, discounts, tips, pay, savings, profit and costs."""

from __future__ import annotations

import math
from fractions import Fraction

from coe.data.maths_draw import CURRENCIES, GOODS, Draw, Template, money, registry

TEMPLATES: list[Template] = []
template = registry(TEMPLATES)


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
