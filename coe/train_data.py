"""What `coe train` fits the two-stage router on: MMLU, the routes' examples, the shipped user requests and
the user's own labelled files, gathered into train / validation / test rows over the routes' labels.

MMLU rows train the subject routes (their subcategory is the route name; the 57 subjects are the fine
classes) and are the exam group; the routes' examples and a file's `train` rows are the example group
(always trained on); a file's `tune`/`validation` rows are the request group (trained on, and
calibrated on out of fold); `test` rows are only reported. See routers/two_stage/mixture.py.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from coe.core.routes import Routes
from coe.data.labelled import USER_REQUESTS, DataFileError, LabelledRow, read_labelled, rows_hash

MMLU = "mmlu"
SHIPPED_REQUESTS = "user-requests"
DEFAULT_SOURCES = (MMLU, SHIPPED_REQUESTS)
EXAMPLES = " (examples)"


class TrainingDataError(ValueError):
    """The sources cannot train a router for these routes; `problems` has one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Row:
    text: str
    label: str
    fine: str
    split: str  # train | validation | test
    source: str
    group: str = "exam"  # exam | request | example


@dataclass
class TrainingRows:
    rows: list[Row]
    labels: list[str]
    record: dict
    routes: Routes | None
    parents: dict | None = None
    notes: list[str] = field(default_factory=list)
    embed_lists: list[list[str]] = field(default_factory=list)  # texts embedded as one list each (cache keys)

    def split(self, name: str) -> list[Row]:
        return [r for r in self.rows if r.split == name]

    def test_sets(self) -> dict[str, list[Row]]:
        out: dict[str, list[Row]] = {}
        for r in self.split("test"):
            out.setdefault(r.source, []).append(r)
        return out


def _mmlu_rows(cache_dir: Path, level: str, known: set[str] | None, notes: list[str]) -> tuple[list[Row], str, list[str]]:
    from coe.data.mmlu import data_hash, load_mmlu

    questions = load_mmlu(cache_dir)
    rows = [Row(q.question, q.label(level), q.subject, q.split, MMLU) for q in questions]
    all_texts = [q.question for q in questions]  # the whole set, in file order: the key of its cached embeddings
    if known is not None:
        dropped = Counter(r.label for r in rows if r.label not in known)
        rows = [r for r in rows if r.label in known]
        if dropped:
            notes.append(f"MMLU rows of {sorted(dropped)} skipped: not routes")
    return rows, data_hash(questions), all_texts


def _few_shot(rows: list[LabelledRow], source: str) -> list[Row]:
    """A file's rows: test held out, train always fitted (example), tune/validation folded (request)."""
    return [Row(r.text, r.label, r.label + EXAMPLES, "test" if r.split == "test" else "train", source,
                "example" if r.split == "train" else "request") for r in rows]


