"""The user-style part of `coe bench routing`: the routes the service ships (tasks + MMLU's subjects),
trained exactly as `coe train` does (MMLU + the routes' examples + the tune split of the shipped user
requests, or --data files), evaluated on the held-out test rows of the user requests (overall and per
route), and the recall of a route declared with 10 examples and nothing else (evals/data/new_route.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np


def restrict_mmlu(data, keep: set[str]):
    """A smoke run: only the sampled MMLU questions, embedded as their own list."""
    from coe.train_data import MMLU

    data.rows = [r for r in data.rows if r.source != MMLU or r.text in keep]
    mmlu_texts = list(dict.fromkeys(r.text for r in data.rows if r.source == MMLU))
    rest = sorted({r.text for r in data.rows} - set(mmlu_texts))
    data.embed_lists = [mmlu_texts, rest]
    return data


def train_routes_router(settings, embedder, routes, registry, artifacts: Path, sources: list[str],
                        keep_mmlu: set[str] | None, cache_dir: Path):
    """(router, seconds, test sets) for these routes, trained like `coe train`."""
    from coe.data.embedding_cache import cached_embeddings
    from coe.train_data import gather, labeled_sets
    from routers.base import RouterContext, build_router
    from routers.two_stage.train import train_two_stage

    t0 = time.perf_counter()
    data = gather(sources, routes, settings.cache_dir)
    if keep_mmlu is not None:
        data = restrict_mmlu(data, keep_mmlu)
    train, validation, tests = labeled_sets(data, lambda texts: cached_embeddings(embedder, texts, cache_dir))
    train_two_stage(train, validation, tests=tests, artifacts_dir=artifacts,
                    encoder={"ref": settings.encoder, "id": embedder.id, "runtime": embedder.runtime_id},
                    level="subcategory", data=data.record, tau_target=settings.router_tau_target,
                    routes={"fingerprint": routes.fingerprint(), "names": routes.names, "file": str(routes.path)})
    router = build_router("two_stage", RouterContext(registry, embedder, artifacts, routes=routes))
    return router, round(time.perf_counter() - t0, 1), tests


def user_metrics(router, test, task_routes: list[str]) -> dict:
    """Top-1 route accuracy overall and per route on held-out user requests (fallback or not)."""
    from sklearn.metrics import f1_score

    decisions = router.route(test.texts, test.embeddings)
    pred = [d.category for d in decisions]
    correct = np.array([p == t for p, t in zip(pred, test.labels)])
    fallback = np.array([d.fallback for d in decisions])
    per_route = {lab: round(float(correct[[t == lab for t in test.labels]].mean()), 4) for lab in sorted(set(test.labels))}
    confusions: dict[str, int] = {}
    for p, t in zip(pred, test.labels):
        if p != t:
            confusions[f"{t} -> {p}"] = confusions.get(f"{t} -> {p}", 0) + 1
    task = [t in task_routes for t in test.labels]
    kinds = {f"{a} -> {b}": 0 for a in ("task", "subject") for b in ("task", "subject")}
    for p, t in zip(pred, test.labels):
        if p != t:
            kinds[f"{'task' if t in task_routes else 'subject'} -> {'task' if p in task_routes else 'subject'}"] += 1
    return {
        "n": len(test.labels), "accuracy": round(float(correct.mean()), 4),
        "macro_f1": round(float(f1_score(test.labels, pred, average="macro", zero_division=0)), 4),
        "accuracy_task_routes": round(float(correct[task].mean()), 4) if any(task) else None,
        "accuracy_subject_routes": round(float(correct[[not x for x in task]].mean()), 4) if not all(task) else None,
        "min_route": min(per_route.items(), key=lambda kv: kv[1]),
        "fallback_rate": round(float(fallback.mean()), 4),
        "accuracy_routed": round(float(correct[~fallback].mean()), 4) if (~fallback).any() else None,
        "per_route": per_route,
        "top_confusions": dict(sorted(confusions.items(), key=lambda kv: -kv[1])[:10]),
        "errors_by_kind": kinds,  # truth kind -> predicted kind: are task requests taken for subjects, or the reverse?
    }


def with_new_route(routes):
    """The routes plus the benchmark's new route (10 examples), as a user would add it to routes.yaml."""
    from coe.core.routes import RouteConfig, Routes, RoutesFile
    from coe_evals.data import new_route

    added = RouteConfig(name=new_route.NAME, kind="task", description=new_route.DESCRIPTION, examples=new_route.EXAMPLES)
    return Routes(RoutesFile(routes=[*routes.spec.routes, added]), routes.path)


def new_route_recall(settings, embedder, routes, registry, artifacts: Path, sources: list[str], keep_mmlu,
                     cache_dir: Path, log: Callable[[str], None]) -> dict:
    """Declare the new route with 10 examples, retrain with no other change, measure its recall."""
    from coe_evals.data import new_route

    log(f"new route '{new_route.NAME}' with {len(new_route.EXAMPLES)} examples: retraining")
    router, secs, tests = train_routes_router(settings, embedder, with_new_route(routes), registry, artifacts, sources,
                                              keep_mmlu, cache_dir)
    decisions = router.route(new_route.TEST, embedder.encode(new_route.TEST))
    hits = [d.category == new_route.NAME for d in decisions]
    out = {"route": new_route.NAME, "n_examples": len(new_route.EXAMPLES), "n_test": len(new_route.TEST),
           "recall": round(float(np.mean(hits)), 4),
           "routed_recall": round(float(np.mean([h and not d.fallback for h, d in zip(hits, decisions)])), 4),
           "missed_as": sorted({d.category for h, d in zip(hits, decisions) if not h}), "train_seconds": secs}
    if "user-requests" in tests:
        other = user_metrics(router, tests["user-requests"], routes.of_kind("task"))
        out["user_accuracy_after"] = other["accuracy"]
    log(f"new route recall {out['recall']:.3f} on {out['n_test']} requests (user-style accuracy after: "
        f"{out.get('user_accuracy_after')})")
    return out
