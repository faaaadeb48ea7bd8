"""The per-query arithmetic of fitted scikit-learn models, without their per-call input checks.

Routing one query runs six TF-IDF transforms and five linear models; scikit-learn's input validation
and scipy's sparse hstack cost more than the arithmetic there (measured: ~60% of a single query's
routing time). The fitted models stay scikit-learn objects; only inference goes through here, and it
computes the same numbers (tests/test_two_stage.py compares them).
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer


def tfidf(vectorizer, texts: list[str]):
    """TfidfVectorizer.transform: counts, sublinear tf, idf, l2 norm."""
    x = CountVectorizer.transform(vectorizer, texts).astype(np.float32)
    if vectorizer.sublinear_tf:
        np.log(x.data, out=x.data)
        x.data += 1.0
    if vectorizer.use_idf:
        x.data *= vectorizer.idf_[x.indices]
    if vectorizer.norm == "l2":
        counts = np.diff(x.indptr)
        rows = np.repeat(np.arange(x.shape[0]), counts)
        sq = np.bincount(rows, weights=x.data.astype(np.float64) ** 2, minlength=x.shape[0])
        x.data /= np.repeat(np.sqrt(np.maximum(sq, 1e-24)), counts).astype(np.float32)
    return x


def linear(model, blocks: list) -> np.ndarray:
    """decision_function of a fitted linear model on features given as consecutive column blocks."""
    coef = model.coef_
    z = np.zeros((blocks[0].shape[0], coef.shape[0]), dtype=np.float64) + model.intercept_
    start = 0
    for block in blocks:
        width = block.shape[1]
        z += np.asarray(block @ coef[:, start : start + width].T)
        start += width
    return z if coef.shape[0] > 1 else z[:, 0]
