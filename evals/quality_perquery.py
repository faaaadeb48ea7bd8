"""The per-query policies of the quality benchmark, fitted on validation answers and judged on the test items.

per-query router  routers/outcomes.QualityPredictor (logistic or kNN on the query embedding) predicts each
                  (model, strategy) pair's chance of a right answer and its compute; each test item goes to the
                  pair with the highest quality minus cost weight x compute (swept).
cascade           routers/outcomes.calibrate_cascade picks the chain and thresholds on validation that keep a
                  target share of the best single pair's validation quality at the least compute (swept); replayed
                  on the test items' stored answers and confidences, every attempt paid.
The default policy is chosen on validation only: the per-query router cross-fitted in FOLDS folds, the
cascade as calibrated; the one of highest validation quality at no more than the best single pair's
validation compute (ties: less compute).
"""

from __future__ import annotations

import numpy as np

from coe_evals import quality_policies as pol
from routers.outcomes import Outcomes, QualityPredictor, calibrate_cascade, choose

PER_QUERY_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)
CASCADE_TARGETS = (0.9, 0.95, 1.0, 1.05)
PREDICTORS = ("logistic", "knn")
FOLDS = 5


def predictor_report(predictor: QualityPredictor, x: np.ndarray, test: Outcomes) -> dict:
    """Held-out AUC and Brier score of each pair's predicted chance of a right answer."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    p = predictor.quality(x)
    out = {}
    for j, e in enumerate(test.experts):
        y = test.correct[:, j]
        auc = float(roc_auc_score(y, p[:, j])) if 0 < y.sum() < len(y) else None
        out[e] = {"auc": None if auc is None else round(auc, 3), "brier": round(float(brier_score_loss(y, p[:, j])), 4),
                  "base_rate": round(float(y.mean()), 3)}
    return out


def per_query_runs(test_records, val: Outcomes, test: Outcomes, val_x: np.ndarray, test_x: np.ndarray,
                   params: dict[str, float]) -> tuple[list[pol.PolicyRun], dict]:
    runs, reports = [], {}
    for kind in PREDICTORS:
        predictor = QualityPredictor(kind).fit(val_x, val)
        reports[kind] = predictor_report(predictor, test_x, test)
        quality, compute = predictor.quality(test_x), predictor.compute(test_x)
        for w in PER_QUERY_WEIGHTS:
            picks = choose(quality, compute, w, predictor.reference_compute)
            runs.append(pol.routed(f"per-query {kind} w={w:g}", "per_query", test_records,
                                   [val.experts[j] for j in picks], params, {"predictor": kind, "cost_weight": w}))
    return runs, reports


def cascade_runs(test_records, val: Outcomes, test: Outcomes) -> tuple[list[pol.PolicyRun], list[dict]]:
    best_val = float(val.correct.mean(axis=0).max())
    runs, settings = [], []
    for target in CASCADE_TARGETS:
        cascade, q_val, c_val = calibrate_cascade(val, target * best_val)
        correct, compute, step = cascade.run(test)
        chain = [val.experts[j] for j in cascade.chain]
        setting = {"target": target, "chain": chain, "thresholds": [round(t, 4) for t in cascade.thresholds],
                   "validation_quality": round(q_val, 4), "validation_compute": round(c_val, 1)}
        run = pol.PolicyRun(f"cascade target={target:g}", "cascade", setting=setting)
        for r, ok, c, s in zip(test_records, correct, compute, step):
            run.choices.append(pol.Choice(chain[:s + 1], bool(ok), float(c), sum(r.answers[e].engine_s for e in chain[:s + 1])))
        runs.append(run)
        settings.append(setting)
    return runs, settings


def _folds(n: int) -> np.ndarray:
    return np.arange(n) % FOLDS


def choose_default(val: Outcomes, val_x: np.ndarray) -> dict:
    """The policy a deployment should serve, chosen on validation answers only (see the module docstring)."""
    singles_q = val.correct.mean(axis=0)
    singles_c = val.compute.mean(axis=0)
    best = int(np.argmax(singles_q))
    budget = float(singles_c[best])
    candidates = []
    fold = _folds(len(val.texts))
    for kind in PREDICTORS:
        for w in PER_QUERY_WEIGHTS:
            correct = np.zeros(len(fold), dtype=bool)
            compute = np.zeros(len(fold))
            for f in range(FOLDS):
                train, held = fold != f, fold == f
                sub = Outcomes([t for t, k in zip(val.texts, train) if k], [d for d, k in zip(val.domains, train) if k],
                               val.experts, val.correct[train], val.compute[train], val.confidence[train])
                predictor = QualityPredictor(kind).fit(val_x[train], sub)
                picks = choose(predictor.quality(val_x[held]), predictor.compute(val_x[held]), w,
                               predictor.reference_compute)
                correct[held] = val.correct[held][np.arange(held.sum()), picks]
                compute[held] = val.compute[held][np.arange(held.sum()), picks]
            candidates.append({"router": "quality", "options": {"predictor": kind, "cost_weight": w},
                               "validation_quality": float(correct.mean()), "validation_compute": float(compute.mean())})
    for target in CASCADE_TARGETS:
        cascade, q, c = calibrate_cascade(val, target * float(singles_q[best]))
        candidates.append({"router": "cascade", "options": {"target": target}, "validation_quality": q,
                           "validation_compute": c})
    affordable = [c for c in candidates if c["validation_compute"] <= budget] or candidates
    chosen = max(affordable, key=lambda c: (round(c["validation_quality"], 6), -c["validation_compute"]))
    return {"chosen": chosen, "best_single": {"expert": val.experts[best], "validation_quality": float(singles_q[best]),
                                              "validation_compute": budget},
            "candidates": [{**c, "validation_quality": round(c["validation_quality"], 4),
                            "validation_compute": round(c["validation_compute"], 1)} for c in candidates]}

