"""Stage 1 over routes a user declares: an exam model, a request model and a style gate, one probability.

    p(route | q) = g(q) p_exam(route | q) + (1 - g(q)) p_request(route | q)

exam     Stage1 on MMLU (57 subjects summed to the 17 subject routes) and on the examples of the routes
         MMLU lacks (the task routes), calibrated on MMLU validation and then refitted on MMLU train +
         validation with the same weights; it reads every request as an exam question, but a coding
         request the gate takes for one can still land on `coding`.
request  Stage1 on the few-shot rows (each route's examples and the user's labelled requests) over all
         routes, pooled with the exam model's subject knowledge:
         log p = a log p_few + b log p_exam (routes with MMLU rows) + c (routes without).
gate     g(q) = p(exam-style | q): logistic regression on word n-grams, the embedding and the length,
         exam rows against request rows.

The user's requests are split in K folds by a hash of their text: the request model's weights, the
pool (a, b, c) and tau see only predictions of models that did not train on that row (tau and the
validation metrics use the exam model from before its refit). A route's examples are always trained on;
without requests they are the folded rows, and the exam model judges those it learns from out of fold too.
Measured on the shipped user requests and MMLU (docs/routing.md): one model over both kinds of rows lets
the 8,400 exam questions swallow the requests; this keeps them apart.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from routers.two_stage import fastpath
from routers.two_stage.model import Stage1, log_softmax

FOLDS = 4
EXAM, REQUEST, EXAMPLE = "exam", "request", "example"


def _fold(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % FOLDS


def _head(text: str, words: int = 8) -> str:
    return " ".join(text.split()[:words])


class Gate:
    """p(exam-style | text): word n-grams of the text and of its first words (where a request says what to
    do with the passage that follows), the embedding and the log length; logistic regression, balanced."""

    def fit(self, texts: list[str], embeddings: np.ndarray, exam: np.ndarray) -> "Gate":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=50_000,
                                    dtype=np.float32).fit(texts)
        self.head = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=20_000,
                                    dtype=np.float32).fit([_head(t) for t in texts])
        self.lr = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced").fit(
            self._features(texts, embeddings), exam.astype(int))
        return self

    def _features(self, texts: list[str], embeddings: np.ndarray):
        from scipy.sparse import csr_matrix, hstack

        length = np.log1p([len(t) for t in texts]).astype(np.float32)[:, None]
        return hstack([self.word.transform(texts), self.head.transform([_head(t) for t in texts]), csr_matrix(embeddings),
                       csr_matrix(length)]).tocsr()

    def predict(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        length = np.log1p([len(t) for t in texts])[:, None]
        z = fastpath.linear(self.lr, [fastpath.tfidf(self.word, texts), fastpath.tfidf(self.head, [_head(t) for t in texts]),
                                      embeddings, length])
        return 1.0 / (1.0 + np.exp(-z))  # classes_ are [0, 1]: 1 = exam


class RouteMixture:
    """Same interface as Stage1 (labels, predict_proba); fit() also returns held-out probabilities for tau."""

    def __init__(self, classifier: str = "logreg", lexical: bool = True, seed: int = 0):
        self.classifier, self.lexical, self.seed = classifier, lexical, seed
        self.labels: list[str] = []
        self.exam: Stage1 | None = None
        self.few: Stage1 | None = None
        self.gate: Gate | None = None
        self.subjects: list[str] = []  # labels with exam rows: the pool's b term; the rest get c
        self.pool = (1.0, 0.0, 0.0)

    def _few_model(self) -> Stage1:
        # few rows: a tighter kNN and weaker regularisation than the exam model's
        return Stage1(classifier="logreg", lexical=self.lexical, c_dense=100.0, knn=5, seed=self.seed)

    def fit(self, train, validation, progress=None) -> tuple[dict, np.ndarray, list[str]]:
        """train/validation: LabeledSets whose `groups` mark rows exam, request or example. Returns
        (calibration record, held-out probabilities, their labels) for tau and the metrics."""
        step = progress or (lambda msg: None)
        record, val_exam = self.fit_exam(train, validation, step)
        return self.fit_requests(train, validation, val_exam, record, step)

    def fit_exam(self, train, validation, step) -> tuple[dict, np.ndarray | None]:
        """The exam model alone (it never sees the request rows, so cross-validation over them can fit it once).
        Returns (calibration record, its validation probabilities from before the refit)."""
        groups = np.array(train.groups)
        exam_rows = groups == EXAM
        self.labels = sorted(set(train.labels))
        record, val_exam = {}, None
        if exam_rows.any():
            step("exam model (MMLU + the examples of routes without MMLU rows)")
            self.subjects = sorted({lab for lab, e in zip(train.labels, exam_rows) if e})
            taught = self._taught(train)
            self.exam = Stage1(self.classifier, self.lexical, seed=self.seed).fit(
                *_take(train, taught, fine=True), progress=step)
            record["exam"] = self.exam.calibrate(validation.texts, validation.embeddings, validation.labels)
            val_exam = self._exam_proba(validation.texts, validation.embeddings)
            if validation.labels:
                step("exam model refit on MMLU train + validation (calibrated weights kept)")
                every = np.ones(len(validation.labels), bool)
                self.exam.refit(*_join(_take(train, taught, fine=True), _take(validation, every, fine=True)))
                record["exam"]["refit_rows"] = int(taught.sum()) + len(validation.labels)
        return record, val_exam

    def _taught(self, data) -> np.ndarray:
        """The rows the exam model learns from: the exam rows and the examples of routes without exam rows."""
        groups = np.array(data.groups)
        return (groups == EXAM) | ((groups == EXAMPLE) & ~np.isin(data.labels, self.subjects))

    def fit_requests(self, train, validation, val_exam: np.ndarray | None, record: dict,
                     step) -> tuple[dict, np.ndarray, list[str]]:
        """The request model, the pool and the gate, after fit_exam; returns what fit() returns."""
        groups = np.array(train.groups)
        exam_rows, few_rows = groups == EXAM, groups != EXAM
        step("request model: out-of-fold predictions")
        held_out = held_out_group(train.groups)
        folds = np.array([_fold(t) if g == held_out else -1 for t, g in zip(train.texts, groups)])
        self.few = self._few_model().fit(*_take(train, few_rows, fine=True))
        held = np.nonzero(folds >= 0)[0]
        parts, gates = [None] * 3, np.zeros(len(held))
        for k in range(FOLDS):
            out = folds[held] == k
            if not out.any():
                continue
            keep = few_rows & (folds != k)
            model = self._few_model().fit(*_take(train, keep, fine=True))
            rows = held[out]
            fold_parts = model.aligned_logits([train.texts[i] for i in rows], train.embeddings[rows], self.few.fine)
            for j, part in enumerate(fold_parts):
                if np.isscalar(part):
                    parts[j] = part
                    continue
                if parts[j] is None:
                    parts[j] = np.zeros((len(held), part.shape[1]))
                parts[j][out] = part
            if self.exam is not None:
                texts, embeddings, _ = _take(train, exam_rows | keep)
                gate = Gate().fit(texts, embeddings, exam_rows[exam_rows | keep])
                gates[out] = gate.predict([train.texts[i] for i in rows], train.embeddings[rows])
        held_labels = [train.labels[i] for i in held]
        record["request"] = self.few.calibrate_parts(parts, held_labels)
        few_oof = self._spread(self.few.proba_from_parts(parts), self.few.labels)
        exam_oof = self._exam_held_out(train, validation, held, folds, step)
        record["pool"] = self._fit_pool(few_oof, exam_oof, held_labels)
        probs = self._mix(gates, few_oof, exam_oof)
        if self.exam is not None:
            step("style gate")
            self.gate = Gate().fit(train.texts, train.embeddings, exam_rows)
            few_val = self._spread(self.few.predict_proba(validation.texts, validation.embeddings), self.few.labels)
            gate_val = self.gate.predict(validation.texts, validation.embeddings)
            probs = np.vstack([self._mix(gate_val, few_val, val_exam), probs])
            held_labels = list(validation.labels) + held_labels
        return record, probs, held_labels

    def _exam_held_out(self, train, validation, held: np.ndarray, folds: np.ndarray, step) -> np.ndarray | None:
        """The exam model's probabilities of the held-out rows. Those it learnt from (the task routes' examples,
        held out when the user gave no requests) come from exam models fitted without their fold, with the
        calibrated weights: an exam model judging its own training rows would teach the pool and tau that it
        is never wrong."""
        exam = self._exam_proba([train.texts[i] for i in held], train.embeddings[held])
        if exam is None:
            return None
        taught = self._taught(train)
        if not taught[held].any():
            return exam
        step("exam model: out-of-fold predictions of the examples it learns from")
        extra = _take(validation, np.ones(len(validation.labels), bool), fine=True) if validation.labels else None
        for k in range(FOLDS):
            out = taught[held] & (folds[held] == k)
            if not out.any():
                continue
            rows = _take(train, taught & (folds != k), fine=True)
            model = Stage1(self.classifier, self.lexical, seed=self.seed).fit(*(_join(rows, extra) if extra else rows))
            model.weights = self.exam.weights
            idx = held[out]
            exam[out] = self._spread(model.predict_proba([train.texts[i] for i in idx], train.embeddings[idx]),
                                     model.labels)
        return exam

    def _share_tfidf(self) -> None:
        """The three models transform the same texts: their word TF-IDFs, and the two models' character ones, are
        computed together, the character n-grams of the words the word TF-IDFs know looked up once (fastpath.share)."""
        models = [m for m in (self.exam, self.few) if m is not None and m.lex is not None]
        words = [m.word for m in models] + ([self.gate.word] if self.gate is not None else [])
        fastpath.share(words)
        fastpath.share([m.char for m in models], words_from=tuple(words))

    def _spread(self, probs: np.ndarray, labels: list[str]) -> np.ndarray:
        """Columns of a sub-model's labels placed among all labels (zeros elsewhere)."""
        out = np.zeros((probs.shape[0], len(self.labels)))
        out[:, _columns(tuple(self.labels), tuple(labels))] = probs
        return out

    def _exam_proba(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray | None:
        if self.exam is None:
            return None
        return self._spread(self.exam.predict_proba(texts, embeddings), self.exam.labels)

    def _pooled(self, few: np.ndarray, exam: np.ndarray | None, a: float, b: float, c: float) -> np.ndarray:
        z = a * np.log(np.clip(few, 1e-9, 1.0))
        if exam is not None:
            unknown = _without_exam_rows(tuple(self.labels), tuple(self.subjects))
            z = z + b * np.where(unknown, 0.0, np.log(np.clip(exam, 1e-9, 1.0))) + c * unknown
        return np.exp(log_softmax(z))

    def _fit_pool(self, few: np.ndarray, exam: np.ndarray | None, labels: list[str]) -> dict:
        from scipy.optimize import minimize

        if exam is None:
            return {"pool": list(self.pool)}
        y = np.array([self.labels.index(lab) for lab in labels])

        def nll(x: np.ndarray) -> float:
            p = self._pooled(few, exam, *x)
            return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())

        res = minimize(nll, np.array([1.0, 0.5, 0.0]), method="L-BFGS-B", bounds=[(0.0, 20.0), (0.0, 20.0), (-30.0, 30.0)])
        self.pool = tuple(round(float(v), 4) for v in res.x)
        return {"pool": list(self.pool), "nll": round(float(res.fun), 4)}

    def _mix(self, gate: np.ndarray, few: np.ndarray, exam: np.ndarray | None) -> np.ndarray:
        request = self._pooled(few, exam, *self.pool)
        if exam is None:
            return request
        return gate[:, None] * exam + (1.0 - gate[:, None]) * request

    def predict_proba(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        texts = list(texts)
        self._share_tfidf()
        few = self._spread(self.few.predict_proba(texts, embeddings), self.few.labels)
        exam = self._exam_proba(texts, embeddings)
        gate = self.gate.predict(texts, embeddings) if self.gate is not None else np.zeros(len(texts))
        return self._mix(gate, few, exam)


def held_out_group(groups: list[str]) -> str:
    """The group fit() folds for held-out predictions: the requests, or the examples when there are none."""
    return REQUEST if REQUEST in groups else EXAMPLE


def held_out_texts(mixture: RouteMixture, train, validation) -> list[str]:
    """The texts of fit()'s held-out probabilities, in their order: the validation rows (when there is an exam
    model), then the rows of the held-out group."""
    held_out = held_out_group(train.groups)
    held = [t for t, g in zip(train.texts, train.groups) if g == held_out]
    return (list(validation.texts) if mixture.exam is not None else []) + held


@functools.lru_cache(maxsize=64)
def _columns(labels: tuple[str, ...], sub: tuple[str, ...]) -> np.ndarray:
    """The column of each of `sub` among `labels`: fixed per fitted model, so found once, not per query."""
    columns = np.array([labels.index(lab) for lab in sub], dtype=np.int64)
    columns.flags.writeable = False
    return columns


@functools.lru_cache(maxsize=64)
def _without_exam_rows(labels: tuple[str, ...], subjects: tuple[str, ...]) -> np.ndarray:
    """Which labels have no exam rows (the pool's c term), once per fitted model."""
    unknown = ~np.isin(labels, subjects)
    unknown.flags.writeable = False
    return unknown


def _take(data, mask: np.ndarray, fine: bool = False):
    """(texts, embeddings, labels[, fine labels]) of the rows in `mask`."""
    idx = np.nonzero(mask)[0]
    out = ([data.texts[i] for i in idx], data.embeddings[idx], [data.labels[i] for i in idx])
    if fine:
        fine_labels = data.fine_labels or data.labels
        out = out + ([fine_labels[i] for i in idx],)
    return out


def _join(a: tuple, b: tuple) -> tuple:
    """Two _take tuples as one (texts, embeddings, labels[, fine labels])."""
    return tuple(np.vstack([x, y]) if isinstance(x, np.ndarray) else list(x) + list(y) for x, y in zip(a, b))
