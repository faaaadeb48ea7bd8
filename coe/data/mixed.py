"""The mixed workload of the quality benchmark and of `coe profile --data mixed`: MMLU, HumanEval and maths.

An item is one question with its route label (an MMLU subcategory, `coding` for HumanEval, or
`math_word_problems` for the generated maths word problems of coe/data/maths.py), the text a router sees, and
how it is asked and graded: MMLU by the log-likelihood of the answer letters (a scoring job), HumanEval by
running the generated code, maths by the final number of the answer (both generation jobs). Samples are
stratified (the same number per MMLU subcategory, or per MMLU category for a smoke run) and stable (ordered by
content hash; maths problems are generated from fixed seeds), so every run of the same size asks the same
questions.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coe.data import humaneval, maths, mmlu, scoring

# user: a row of `coe profile --data FILE` (coe/data/answered.py)
Domain = Literal["mmlu", "humaneval", "maths", "user"]
CODE_ROUTE = "coding"
MATHS_ROUTE = "math_word_problems"


@dataclass(frozen=True)
class Item:
    id: str
    domain: Domain
    label: str  # the route it belongs to
    text: str  # what the router sees: the user's request
    messages: list[dict]
    choices: list[str] | None  # scoring job (MMLU) when set; generation job (code, maths, exact match) otherwise
    gold: str  # the answer letter; "pass" for code; the number for maths; the expected text for an exact-match question
    max_tokens: int
    question: mmlu.Question | None = None
    problem: humaneval.Problem | None = None


def _stable(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def mmlu_item(q: mmlu.Question, scored: bool = True) -> Item:
    """Scored: the letters' log-likelihoods (a profile's scoring job). Asked: the question as a user sends it,
    answered as the expert's strategy answers it (a letter generated, or options scored) and graded by the letter
    read out of the answer."""
    task = scoring.mmlu_scoring(q)
    if scored:
        return Item(f"mmlu:{q.id[:16]}", "mmlu", q.subcategory, q.prompt, task.messages, task.choices,
                    q.answer_letter, 1, question=q)
    return Item(f"mmlu:{q.id[:16]}", "mmlu", q.subcategory, q.prompt, task.messages[:1], None, q.answer_letter,
                scoring.MMLU_MAX_TOKENS, question=q)


def code_item(p: humaneval.Problem, max_tokens: int) -> Item:
    task = scoring.humaneval_generation(p, max_tokens)
    return Item(f"humaneval:{p.task_id}", "humaneval", CODE_ROUTE, task.messages[-1]["content"], task.messages,
                None, "pass", task.max_tokens, problem=p)


def maths_item(p: maths.Problem, max_tokens: int = maths.MAX_TOKENS) -> Item:
    """A generation job graded by its final number (coe/data/maths.py is_correct), not by exact match."""
    return Item(p.id, "maths", MATHS_ROUTE, p.question, p.messages(), None, p.answer, max_tokens)


def load_items(cache_dir: Path, split: str, per_subcategory: int, n_code: int | None,
               code_max_tokens: int = scoring.CODE_MAX_TOKENS, per_category: int | None = None,
               n_maths: int = 0, mmlu_scored: bool = True, maths_max_tokens: int = maths.MAX_TOKENS) -> list[Item]:
    """`per_subcategory` MMLU questions of each of the 17 subcategories (or, with `per_category`, that many of
    each of the 4 categories), `n_code` HumanEval problems (None: all of the split) and `n_maths` maths word
    problems from `split` ('validation' or 'test')."""
    strata: dict[str, list[mmlu.Question]] = defaultdict(list)
    for q in mmlu.by_split(mmlu.load_mmlu(cache_dir), split):
        strata[q.subcategory if per_category is None else q.category].append(q)
    take = per_subcategory if per_category is None else per_category
    items = [mmlu_item(q, mmlu_scored) for key in sorted(strata)
             for q in sorted(strata[key], key=lambda q: _stable(q.id))[:take]]
    problems = sorted(humaneval.by_split(humaneval.load_humaneval(cache_dir), split),
                      key=lambda p: _stable(p.task_id))
    items += [code_item(p, code_max_tokens) for p in problems[:n_code]]
    items += [maths_item(p, maths_max_tokens) for p in maths.load_maths(split, n_maths)]
    return items
