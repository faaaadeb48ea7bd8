"""Stage 1: p(category | query) from dense embeddings and lexical (TF-IDF) features.

Logistic regression on the sentence embedding, a linear SVM on word + character n-gram
TF-IDF of the text, and a similarity-weighted vote of the k nearest training questions give
three sets of logits, summed with three weights; the weights (which also act as a
temperature) are fitted on validation data by log-likelihood,
so the combined softmax is calibrated. The models may be trained on finer labels than the
router emits (MMLU's 57 subjects for its 17 subcategories: subjects are tighter clusters);
a fine -> coarse map then sums the fine probabilities. `classifier="mlp"` puts a small MLP
on the embedding instead of logistic regression.
"""

from __future__ import annotations

import numpy as np

from routers.two_stage import fastpath
from routers.two_stage.nearest import nearest

CLASSIFIERS = ("logreg", "mlp")


def per_class(z: np.ndarray) -> np.ndarray:
    """A binary model's one decision column as two logit columns [0, z] (softmax of them = sigmoid of z)."""
    return np.stack([np.zeros_like(z), z], axis=1) if z.ndim == 1 else z


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class Stage1:
    def __init__(self, classifier: str = "logreg", lexical: bool = True, c_dense: float = 10.0,
                 c_lexical: float = 1.0, knn: int = 10, seed: int = 0):
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier '{classifier}'; known: {', '.join(CLASSIFIERS)}")
        self.classifier = classifier
        self.lexical = lexical
        self.c_dense = c_dense
        self.c_lexical = c_lexical
        self.knn = knn
        self.seed = seed
        self.bank: np.ndarray | None = None  # training embeddings for the kNN vote
        self.bank_y: np.ndarray | None = None
        self.labels: list[str] = []  # what the router emits
        self.fine: list[str] = []  # what the models are trained on
        self.agg: np.ndarray | None = None  # [fine, label] 0/1
        self.dense = None
        self.word = None
        self.char = None
        self.lex = None
        self.weights = (1.0, 0.0, 0.0)

    def _lex_features(self, texts: list[str]):
        from scipy.sparse import hstack

        return hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()

    def fit(self, texts: list[str], embeddings: np.ndarray, labels: list[str], fine_labels: list[str] | None = None,
            progress=None) -> "Stage1":
        """Fit on `fine_labels` when given (each fine label must always come with the same label), else on `labels`."""
        from sklearn.linear_model import LogisticRegression

        step = progress or (lambda msg: None)
        fine_labels = fine_labels or labels
        self.labels = sorted(set(labels))
        self.fine = sorted(set(fine_labels))
        parent: dict[str, str] = {}
        for f, lab in zip(fine_labels, labels):
            if parent.setdefault(f, lab) != lab:
                raise ValueError(f"fine label '{f}' maps to both '{parent[f]}' and '{lab}'")
        self.agg = np.zeros((len(self.fine), len(self.labels)), dtype=np.float32)
        for i, f in enumerate(self.fine):
            self.agg[i, self.labels.index(parent[f])] = 1.0
        y = np.array([self.fine.index(f) for f in fine_labels])
        step("dense classifier")
        if self.classifier == "mlp":
            from sklearn.neural_network import MLPClassifier

            self.dense = MLPClassifier(hidden_layer_sizes=(512,), alpha=1e-3, batch_size=128, max_iter=60,
                                       early_stopping=True, n_iter_no_change=5, random_state=self.seed)
        else:
            self.dense = LogisticRegression(C=self.c_dense, max_iter=200, tol=1e-3)
        self.dense.fit(embeddings, y)
        if self.lexical:
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.svm import LinearSVC

            step("lexical features")
            self.word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=100_000,
                                        dtype=np.float32).fit(texts)
            self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=3,
                                        max_features=150_000, dtype=np.float32).fit(texts)
            step("lexical classifier")
            self.lex = LinearSVC(C=self.c_lexical).fit(self._lex_features(texts), y)
        if self.knn:
            self.bank = np.asarray(embeddings, dtype=np.float32)
            self.bank_y = y.astype(np.int32)
        self.weights = (1.0, 3.0 if self.lexical else 0.0, 0.0)
        return self

    def refit(self, texts: list[str], embeddings: np.ndarray, labels: list[str], fine_labels: list[str] | None = None) -> "Stage1":
        """Fit again on more rows (train + the validation that calibrated it), keeping the calibrated weights:
        MMLU's validation split is a third more questions (measured: +1.2 points on MMLU test)."""
        weights = self.weights
        self.fit(texts, embeddings, labels, fine_labels)
        self.weights = weights
        return self

    def _knn_logits(self, embeddings: np.ndarray) -> np.ndarray:
        """log of a smoothed, similarity-weighted vote of the k nearest training questions."""
        k = min(self.knn, len(self.bank))
        idx, sims = nearest(self.bank, embeddings, k)
        votes = np.full((len(embeddings), len(self.fine)), 0.1 / len(self.fine), dtype=np.float64)
        rows = np.repeat(np.arange(len(embeddings)), k)
        np.add.at(votes, (rows, self.bank_y[idx].ravel()), np.maximum(sims, 0).ravel())
        return np.log(votes / votes.sum(axis=1, keepdims=True))

    def _logits(self, texts: list[str], embeddings: np.ndarray) -> list[np.ndarray]:
        if self.classifier == "mlp":
            from sklearn import config_context

            # inputs come from our own encoder: its per-call validation would be most of a query's time
            with config_context(assume_finite=True, skip_parameter_validation=True):
                parts = [np.log(np.clip(self.dense.predict_proba(embeddings), 1e-12, 1.0))]
        else:
            parts = [log_softmax(per_class(fastpath.linear(self.dense, [embeddings])))]
        if self.lex is not None:
            lexical = fastpath.linear(self.lex, [fastpath.tfidf(self.word, texts), fastpath.tfidf(self.char, texts)])
            parts.append(per_class(lexical))
        else:
            parts.append(0.0)
        parts.append(self._knn_logits(embeddings) if self.bank is not None else 0.0)
        return parts

    def _combine(self, parts: list, a: float, b: float, c: float = 0.0) -> np.ndarray:
        z = a * parts[0] + b * parts[1] + c * parts[2]
        return np.exp(log_softmax(z)) @ self.agg

    def calibrate(self, texts: list[str], embeddings: np.ndarray, labels: list[str]) -> dict:
        """Fit the three weights on held-out data (L-BFGS-B on the log-likelihood of `labels`)."""
        return self.calibrate_parts(self._logits(texts, embeddings), labels)

    def aligned_logits(self, texts: list[str], embeddings: np.ndarray, fine: list[str]) -> list:
        """The three logit sets with columns in the order of `fine` (another model's fine classes); a class
        this model never saw gets a floor, so out-of-fold models can calibrate the model fitted on all rows."""
        parts = self._logits(texts, embeddings)
        cols = [self.fine.index(f) if f in self.fine else -1 for f in fine]
        out = []
        for part, floor in zip(parts, (np.log(1e-6), -10.0, np.log(1e-6))):
            if np.isscalar(part):
                out.append(part)
                continue
            aligned = np.full((part.shape[0], len(fine)), floor)
            known = [j for j, c in enumerate(cols) if c >= 0]
            aligned[:, known] = part[:, [cols[j] for j in known]]
            out.append(aligned)
        return out

    def calibrate_parts(self, parts: list, labels: list[str]) -> dict:
        """calibrate() on logits computed already (e.g. by out-of-fold models, see aligned_logits)."""
        y = np.array([self.labels.index(lab) for lab in labels])
        from scipy.optimize import minimize

        active = np.array([True, self.lex is not None, self.bank is not None])

        def nll(w: np.ndarray) -> float:
            full = np.zeros(3)
            full[active] = w
            p = self._combine(parts, *full)
            return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())

        best = (np.inf, self.weights)
        for start in ([0.75, 3.0, 0.25], [1.5, 1.0, 0.5]):  # two starts; the surface is smooth and low-dimensional
            x0 = np.array(start)[active]
            res = minimize(nll, x0, method="L-BFGS-B", bounds=[(0.0, 20.0)] * int(active.sum()))
            if res.fun < best[0]:
                full = np.zeros(3)
                full[active] = res.x
                best = (float(res.fun), tuple(round(float(v), 4) for v in full))
        self.weights = best[1]
        return {"weights": list(self.weights), "val_nll": round(float(best[0]), 4)}

    def proba_from_parts(self, parts: list) -> np.ndarray:
        return self._combine(parts, *self.weights)

    def predict_proba(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        """[n, labels] probabilities."""
        return self._combine(self._logits(texts, embeddings), *self.weights)
