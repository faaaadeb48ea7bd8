"""The per-query arithmetic of fitted scikit-learn models, without their per-call machinery.

Routing one query runs six TF-IDF transforms, five linear models and two kNN sweeps. The fitted
models stay scikit-learn objects; only inference goes through here, and it computes the same
numbers (tests/test_fastpath.py compares the router with scikit-learn's own transforms):

- TF-IDF without CountVectorizer.transform's checks, sparse-matrix building and index sort
  (about 0.2 ms per transform and query, six per query). Inside `inference()`, each text is split
  into n-grams once per analyzer configuration: the exam model, the request model and the gate
  read the same word n-grams, the two models the same character n-grams.
- Linear models as one product over the nonzero features, no sparse hstack.

BLAS keeps its threads: a per-call one-thread limit was tried (it helped the float32 kNN sweep on a
loaded machine), but the limit is process-wide while routing calls overlap in the service's thread
pool, and on an idle machine the two-thread sweep was 3.5x faster (0.74 vs 2.6 ms); single queries
now take their neighbours from the int8 index (nearest.py) instead of that sweep.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from dataclasses import dataclass
from itertools import repeat

import numpy as np

# CountVectorizer parameters that decide how a text becomes n-grams (not which n-grams are kept)
_ANALYSIS = ("input", "encoding", "decode_error", "strip_accents", "lowercase", "preprocessor", "tokenizer",
             "stop_words", "token_pattern", "ngram_range", "analyzer")
_grams_memo: contextvars.ContextVar[dict | None] = contextvars.ContextVar("coe_fastpath_grams", default=None)


@dataclass
class Rows:
    """A CSR matrix as its three arrays (row-sorted indices, like scikit-learn's), built without scipy's checks."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.indptr) - 1, self.width

    def csr(self):
        from scipy.sparse import csr_matrix

        return csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)


@contextlib.contextmanager
def inference():
    """Scope of one routing call: n-grams shared between vectorizers."""
    if _grams_memo.get() is not None:
        yield
        return
    token = _grams_memo.set({})
    try:
        yield
    finally:
        _grams_memo.reset(token)


def in_inference() -> bool:
    return _grams_memo.get() is not None


def _analysis_key(vectorizer) -> tuple:
    key = tuple(getattr(vectorizer, name, None) for name in _ANALYSIS)
    try:
        hash(key)
    except TypeError:  # e.g. a list of stop words: not shared
        return (id(vectorizer),)
    return key


def _grams(vectorizer, texts: list[str]) -> list[Counter]:
    """n-gram counts of each text, taken from the scope's memo when another vectorizer analysed it the same way."""
    memo = _grams_memo.get()
    key = _analysis_key(vectorizer)
    analyze = None
    out = []
    for text in texts:
        counts = memo.get((key, text)) if memo is not None else None
        if counts is None:
            analyze = analyze or vectorizer.build_analyzer()
            counts = Counter(analyze(text))
            if memo is not None:
                memo[(key, text)] = counts
        out.append(counts)
    return out


def tfidf(vectorizer, texts: list[str]) -> Rows:
    """TfidfVectorizer.transform: counts of in-vocabulary n-grams, sublinear tf, idf, l2 norm, in its dtype."""
    vocab = vectorizer.vocabulary_
    cols, counts, lengths = [], [], []
    for grams in _grams(vectorizer, texts):
        col = np.fromiter(map(vocab.get, grams.keys(), repeat(-1)), dtype=np.int64, count=len(grams))
        count = np.fromiter(grams.values(), dtype=np.int64, count=len(grams))
        known = col >= 0
        col, count = col[known], count[known]
        order = np.argsort(col)
        cols.append(col[order])
        counts.append(count[order])
        lengths.append(len(col))
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    data = (np.concatenate(counts) if counts else np.zeros(0)).astype(vectorizer.dtype)
    if vectorizer.binary:
        data.fill(1)
    if vectorizer.sublinear_tf:
        np.log(data, out=data)
        data += 1.0
    if vectorizer.use_idf:
        data *= vectorizer.idf_[indices]
    if vectorizer.norm == "l2":
        rows = np.repeat(np.arange(len(texts)), lengths)
        sq = np.bincount(rows, weights=(data * data).astype(np.float64), minlength=len(texts))
        norms = np.sqrt(sq)
        norms[norms == 0.0] = 1.0
        data /= norms[rows]
    elif vectorizer.norm is not None:
        raise ValueError(f"fastpath.tfidf: norm '{vectorizer.norm}' is not implemented")
    return Rows(data, indices, indptr, len(vocab))


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
