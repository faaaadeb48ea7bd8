"""The semantic cache's calibration set: pairs of requests that may share an answer, and pairs that must not.

Written by hand for this project (coe/data/paraphrases.jsonl), from 156 base requests over the shipped routes (code,
maths, science, health, history, law, everyday questions). Each base gives two pairs: the base and a paraphrase of it
(same meaning, other words: `paraphrase`), and the base and a near-miss that needs another answer (`near-miss`,
whose `change` says how: `number` changed, `entity` swapped ("Python" for "Rust", "adult" for "child"), `negation`
added or dropped, `order` of a direction reversed ("Celsius to Fahrenheit"), `added` qualifier ("... in reverse
order"), `other`). Bases are split validation / test (about half each) by a hash of the base, so both pairs of a
base fall on the same side: the threshold is chosen on validation and reported on test (evals/bench_cache.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PARAPHRASES = Path(__file__).resolve().parent / "paraphrases.jsonl"


@dataclass(frozen=True)
class Pair:
    id: str
    split: Literal["validation", "test"]
    kind: Literal["paraphrase", "near-miss"]
    a: str
    b: str
    change: str | None = None  # a near-miss's kind of change


def load_pairs(split: str | None = None, path: Path = PARAPHRASES) -> list[Pair]:
    """The pairs of `split` (None: all), in file order."""
    pairs = [Pair(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return [p for p in pairs if split is None or p.split == split]
