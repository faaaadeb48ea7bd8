"""A user's own labelled requests: a JSONL or CSV file of `text`, `label` and an optional `split`.

    {"text": "fix my regex", "label": "coding", "split": "test"}      (JSONL, one object a line)
    text,label,split                                                  (CSV with a header row)

split: train (always fitted), tune or validation (fitted, and calibrated on out of fold: see
routers/two_stage/mixture.py), test (held out: reported by `coe bench routing --data`, never trained
on). Without a split a row is `tune`.
Every problem is reported with the file and line, so a bad file fails before anything is trained.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

RowSplit = Literal["train", "validation", "tune", "test"]
SPLITS: tuple[RowSplit, ...] = ("train", "validation", "tune", "test")
REQUIRED = ("text", "label")
MAX_PROBLEMS = 10
USER_REQUESTS = Path(__file__).resolve().parent / "user_requests.jsonl"
"""The shipped user-style requests: every default route, split tune (may be trained on) / test (reported only)."""


class DataFileError(ValueError):
    """An unusable data file; `problems` holds one line per problem."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class LabelledRow:
    text: str
    label: str
    split: RowSplit
    line: int


def _records(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line, record)]) of a JSONL or CSV file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        records, columns, problems = [], [], []
        for n, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                problems.append(f"line {n}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"line {n}: must be a JSON object with 'text' and 'label'")
                continue
            columns += [k for k in obj if k not in columns]
            records.append((n, obj))
        if problems:
            raise DataFileError(path, problems[:MAX_PROBLEMS])
        return columns, records
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        return columns, [(reader.line_num, row) for row in reader]
    raise DataFileError(path, [f"unknown format '{suffix or path.name}': use .jsonl (one JSON object a line) or .csv "
                               f"(a header row with text,label[,split])"])


def read_records(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line, record)]) of a JSONL or CSV file; DataFileError if unreadable, malformed or empty."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(path, [f"cannot read: {exc}"]) from None
    columns, records = _records(path, text)
    if not records:
        raise DataFileError(path, ["no rows: the file is empty"])
    return columns, records


def labelled_rows(path: Path, columns: list[str], records: list[tuple[int, dict]]) -> tuple[list[LabelledRow], list[str]]:
    """The rows with a text, a label and a known split, and one problem line for every other row."""
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataFileError(path, [f"missing column {', '.join(repr(c) for c in missing)} (found: {', '.join(columns) or 'none'}); "
                                   f"the file needs 'text' and 'label', and may have 'split' ({', '.join(SPLITS)})"])
    rows, problems = [], []
    for n, rec in records:
        text_v, label_v = str(rec.get("text") or "").strip(), str(rec.get("label") or "").strip()
        split_v = str(rec.get("split") or "tune").strip().lower()
        if not text_v:
            problems.append(f"line {n}: empty 'text'")
        if not label_v:
            problems.append(f"line {n}: empty 'label'")
        if split_v not in SPLITS:
            problems.append(f"line {n}: split '{split_v}' is not one of {', '.join(SPLITS)}")
        if text_v and label_v and split_v in SPLITS:
            rows.append(LabelledRow(text_v, label_v, split_v, n))  # type: ignore[arg-type]
    return rows, problems


def raise_problems(path: Path, problems: list[str]) -> None:
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more"]
    if problems:
        raise DataFileError(path, problems)


def check_known_labels(path: Path, labels: Iterable[str], known_labels: Iterable[str] | None) -> None:
    """Every label must be a route; the error lists the unknown ones with their row counts."""
    if known_labels is None:
        return
    known = set(known_labels)
    unknown = Counter(lab for lab in labels if lab not in known)
    if unknown:
        listed = ", ".join(f"'{lab}' ({n} rows)" for lab, n in sorted(unknown.items()))
        raise DataFileError(path, [f"labels that are not routes: {listed}; add them to the routes file or fix the labels "
                                   f"(routes: {', '.join(sorted(known))})"])


def read_labelled(path: Path, known_labels: Iterable[str] | None = None) -> list[LabelledRow]:
    """The rows of a labelled data file; DataFileError lists every problem (wrong or missing columns,
    empty text or label, a bad split, labels that are not known routes)."""
    path = Path(path)
    columns, records = read_records(path)
    rows, problems = labelled_rows(path, columns, records)
    raise_problems(path, problems)
    check_known_labels(path, [r.label for r in rows], known_labels)
    return rows


def by_split(rows: list[LabelledRow], split: RowSplit) -> list[LabelledRow]:
    return [r for r in rows if r.split == split]


def rows_hash(rows: list[LabelledRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r.text}\x00{r.label}\x00{r.split}\n".encode("utf-8"))
    return h.hexdigest()[:16]
