"""Fit the two-stage router: stage 1 on the train split, calibration and tau on validation, stage 1
refitted on train + validation, metrics on test, then a versioned artifact. Data-set agnostic: callers
pass texts, embeddings and labels (coe/cli_train.py does it for MMLU)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from routers.two_stage.artifact import new_version, save_artifact
from routers.two_stage.mixture import EXAM, RouteMixture, held_out_texts
from routers.two_stage.model import Stage1

DEFAULT_TAU_TARGET = "accuracy:0.90"


@dataclass
class LabeledSet:
    texts: list[str]
    embeddings: np.ndarray
    labels: list[str]
    fine_labels: list[str] | None = None  # finer labels to train on (e.g. MMLU subjects), summed up to `labels`
    groups: list[str] | None = None  # per row: exam, request or example (routers.two_stage.mixture); None = all exam


def parse_tau_target(target: str) -> tuple[str, float]:
    mode, _, value = target.partition(":")
    if mode not in ("accuracy", "fallback", "tau") or not value:
        raise ValueError(f"tau target '{target}': use accuracy:<0..1> (accuracy of the routed part), "
                         f"fallback:<0..1> (share sent to the fallback) or tau:<0..1> (fixed)")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"tau target '{target}': value must be within [0, 1]")
    return mode, v


def calibrate_tau(confidence: np.ndarray, correct: np.ndarray, target: str = DEFAULT_TAU_TARGET) -> float:
    """The confidence threshold below which queries go to the fallback expert.
    accuracy:X  the smallest tau whose routed (non-fallback) part is at least X accurate
    fallback:X  the tau that sends a share X of validation queries to the fallback
    tau:X       X itself"""
    mode, value = parse_tau_target(target)
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if mode == "tau":
        return value
    if mode == "fallback":
        return float(np.quantile(confidence, value)) if value > 0 else 0.0
    order = np.argsort(-confidence)
    acc_at = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)  # accuracy of the top-i most confident
    ok = np.nonzero(acc_at >= value)[0]
    if len(ok) == 0:
        return float(confidence.max())  # unreachable: everything below the most confident falls back
    i = ok.max()
    if i == len(order) - 1:
        return 0.0
    return float((confidence[order[i]] + confidence[order[i + 1]]) / 2)


def evaluate(probs: np.ndarray, labels: list[str], truth: list[str], tau: float) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    pred = [labels[i] for i in probs.argmax(axis=1)]
    conf = probs.max(axis=1)
    routed = conf >= tau
    correct = np.array([p == t for p, t in zip(pred, truth)])
    return {
        "n": len(truth),
        "accuracy": round(float(accuracy_score(truth, pred)), 4),
        "macro_f1": round(float(f1_score(truth, pred, average="macro", labels=labels, zero_division=0)), 4),
        "fallback_rate": round(float(1 - routed.mean()), 4),
        "accuracy_routed": round(float(correct[routed].mean()) if routed.any() else 0.0, 4),
    }


def train_two_stage(train: LabeledSet, validation: LabeledSet, *, artifacts_dir: Path, encoder: dict,
                    level: str, data: dict, tests: dict[str, LabeledSet] | None = None, classifier: str = "logreg",
                    lexical: bool = True, tau_target: str = DEFAULT_TAU_TARGET, parents: dict | None = None,
                    expert_map: Callable[[list[str], dict], dict] | None = None, seed: int = 0,
                    progress: Callable[[str], None] | None = None, make_latest: bool = True,
                    routes: dict | None = None, review: Callable[[list[str], list[str], list[str]], dict] | None = None) -> Path:
    """Fit, calibrate, evaluate (on each named test set) and save; returns the artifact folder.
    `routes` ({"fingerprint", "names"}) binds the artifact to the routes file it was trained for. The held-out
    validation decisions (texts never trained on by the model that decided them) are saved with the artifact;
    `review(texts, routes, labels)` is called with them before saving and what it returns is kept as the
    manifest's `review` (coe train: the items that moved route since the previous artifact)."""
    step = progress or (lambda msg: None)
    t0 = time.perf_counter()
    if train.groups and any(g != EXAM for g in train.groups):
        stage1 = RouteMixture(classifier=classifier, lexical=lexical, seed=seed)
        calib, val_probs, val_labels = stage1.fit(train, validation, progress=step)
        val_texts = held_out_texts(stage1, train, validation)
    else:
        stage1 = Stage1(classifier=classifier, lexical=lexical, seed=seed)
        stage1.fit(train.texts, train.embeddings, train.labels, fine_labels=train.fine_labels, progress=step)
        step("calibrating on validation")
        calib = stage1.calibrate(validation.texts, validation.embeddings, validation.labels)
        val_probs, val_labels = stage1.predict_proba(validation.texts, validation.embeddings), validation.labels
        val_texts = list(validation.texts)
        if validation.labels:  # tau and the validation metrics above come from the model before it saw validation
            step("refit on train + validation (calibrated weights kept)")
            stage1.refit(train.texts + validation.texts, np.vstack([train.embeddings, validation.embeddings]),
                         train.labels + validation.labels,
                         train.fine_labels + validation.fine_labels if train.fine_labels and validation.fine_labels else None)
    val_pred = [stage1.labels[i] for i in val_probs.argmax(axis=1)]
    tau = calibrate_tau(val_probs.max(axis=1), np.array([p == t for p, t in zip(val_pred, val_labels)]), tau_target)
    metrics = {"validation": evaluate(val_probs, stage1.labels, val_labels, tau)}
    for name, test in (tests or {}).items():
        step(f"evaluating on {name}")
        metrics[name] = evaluate(stage1.predict_proba(test.texts, test.embeddings), stage1.labels, test.labels, tau)
    counts = {lab: train.labels.count(lab) for lab in stage1.labels}
    label_weights = {lab: c / len(train.labels) for lab, c in counts.items()}
    manifest = {
        "router": "two_stage",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "encoder": encoder,
        "level": level,
        "labels": stage1.labels,
        "parents": parents,
        "classifier": classifier,
        "stage1": type(stage1).__name__,
        "trained_on": "fine labels" if train.fine_labels else "labels",
        "lexical": lexical,
        "calibration": calib,
        "tau": tau,
        "tau_target": tau_target,
        "label_weights": label_weights,
        "data": data,
        "routes": routes,
        "map": expert_map(stage1.labels, label_weights) if expert_map else None,
        "metrics": metrics,
        "review": review(val_texts, val_pred, list(val_labels)) if review else None,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    step("saving artifact")
    label_idx = np.array([stage1.labels.index(lab) for lab in train.labels])
    version = new_version(level, classifier, data.get("hash", "nodata"))
    return save_artifact(artifacts_dir, version, manifest, stage1, train.embeddings, label_idx, make_latest,
                         validation_routes=dict(zip(val_texts, val_pred)))
