"""The peer: semantic-router's IndexedRouter, built from the training questions as utterances.

Accuracy is measured with an encoder that returns the vectors of the same local model
(precomputed once, full precision), so the peer's routing quality is its own while the
benchmark does not embed 14k questions twice; latency, throughput and the index build
time are measured with its real LocalEncoder(name=<local model path>) on the same machine.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _import():
    try:
        from semantic_router import Route
        from semantic_router.encoders import DenseEncoder
        from semantic_router.encoders.local import LocalEncoder
        from semantic_router.routers import IndexedRouter
        from semantic_router.routers.base import run
    except ImportError as exc:  # optional extra: pip install -e .[bench]
        raise RuntimeError(f"semantic-router is not installed (pip install -e '.[bench]'): {exc}") from None
    return Route, DenseEncoder, LocalEncoder, IndexedRouter, run


def lookup_encoder(vectors: dict[str, np.ndarray]):
    _, DenseEncoder, _, _, _ = _import()

    class LookupEncoder(DenseEncoder):
        """Returns precomputed vectors of the local model for known texts."""

        name: str = "lookup"
        score_threshold: float = 0.0

        def __call__(self, docs: list[Any]) -> list[list[float]]:
            return [vectors[d].tolist() for d in docs]

    return LookupEncoder()


def build_router(encoder, utterances: dict[str, list[str]]):
    Route, _, _, IndexedRouter, _ = _import()
    routes = [Route(name=name, utterances=list(utts)) for name, utts in utterances.items()]
    return IndexedRouter(encoder=encoder, routes=routes)


def scores_many(router, texts: list[str]) -> list[dict[str, float]]:
    """The router's own batched path: one encoder call, then an index query per vector."""
    *_, run = _import()
    return run(router._scores_many(list(texts)))


def top1(scores: list[dict[str, float]], labels: list[str]) -> tuple[list[str | None], np.ndarray]:
    pred, top = [], []
    for s in scores:
        if not s:
            pred.append(None)
            top.append(0.0)
            continue
        name = max(s, key=s.__getitem__)
        pred.append(name)
        top.append(s[name])
    return pred, np.array(top)


def local_encoder(model_path: str):
    _, _, LocalEncoder, _, _ = _import()
    return LocalEncoder(name=model_path, device="cpu")


def timed_build(model_path: str, utterances: dict[str, list[str]]):
    """Build the peer with its real local encoder; returns (router, seconds)."""
    enc = local_encoder(model_path)
    t = time.perf_counter()
    router = build_router(enc, utterances)
    return router, time.perf_counter() - t
