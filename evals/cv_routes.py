"""Cross-validation of the route mixture on the tune rows of the user requests, for decisions that must not look
at their test rows: 4 outer folds stratified by route (by a hash of the text), each trained like `coe train`
without that fold, plus MMLU validation accuracy and macro-F1 of the same models. The exam model never sees the
request rows, so it is fitted once.

    python -m coe_evals.cv_routes [--routes routes.yaml]
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import typer

OUTER = 4


def outer_folds(texts: list[str], labels: list[str], groups: list[str], request: str) -> np.ndarray:
    """Fold of each request row (-1 for the rest): per route, rows ordered by text hash, dealt round-robin."""
    fold = np.full(len(texts), -1)
    by_route: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g == request:
            by_route.setdefault(labels[i], []).append(i)
    for rows in by_route.values():
        for j, i in enumerate(sorted(rows, key=lambda i: hashlib.sha256(texts[i].encode()).hexdigest())):
            fold[i] = j % OUTER
    return fold


def cross_validate(routes_file: Path) -> dict:
    """Out-of-fold route accuracy on the tune rows (overall, per route, confusions) and MMLU validation metrics."""
    from sklearn.metrics import f1_score

    from coe.core.routes import load_routes
    from coe.core.settings import get_settings
    from coe.data.embedding_cache import cached_embeddings
    from coe.embedder import make_embedder
    from coe.train_data import DEFAULT_SOURCES, gather, labeled_sets
    from routers.two_stage.mixture import REQUEST, RouteMixture
    from routers.two_stage.train import LabeledSet

    settings = get_settings()
    embedder = make_embedder(settings)
    data = gather(list(DEFAULT_SOURCES), load_routes(routes_file), settings.cache_dir)
    train, val, _ = labeled_sets(data, lambda texts: cached_embeddings(embedder, texts, settings.cache_dir))
    base = RouteMixture()
    _, val_exam = base.fit_exam(train, val, lambda msg: None)
    fold = outer_folds(train.texts, train.labels, train.groups, REQUEST)
    subjects = sorted(set(val.labels))
    preds: dict[int, str] = {}
    val_acc, val_f1 = [], []
    for k in range(OUTER):
        keep = np.nonzero(fold != k)[0]
        part = LabeledSet([train.texts[i] for i in keep], train.embeddings[keep], [train.labels[i] for i in keep],
                          [train.fine_labels[i] for i in keep], [train.groups[i] for i in keep])
        model = copy.deepcopy(base)
        _, probs, _ = model.fit_requests(part, val, val_exam, {}, lambda msg: None)
        val_pred = [model.labels[i] for i in probs[: len(val.labels)].argmax(axis=1)]
        val_acc.append(float(np.mean([p == t for p, t in zip(val_pred, val.labels)])))
        val_f1.append(float(f1_score(val.labels, val_pred, labels=subjects, average="macro", zero_division=0)))
        out = np.nonzero(fold == k)[0]
        p = model.predict_proba([train.texts[i] for i in out], train.embeddings[out])
        preds.update({int(i): model.labels[j] for i, j in zip(out, p.argmax(axis=1))})
    right: dict[str, list[bool]] = {}
    for i, p in preds.items():
        right.setdefault(train.labels[i], []).append(p == train.labels[i])
    return {"tune_accuracy": round(float(np.mean([x for r in right.values() for x in r])), 4),
            "per_route": {lab: round(float(np.mean(r)), 3) for lab, r in sorted(right.items())},
            "confusions": Counter(f"{train.labels[i]} -> {p}" for i, p in preds.items() if p != train.labels[i]).most_common(15),
            "mmlu_validation_accuracy": round(float(np.mean(val_acc)), 4),
            "mmlu_validation_macro_f1": round(float(np.mean(val_f1)), 4)}


def main(routes: Path = typer.Option(Path("routes.yaml"), help="routes file whose examples are trained on")) -> None:
    """Print the cross-validation record as JSON."""
    import json

    typer.echo(json.dumps(cross_validate(routes), indent=1))


if __name__ == "__main__":
    typer.run(main)
