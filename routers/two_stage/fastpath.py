"""The per-query arithmetic of fitted scikit-learn models, without their per-call machinery.

Routing one query runs six TF-IDF transforms, five linear models and two kNN sweeps. The fitted
models stay scikit-learn objects; only inference goes through here, and it computes the same
numbers (tests/test_fastpath.py compares the router with scikit-learn's own transforms):

- TF-IDF without CountVectorizer.transform's checks, sparse-matrix building and index sort
  (about 0.2 ms per transform and query, six per query). Vectorizers declared to read the same
  texts (`share`: the exam model's, the request model's and the gate's word TF-IDF, the two
  models' character TF-IDF) are transformed together inside `inference()`: one analysis, one
  vocabulary look-up per n-gram and one pass of numpy steps for the group (tfidf_group.py).
- Linear models as one product over the nonzero features, no sparse hstack.

BLAS keeps its threads: a per-call one-thread limit was tried (it helped the float32 kNN sweep on a
loaded machine), but the limit is process-wide while routing calls overlap in the service's thread
pool, and on an idle machine the two-thread sweep was 3.5x faster (0.74 vs 2.6 ms); single queries
now take their neighbours from the int8 index (nearest.py) instead of that sweep.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref

import numpy as np

from routers.two_stage.tfidf_group import Rows, TfidfGroup, compatibility

_memo: contextvars.ContextVar[dict | None] = contextvars.ContextVar("coe_fastpath_memo", default=None)
_groups: dict[int, tuple] = {}  # by id of a vectorizer: (weakref to it, its group, its column there, declared by share)


@contextlib.contextmanager
def inference():
    """Scope of one routing call: a group's TF-IDF rows are computed once per list of texts."""
    if _memo.get() is not None:
        yield
        return
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)


def in_inference() -> bool:
    return _memo.get() is not None


def share(vectorizers: list, words_from: tuple = ()) -> None:
    """Declare fitted vectorizers that transform the same texts in a routing call; those that analyse and weight
    alike are transformed together from then on. A character (char_wb) group looks up the n-grams of the single
    words in the vocabularies of `words_from` once, when built (tfidf_group.py). Cheap once declared."""
    if all((entry := _entry(v)) is not None and entry[3] for v in vectorizers):
        return
    words = {term for v in words_from for term in v.vocabulary_ if " " not in term}
    keys: dict[tuple, list] = {}
    for v in vectorizers:
        keys.setdefault(compatibility(v), []).append(v)
    for members in keys.values():
        _register(members, declared=True, words=words)


def _entry(vectorizer) -> tuple | None:
    entry = _groups.get(id(vectorizer))
    return entry if entry is not None and entry[0]() is vectorizer else None


def _register(members: list, declared: bool, words=()) -> tuple:
    group = TfidfGroup(members, words)
    for j, v in enumerate(members):
        _groups[id(v)] = (weakref.ref(v), group, j, declared)
        weakref.finalize(v, _groups.pop, id(v), None)
    return _groups[id(members[0])]


def tfidf(vectorizer, texts: list[str]) -> Rows:
    """TfidfVectorizer.transform: counts of in-vocabulary n-grams, sublinear tf, idf, l2 norm, in its dtype."""
    _, group, j, _ = _entry(vectorizer) or _register([vectorizer], declared=False)
    memo = _memo.get()
    if memo is None:
        return group.transform(texts)[j]
    key = (id(group), tuple(texts))
    rows = memo.get(key)
    if rows is None:
        rows = memo[key] = group.transform(texts)
    return rows[j]


def linear(model, blocks: list) -> np.ndarray:
    """decision_function of a fitted linear model on features given as consecutive column blocks
    (dense arrays or Rows)."""
    coef = model.coef_
    z = np.zeros((blocks[0].shape[0], coef.shape[0]), dtype=np.float64) + model.intercept_
    start = 0
    for block in blocks:
        width = block.shape[1]
        part = coef[:, start : start + width].T
        if not isinstance(block, Rows):
            z += block @ part
        elif z.shape[0] == 1:
            z += block.data.astype(np.float64) @ part[block.indices]
        else:
            z += block.csr() @ part
        start += width
    return z if coef.shape[0] > 1 else z[:, 0]
