"""Query embeddings with a sentence-transformers encoder shipped offline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coe.assets import PACKAGE_PREFIX, resolve_model_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def encoder_path(ref: str) -> Path:
    return resolve_model_path(ref)


def encoder_id(ref: str) -> str:
    """A stable identity for an encoder: its name plus a hash of its weights file, so artifacts can refuse a mismatch."""
    path = encoder_path(ref)
    weights = next(iter(sorted(path.glob("*.safetensors"))), None) or next(iter(sorted(path.glob("*.bin"))), None)
    digest = hashlib.sha256()
    if weights is not None:
        with weights.open("rb") as fh:
            digest.update(fh.read(1 << 20))
        digest.update(str(weights.stat().st_size).encode())
    name = ref[len(PACKAGE_PREFIX):] if ref.startswith(PACKAGE_PREFIX) else path.name
    return f"{name}@{digest.hexdigest()[:12]}"


@dataclass
class Embedder:
    """L2-normalised embeddings, so a dot product is a cosine similarity."""

    ref: str
    batch_size: int = 64
    device: str = "cpu"
    _model: "SentenceTransformer | None" = field(default=None, init=False, repr=False)

    @property
    def id(self) -> str:
        return encoder_id(self.ref)

    @property
    def model(self) -> "SentenceTransformer":
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(encoder_path(self.ref)), device=self.device, local_files_only=True)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return vectors.astype(np.float32, copy=False)
