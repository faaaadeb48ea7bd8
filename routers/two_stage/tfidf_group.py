"""TfidfVectorizer.transform of fitted vectorizers that read the same texts and analyse them alike, computed together.

The exam model, the request model and the gate each have a word TF-IDF of the query, the two models a character
one. Transformed one by one, each splits the text into n-grams, looks every n-gram up in its vocabulary and runs
the same two dozen small numpy steps; for one query those steps, not the arithmetic, are the time. Here the text
is analysed once, each n-gram is looked up once in the union of the vocabularies, and every step runs once on a
column per vectorizer (for one text, without the bookkeeping of many). The values are scikit-learn's bit for bit:
per vectorizer the same float operations on the same numbers in the same (column) order, the l2 norm summed
sequentially as scikit-learn sums it.

Character n-grams of "char_wb" never cross a space, so a text's are the sum of its words'. A group of them can be
given words (the router gives the single words of its word TF-IDF vocabularies: 14,570 words, 80% of the words of
MMLU test questions) whose n-grams it looks up once, when built; a query then costs a dict look-up per such word
instead of scikit-learn's Python analysis and about ten vocabulary look-ups, and one analysis of the other words.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np

# CountVectorizer parameters that decide how a text becomes n-grams (not which n-grams are kept)
_ANALYSIS = ("input", "encoding", "decode_error", "strip_accents", "lowercase", "preprocessor", "tokenizer",
             "stop_words", "token_pattern", "ngram_range", "analyzer")
# ... and TfidfTransformer parameters that decide the arithmetic
_WEIGHTING = ("dtype", "binary", "sublinear_tf", "use_idf", "norm")


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


def compatibility(vectorizer) -> tuple:
    """Vectorizers with equal keys can be transformed together (an unhashable parameter: only alone)."""
    key = tuple(getattr(vectorizer, name, None) for name in _ANALYSIS + _WEIGHTING)
    try:
        hash(key)
    except TypeError:  # e.g. a list of stop words
        return (id(vectorizer),)
    return key


class TfidfGroup:
    """Fitted TfidfVectorizers with one compatibility key, transformed together.

    Tables, one row per n-gram of any member's vocabulary plus a last row for n-grams in none: `columns` (the
    member's column or -1) and `idf` (0 where the member lacks it, so such an n-gram adds 0 to the norms before
    it is dropped with the columns)."""

    def __init__(self, vectorizers: list, words=()):
        from sklearn.base import clone

        first = vectorizers[0]
        if first.norm not in ("l2", None):
            raise ValueError(f"fastpath.tfidf: norm '{first.norm}' is not implemented")
        self.analyze = clone(first).build_analyzer()  # of an unfitted copy: the group must not keep a vectorizer alive
        self.dtype, self.binary, self.sublinear, self.norm = first.dtype, first.binary, first.sublinear_tf, first.norm
        self.widths = [len(v.vocabulary_) for v in vectorizers]
        if len(vectorizers) == 1:  # the vocabulary itself: a row per column
            self.index = first.vocabulary_
            self.columns = np.append(np.arange(self.widths[0], dtype=np.int64), -1)[:, None]
            idf = first.idf_ if first.use_idf else np.ones(self.widths[0], dtype=first.dtype)
            self.idf = np.append(idf, idf.dtype.type(0))[:, None]
        else:  # rows in string order, which is each fitted vocabulary's column order
            self.index = {term: i for i, term in enumerate(sorted(set().union(*(v.vocabulary_ for v in vectorizers))))}
            self.columns = np.full((len(self.index) + 1, len(vectorizers)), -1, dtype=np.int64)
            self.idf = np.zeros((len(self.index) + 1, len(vectorizers)), dtype=first.dtype)
            for j, v in enumerate(vectorizers):
                rows = np.fromiter(map(self.index.__getitem__, v.vocabulary_), np.int64, len(v.vocabulary_))
                cols = np.fromiter(v.vocabulary_.values(), np.int64, len(v.vocabulary_))
                if np.any(np.diff(cols[np.argsort(rows)]) <= 0):
                    raise ValueError("fastpath.share: a vocabulary not in string order (not learnt by fit) "
                                     "cannot be shared")
                self.columns[rows, j] = cols
                self.idf[rows, j] = v.idf_[cols] if v.use_idf else 1
        per_word = (first.analyzer == "char_wb" and first.input == "content" and first.lowercase
                    and not first.strip_accents and first.preprocessor is None)
        self.words = {word: self._rows_of(word) for word in words} if per_word and words else None

    def transform(self, texts: list[str]) -> list[Rows]:
        """Each vectorizer's transform(texts)."""
        if len(texts) == 1:
            return self._one(texts[0])
        grams = [Counter(self.analyze(text)) for text in texts]
        sizes = [len(g) for g in grams]
        n, k = len(texts), len(self.widths)
        row = np.repeat(np.arange(n), sizes)
        ids = np.fromiter(chain.from_iterable(map(self.index.get, g, repeat(-1)) for g in grams), np.int64, sum(sizes))
        counts = np.fromiter(chain.from_iterable(g.values() for g in grams), np.int64, sum(sizes))
        order = np.argsort(row * len(self.columns) + ids)  # by text, then by column
        row, ids = row[order], ids[order]
        data = self._weights(ids, counts[order])
        cells = (row[:, None] * k + np.arange(k)).ravel()  # (text, vectorizer) of each value, in summation order
        if self.norm == "l2":
            norms = np.sqrt(np.bincount(cells, weights=(data * data).astype(np.float64).ravel(), minlength=n * k))
            norms[norms == 0.0] = 1.0
            data /= norms.reshape(n, k)[row]
        columns = self.columns[ids]
        present = columns >= 0
        indptr = np.zeros((n + 1, k), dtype=np.int64)
        np.cumsum(np.bincount(cells[present.ravel()], minlength=n * k).reshape(n, k), axis=0, out=indptr[1:])
        return [Rows(data[present[:, j], j], columns[present[:, j], j], indptr[:, j].copy(), width)
                for j, width in enumerate(self.widths)]

    def _one(self, text: str) -> list[Rows]:
        """transform of one text (the served case): the same values with half the numpy steps."""
        if self.words is None:
            grams = Counter(self.analyze(text))
            ids = np.fromiter(map(self.index.get, grams, repeat(-1)), np.int64, len(grams))
            order = np.argsort(ids)
            ids, counts = ids[order], np.fromiter(grams.values(), np.int64, len(grams))[order]
        else:
            words = text.lower().split()  # the words CountVectorizer's char_wb analysis splits the text into
            rows = [self.words.get(word) for word in words]
            others = " ".join(word for word, found in zip(words, rows) if found is None)
            rows = [found for found in rows if found is not None] + [self._rows_of(others)]  # others: one analysis
            ids, counts = np.unique(np.concatenate(rows), return_counts=True)
        data = self._weights(ids, counts)
        if self.norm == "l2" and len(data):
            norms = np.sqrt(np.cumsum((data * data).astype(np.float64), axis=0)[-1])  # sequential sums, as sklearn's
            norms[norms == 0.0] = 1.0
            data /= norms
        columns = self.columns[ids]
        present = columns >= 0
        out = []
        for j, width in enumerate(self.widths):
            keep = present[:, j]
            cols = columns[keep, j]
            out.append(Rows(data[keep, j], cols, np.array([0, len(cols)]), width))
        return out

    def _rows_of(self, words: str) -> np.ndarray:
        """Table rows of the char_wb n-grams of (lowercased) words, one per occurrence."""
        grams = self.analyze(words)
        return np.fromiter(map(self.index.get, grams, repeat(-1)), np.int64, len(grams))

    def _weights(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """tf x idf of n-grams given by table row and count, one column per vectorizer."""
        tf = counts.astype(self.dtype)
        if self.binary:
            tf.fill(1)
        if self.sublinear:
            np.log(tf, out=tf)
            tf += 1.0
        return tf[:, None] * self.idf[ids]
