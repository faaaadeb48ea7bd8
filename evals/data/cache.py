"""Embeddings of a data set cached on disk, keyed by encoder identity and the texts' hash."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from coe.embedder import Embedder


def texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def embedder_key(embedder: "Embedder") -> str:
    runtime = getattr(embedder, "runtime_id", None) or "torch"
    return f"{embedder.id}-{runtime}".replace("/", "_").replace("@", "_")


def cached_embeddings(embedder: "Embedder", texts: list[str], cache_dir: Path, show_progress: bool = False) -> np.ndarray:
    """Embed `texts` once per (encoder, runtime, texts) and keep the matrix as .npy under cache_dir/embeddings."""
    path = Path(cache_dir).expanduser() / "embeddings" / f"{embedder_key(embedder)}-{texts_hash(texts)}.npy"
    if path.exists():
        vecs = np.load(path)
        if vecs.shape[0] == len(texts):
            return vecs
    vecs = embedder.encode(texts, show_progress=show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(path)
    return vecs
