"""A serving workload: chats over experts with Zipf popularity, arriving in a burst or as a Poisson stream."""

from __future__ import annotations

import random
from dataclasses import dataclass

SUBJECTS = [
    ("algebra", "Solve for x: 3x + 7 = 22. Show the steps."),
    ("history", "Why did the Roman Republic become an empire?"),
    ("biology", "What does the mitochondrion do in a cell?"),
    ("economics", "What happens to demand when the price of a good rises?"),
    ("law", "What is the difference between civil and criminal law?"),
    ("physics", "Why does a ball thrown upward come back down?"),
    ("chemistry", "What is a covalent bond?"),
    ("medicine", "What are common symptoms of the flu?"),
    ("philosophy", "What did Descartes mean by 'I think, therefore I am'?"),
    ("computer science", "What is the difference between a list and a set in Python?"),
    ("geography", "Why are deserts dry?"),
    ("psychology", "What is classical conditioning?"),
]


@dataclass
class Arrival:
    at_s: float
    expert: str
    messages: list[dict]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def zipf_weights(n: int, s: float) -> list[float]:
    w = [1 / (k + 1) ** s for k in range(n)]
    total = sum(w)
    return [x / total for x in w]


def _chat(e: int, rng: random.Random) -> list[dict]:
    """The e-th expert's subject, in one of a few phrasings."""
    subject, question = SUBJECTS[e % len(SUBJECTS)]
    variant = ["", " Answer briefly.", " Explain it to a student.", " Give one example."][rng.randrange(4)]
    return [{"role": "system", "content": f"You are an expert in {subject}."}, {"role": "user", "content": question + variant}]


def make_workload(experts: list[str], requests: int, zipf_s: float = 1.0, arrival: str = "poisson",
                  rate: float = 20.0, seed: int = 0) -> list[Arrival]:
    """`requests` chats over `experts` with Zipf(s) popularity (the first expert the most asked).

    Each expert is asked about its own subject (a few phrasings), so its batches
    look like one category's traffic. `arrival`: 'burst' (all at t=0) or
    'poisson' (exponential gaps at `rate` per second).
    """
    rng = random.Random(seed)
    weights = zipf_weights(len(experts), zipf_s)
    out, t = [], 0.0
    for i in range(requests):
        e = rng.choices(range(len(experts)), weights)[0]
        msgs = _chat(e, rng)
        if arrival == "poisson" and i:
            t += rng.expovariate(rate)
        out.append(Arrival(round(t, 4), experts[e], msgs))
    return out


def make_shifting_workload(experts: list[str], duration_s: float, rate: float, epochs: int, shift: int,
                           zipf_s: float = 1.2, seed: int = 0) -> list[Arrival]:
    """Poisson arrivals at `rate` per second for `duration_s`, Zipf(s) popularity whose ranking turns by `shift`
    experts at each of `epochs` equal epochs: a skewed mix whose hot set changes over time (epoch 0's hottest
    is `experts[0]`, epoch 1's `experts[shift]`, ...)."""
    rng = random.Random(seed)
    weights = zipf_weights(len(experts), zipf_s)
    out, t = [], 0.0
    while t < duration_s:
        epoch = min(epochs - 1, int(t * epochs / duration_s))
        rank = rng.choices(range(len(experts)), weights)[0]
        e = (rank + epoch * shift) % len(experts)
        msgs = _chat(e, rng)
        out.append(Arrival(round(t, 4), experts[e], msgs))
        t += rng.expovariate(rate)
    return out
