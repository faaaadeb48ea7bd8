"""Stage 1 over routes (routers/two_stage/mixture.py) on real data: a slice of MMLU as the exam rows, the shipped
routes' coding examples and user requests as the few-shot rows, the real encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coe.core.routes import load_routes
from coe.core.settings import get_settings
from coe.data.labelled import USER_REQUESTS, read_labelled
from coe.data.mmlu import by_split, load_mmlu
from coe.embedder import make_embedder
from routers.two_stage.mixture import EXAM, EXAMPLE, REQUEST, RouteMixture
from routers.two_stage.train import LabeledSet

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = ["math", "law", "history"]
CODING_REQUESTS = ["My python script says KeyError: 'id' when I read the json response, how do I handle a missing key?",
                   "write a bash loop that renames all .txt files to .md",
                   "Why does my C++ vector iterator crash after I push_back inside the loop?"]


@pytest.fixture(scope="module")
def embedder():
    return make_embedder(get_settings())  # the service's encoder (int8 ONNX, truncated), as `coe train` uses


def _mmlu(split: str, n: int):
    qs = load_mmlu(get_settings().cache_dir)
    return [q for sub in SUBJECTS for q in sorted((q for q in by_split(qs, split) if q.subcategory == sub),
                                                      key=lambda q: q.id)[:n]]


def _sets(embedder, rows: list[tuple]) -> tuple[LabeledSet, LabeledSet]:
    """rows: (text, label, fine label, group); validation is a slice of MMLU validation."""
    texts = [r[0] for r in rows]
    train = LabeledSet(texts, embedder.encode(texts), [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
    val_q = _mmlu("validation", 10)
    vtexts = [q.question for q in val_q]
    return train, LabeledSet(vtexts, embedder.encode(vtexts), [q.subcategory for q in val_q], [q.subject for q in val_q])


def _exam_rows() -> list[tuple]:
    return [(q.question, q.subcategory, q.subject, EXAM) for q in _mmlu("train", 30)]


def _example_rows() -> list[tuple]:
    return [(t, r, r + " (examples)", EXAMPLE) for t, r in load_routes(ROOT / "routes.yaml").examples()
            if r in SUBJECTS + ["coding"]]


@pytest.fixture(scope="module")
def fitted(embedder):
    exam, examples = _exam_rows(), _example_rows()
    requests = [(r.text, r.label, r.label + " (examples)", REQUEST) for r in read_labelled(USER_REQUESTS)
                if r.split == "tune" and r.label in SUBJECTS + ["coding"]]
    train, validation = _sets(embedder, exam + examples + requests)
    mixture = RouteMixture()
    record, probs, held_labels = mixture.fit(train, validation)
    counts = {"exam": len(exam), "coding examples": sum(r[1] == "coding" for r in examples),
              "validation": len(validation.labels)}
    return mixture, record, probs, held_labels, counts, embedder


def test_the_exam_model_learns_routes_without_mmlu_rows_from_their_examples(fitted):
    """A coding request the style gate takes for an exam question must still be able to land on `coding`."""
    mixture, *_, embedder = fitted
    assert mixture.subjects == sorted(SUBJECTS) and "coding" in mixture.exam.labels
    exam = mixture._exam_proba(CODING_REQUESTS, embedder.encode(CODING_REQUESTS))
    assert [mixture.labels[i] for i in exam.argmax(axis=1)] == ["coding"] * len(CODING_REQUESTS)
    routed = mixture.predict_proba(CODING_REQUESTS, embedder.encode(CODING_REQUESTS))
    assert [mixture.labels[i] for i in routed.argmax(axis=1)] == ["coding"] * len(CODING_REQUESTS)


def test_the_exam_model_is_refitted_on_validation_with_its_calibrated_weights(fitted):
    mixture, record, _, _, counts, _ = fitted
    trained = counts["exam"] + counts["coding examples"] + counts["validation"]
    assert mixture.exam.bank.shape[0] == trained == record["exam"]["refit_rows"]
    assert list(mixture.exam.weights) == record["exam"]["weights"]


def test_held_out_probabilities_cover_validation_then_the_folded_requests(fitted):
    mixture, _, probs, held_labels, counts, _ = fitted
    n_requests = len(held_labels) - counts["validation"]
    assert probs.shape == (len(held_labels), len(mixture.labels)) and n_requests > 0
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert set(held_labels[: counts["validation"]]) == set(SUBJECTS)


def test_without_user_requests_the_examples_are_judged_by_an_exam_model_that_never_saw_them(embedder):
    """Without request rows the route examples are the held-out rows the pool and tau are fitted on. The exam model
    learns the task routes from those same examples, so it must judge each one out of fold: a history question
    planted among the coding examples is what it looks like (history) to a model that did not learn it, while
    a model that did would vouch for its label and teach the pool and tau that the exam model is never wrong."""
    planted = [(q.question, "coding", "coding (examples)", EXAMPLE) for q in _mmlu("test", 40)
               if q.subcategory == "history"][:6]
    examples = _example_rows() + planted
    train, validation = _sets(embedder, _exam_rows() + examples)
    mixture = RouteMixture()
    _, probs, held_labels = mixture.fit(train, validation)
    held = probs[len(validation.labels):]
    assert held_labels[len(validation.labels):] == [r[1] for r in examples]
    coding, history = mixture.labels.index("coding"), mixture.labels.index("history")
    judged = held[-len(planted):]
    assert (judged[:, history] > judged[:, coding]).all(), judged[:, [history, coding]].round(3)