def gather(sources: list[str], routes: Routes | None, cache_dir: Path, level: str = "subcategory") -> TrainingRows:
    """Rows from each source (mmlu, user-requests, or a JSONL/CSV path) plus the routes' examples.
    Raises DataFileError for a bad file and TrainingDataError when a route has nothing to learn from."""
    from coe.data.mmlu import CATEGORIES, CATEGORY_TO_SUBCATEGORIES, SUBCATEGORIES

    if routes is not None and level != "subcategory":
        raise TrainingDataError([f"--level {level} trains MMLU's own labels and cannot serve the routes of {routes.path}; "
                                 f"use --level subcategory (route names are MMLU subcategories and tasks)"])
    labels = routes.names if routes is not None else (SUBCATEGORIES if level == "subcategory" else CATEGORIES)
    known = set(labels) if routes is not None else None
    rows: list[Row] = []
    record: list[dict] = []
    notes: list[str] = []
    embed_lists: list[list[str]] = []
    for source in sources:
        if source == MMLU:
            part, digest, all_texts = _mmlu_rows(cache_dir, level, known, notes)
            embed_lists.append(all_texts)
        elif source == SHIPPED_REQUESTS:
            if routes is None:
                raise TrainingDataError([f"--data {SHIPPED_REQUESTS} trains routes: it needs a routes file"])
            shipped = read_labelled(USER_REQUESTS)
            part = _few_shot([r for r in shipped if r.label in known], SHIPPED_REQUESTS)
            digest = rows_hash(shipped)
        else:
            path = Path(source)
            if not path.exists():
                raise DataFileError(path, [f"no such file (--data takes {MMLU}, {SHIPPED_REQUESTS} or a .jsonl/.csv path)"])
            if routes is None:
                raise DataFileError(path, ["labelled data trains routes: declare them in a routes file (routes.yaml)"])
            user = read_labelled(path, known_labels=labels)
            part, digest = _few_shot(user, path.name), rows_hash(user)
        rows += part
        record.append({"name": source if source in (MMLU, SHIPPED_REQUESTS) else Path(source).name, "hash": digest,
                       **{s: sum(r.split == s for r in part) for s in ("train", "validation", "test")}})
    if routes is not None:
        rows += [Row(text, label, label + EXAMPLES, "train", "routes", "example") for text, label in routes.examples()]
        record.append({"name": str(routes.path.name), "hash": routes.fingerprint(), "train": len(routes.examples())})
    rows += _stand_ins(rows)
    _check(rows, labels, routes)
    digest = hashlib.sha256("|".join(f"{r['name']}:{r['hash']}" for r in record).encode()).hexdigest()[:16]
    parents = CATEGORY_TO_SUBCATEGORIES if level == "category" else None
    covered = {t for ts in embed_lists for t in ts}
    embed_lists.append(sorted({r.text for r in rows} - covered))
    return TrainingRows(rows, list(labels), {"name": "+".join(sources), "hash": digest, "sources": record}, routes,
                        parents, notes, embed_lists)


def _stand_ins(rows: list[Row], per_route: int = 10) -> list[Row]:
    """A route MMLU trains but nobody gave examples for still needs a few rows in the request model:
    its first MMLU training questions (by text hash) stand in."""
    few = {r.label for r in rows if r.group != "exam"}
    if not few:
        return []
    exam: dict[str, list[Row]] = {}
    for r in rows:
        if r.group == "exam" and r.split == "train" and r.label not in few:
            exam.setdefault(r.label, []).append(r)
    key = lambda r: hashlib.sha256(r.text.encode("utf-8")).hexdigest()
    return [Row(r.text, r.label, r.label + EXAMPLES, "train", r.source, "example")
            for label in sorted(exam) for r in sorted(exam[label], key=key)[:per_route]]


def _check(rows: list[Row], labels: list[str], routes: Routes | None) -> None:
    have = Counter(r.label for r in rows if r.split == "train")
    empty = [lab for lab in labels if not have[lab]]
    problems = []
    if empty:
        where = f"examples in {routes.path}" if routes is not None else "rows"
        problems.append(f"nothing to learn {', '.join(repr(x) for x in empty)} from: give them {where} or training rows (--data)")
    if problems:
        raise TrainingDataError(problems)


def labeled_sets(data: TrainingRows, embed: Callable[[list[str]], np.ndarray]):
    """(train, validation, {test name: set}) as routers.two_stage LabeledSets; `embed` maps a list of texts to
    vectors (called once per list of data.embed_lists, so a cached data set is embedded under its own key)."""
    from routers.two_stage.train import LabeledSet

    texts = [t for ts in data.embed_lists for t in ts]
    vectors = np.concatenate([embed(ts) for ts in data.embed_lists if ts])
    index = {t: i for i, t in enumerate(texts)}

    def labeled(rows: list[Row]) -> LabeledSet:
        return LabeledSet([r.text for r in rows], vectors[[index[r.text] for r in rows]], [r.label for r in rows],
                          [r.fine for r in rows], [r.group for r in rows])

    tests = {name: labeled(rows) for name, rows in data.test_sets().items()}
    return labeled(data.split("train")), labeled(data.split("validation")), tests
