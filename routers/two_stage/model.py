"""Stage 1: p(category | query) from dense embeddings and lexical (TF-IDF) features.

Two linear models, one on the sentence embedding and one on word + character n-gram
TF-IDF of the text, are combined as a weighted sum of their log-probabilities; the two
weights (which also act as a temperature) are fitted on validation data by
log-likelihood, so the combined probabilities are calibrated. `classifier="mlp"` puts a
small MLP on the embedding instead of logistic regression.
"""

from __future__ import annotations

import numpy as np

CLASSIFIERS = ("logreg", "mlp")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class Stage1:
    def __init__(self, classifier: str = "logreg", lexical: bool = True, c_dense: float = 10.0,
                 c_lexical: float = 10.0, seed: int = 0):
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier '{classifier}'; known: {', '.join(CLASSIFIERS)}")
        self.classifier = classifier
        self.lexical = lexical
        self.c_dense = c_dense
        self.c_lexical = c_lexical
        self.seed = seed
        self.labels: list[str] = []
        self.dense = None
        self.word = None
        self.char = None
        self.lex = None
        self.weights = (1.0, 0.0)

    # --- features -------------------------------------------------------
    def _lex_features(self, texts: list[str]):
        from scipy.sparse import hstack

        return hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()

    # --- fitting --------------------------------------------------------
    def fit(self, texts: list[str], embeddings: np.ndarray, labels: list[str], progress=None) -> "Stage1":
        from sklearn.linear_model import LogisticRegression

        step = progress or (lambda msg: None)
        self.labels = sorted(set(labels))
        y = np.array([self.labels.index(lab) for lab in labels])
        step("dense classifier")
        if self.classifier == "mlp":
            from sklearn.neural_network import MLPClassifier

            self.dense = MLPClassifier(hidden_layer_sizes=(512,), alpha=1e-3, batch_size=128, max_iter=60,
                                       early_stopping=True, n_iter_no_change=5, random_state=self.seed)
        else:
            self.dense = LogisticRegression(C=self.c_dense, max_iter=1000)
        self.dense.fit(embeddings, y)
        if self.lexical:
            from sklearn.feature_extraction.text import TfidfVectorizer

            step("lexical features")
            self.word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=100_000,
                                        dtype=np.float32)
            self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=3,
                                        max_features=150_000, dtype=np.float32)
            self.word.fit(texts)
            self.char.fit(texts)
            step("lexical classifier")
            self.lex = LogisticRegression(C=self.c_lexical, max_iter=300)
            self.lex.fit(self._lex_features(texts), y)
            self.weights = (1.0, 1.0)
        return self

    def _parts(self, texts: list[str], embeddings: np.ndarray) -> list[np.ndarray]:
        parts = [np.log(np.clip(self.dense.predict_proba(embeddings), 1e-12, 1.0))]
        if self.lex is not None:
            parts.append(np.log(np.clip(self.lex.predict_proba(self._lex_features(texts)), 1e-12, 1.0)))
        return parts

    def calibrate(self, texts: list[str], embeddings: np.ndarray, labels: list[str]) -> dict:
        """Fit the combination weights on held-out data by grid search on log-likelihood."""
        y = np.array([self.labels.index(lab) for lab in labels])
        parts = self._parts(texts, embeddings)
        grid = np.round(np.arange(0.0, 3.01, 0.1), 2)
        best = (np.inf, self.weights)
        pairs = [(a, 0.0) for a in grid if a > 0] if len(parts) == 1 else [(a, b) for a in grid for b in grid if a + b > 0]
        for a, b in pairs:
            z = a * parts[0] + (b * parts[1] if len(parts) > 1 else 0.0)
            nll = -_log_softmax(z)[np.arange(len(y)), y].mean()
            if nll < best[0]:
                best = (nll, (float(a), float(b)))
        self.weights = best[1]
        return {"weights": list(self.weights), "val_nll": float(best[0])}

    def predict_proba(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        parts = self._parts(texts, embeddings)
        z = self.weights[0] * parts[0]
        if len(parts) > 1:
            z = z + self.weights[1] * parts[1]
        return np.exp(_log_softmax(z))
