"""A user's own questions with their answers, for `coe profile --data PATH`: the labelled file of `coe train`
(`text`, `label`, optional `split`; coe/data/labelled.py) plus an `answer`, and `choices` for a question
with options. JSONL, one object a line:

    {"text": "What is 7 x 8?", "label": "math", "choices": ["54", "56", "58", "64"], "answer": "B"}
    {"text": "What is the capital of France?", "label": "geography", "answer": "Paris"}

or CSV with a header row (text,label,choices,answer[,split]); a CSV `choices` cell is a JSON list
(["54", "56"]) or options separated by " | ". With choices, `answer` is the letter of the right option
and each expert is scored by the log-likelihood of the letters, as MMLU is (coe/data/scoring.py). Without,
the expert writes an answer and it is right when it equals `answer` after normalisation (lowercase, no
punctuation, no articles a/an/the, single spaces: the SQuAD exact match).
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from coe.data.labelled import (
    DataFileError, LabelledRow, check_known_labels, labelled_rows, raise_problems, read_records,
)
from coe.data.mixed import Item
from coe.data.scoring import lettered_scoring

LETTERS = string.ascii_uppercase[:10]
ANSWER_ONLY = "Answer with the answer only, no explanation."


@dataclass(frozen=True)
class AnsweredRow:
    row: LabelledRow
    answer: str  # the letter with choices, else the expected text
    choices: tuple[str, ...] | None = None

    @property
    def line(self) -> int:
        return self.row.line


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(answer: str, expected: str) -> bool:
    return normalise(answer) == normalise(expected)


def _choices(value, csv: bool) -> list[str] | str:
    """The options of a `choices` field, or what is wrong with it."""
    if isinstance(value, str) and csv:
        value = value.strip()
        if value.startswith("["):
            try:
                value = json.loads(value)
            except ValueError as exc:
                return f"'choices' is not a JSON list ({exc.msg})"
        else:
            value = [v.strip() for v in value.split("|")]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        return "'choices' must be a list of option texts"
    options = [str(v).strip() for v in value]
    if not 2 <= len(options) <= len(LETTERS):
        return f"'choices' has {len(options)} options; give 2 to {len(LETTERS)}"
    if not all(options):
        return "'choices' has an empty option"
    return options


def _answered(rec: dict, row: LabelledRow | None, csv: bool) -> AnsweredRow | str | None:
    """One row's answer (and options), or its problem; None when the row failed before (text, label, split)."""
    answer = str(rec.get("answer") if rec.get("answer") is not None else "").strip()
    if not answer:
        return "empty 'answer'"
    raw = rec.get("choices")
    if raw is None or raw == "" or raw == []:
        return AnsweredRow(row, answer) if row else None
    options = _choices(raw, csv)
    if isinstance(options, str):
        return options
    letters = LETTERS[: len(options)]
    if answer.upper() not in letters:
        return f"'answer' must be the letter of one of the {len(options)} choices ({letters[0]}-{letters[-1]}), got '{answer}'"
    return AnsweredRow(row, answer.upper(), tuple(options)) if row else None


def read_answered(path: Path, known_labels: Iterable[str] | None = None) -> list[AnsweredRow]:
    """Every row with its answer; DataFileError lists each problem with its line and field (a missing column,
    an empty text, label or answer, bad choices, an answer that is no option's letter, labels that are not routes)."""
    path = Path(path)
    columns, records = read_records(path)
    if "answer" not in columns:
        raise DataFileError(path, [f"missing column 'answer' (found: {', '.join(columns)}); each row needs the right "
                                   f"answer: an option's letter with 'choices', else the expected text"])
    rows, problems = labelled_rows(path, columns, records)
    by_line = {r.line: r for r in rows}
    csv = path.suffix.lower() in (".csv", ".tsv")
    out = []
    for n, rec in records:
        got = _answered(rec, by_line.get(n), csv)
        if isinstance(got, str):
            problems.append(f"line {n}: {got}")
        elif got is not None:
            out.append(got)
    raise_problems(path, sorted(problems, key=lambda p: int(p.split(":")[0].split()[-1])))
    check_known_labels(path, [r.row.label for r in out], known_labels)
    return out


def answered_items(rows: list[AnsweredRow], source: str, max_tokens: int) -> list[Item]:
    """The rows as items of the expert runs (coe/expert_runs.py): a scoring job for a question with choices,
    a greedy generation of at most `max_tokens` tokens for an exact-match one."""
    items = []
    for r in rows:
        ident = f"{source}:{r.line}"
        if r.choices is not None:
            task = lettered_scoring(r.row.text, list(r.choices))
            text = task.messages[0]["content"].rsplit("\n\n", 1)[0]  # the question and its options, as a user sends it
            items.append(Item(ident, "user", r.row.label, text, task.messages, task.choices, r.answer, 1))
        else:
            messages = [{"role": "user", "content": f"{r.row.text}\n\n{ANSWER_ONLY}"}]
            items.append(Item(ident, "user", r.row.label, r.row.text, messages, None, r.answer, max_tokens))
    return items
