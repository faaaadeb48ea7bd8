"""Embeddings of a data set cached on disk, keyed by encoder identity and the texts' hash."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from coe.core.encoder import Encoder


def texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


ENCODING = "e2"
"""Bumped when what an encoder computes for a text changes, so no cache of the old vectors is read
(e2: the int8 model embeds each text alone, coe/onnx_encoder.py)."""


def embedder_key(embedder: "Encoder") -> str:
    runtime = getattr(embedder, "runtime_id", None) or "torch"
    return f"{embedder.id}-{runtime}-{ENCODING}".replace("/", "_").replace("@", "_")


SHIPPED_DIR = Path(__file__).resolve().parent / "embeddings"
"""Float16 copies of caches that ship with the repo, so a first `coe train` needs no 4-minute embedding pass."""


def shipped_path(name: str) -> Path:
    return SHIPPED_DIR / name.replace(".npy", ".f16.npy")


def cached_embeddings(embedder: "Encoder", texts: list[str], cache_dir: Path, show_progress: bool = False) -> np.ndarray:
    """Embed `texts` once per (encoder, runtime, texts) and keep the matrix as .npy under cache_dir/embeddings.

    The key names the encoder's weights and the exact texts, so a shipped copy is used only when it is
    what this encoder would compute for these texts.
    """
    name = f"{embedder_key(embedder)}-{texts_hash(texts)}.npy"
    path = Path(cache_dir).expanduser() / "embeddings" / name
    for candidate in (path, shipped_path(name)):
        if candidate.exists():
            vecs = np.load(candidate)
            if vecs.shape[0] == len(texts):
                return vecs.astype(np.float32, copy=False)
    vecs = embedder.encode(texts, show_progress=show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(path)
    return vecs
