"""Query embeddings with a sentence-transformers encoder shipped offline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coe.core.settings import Settings, default_cache_dir
from coe.core.assets import PACKAGE_PREFIX, resolve_model_path

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


def _model_max_seq_length(model_dir: Path) -> int:
    import json

    cfg = model_dir / "sentence_bert_config.json"
    if cfg.exists():
        return int(json.loads(cfg.read_text()).get("max_seq_length", 256))
    return 256


@dataclass
class Embedder:
    """L2-normalised embeddings, so a dot product is a cosine similarity.

    runtime: "torch" (sentence-transformers, full precision), "onnx" (ONNX Runtime, fp32) or
    "onnx-int8" (ONNX Runtime, dynamically quantised int8); the ONNX files are exported from
    the same local weights into cache_dir on first use. max_seq_length truncates queries
    (None: the model's own limit). `id` names the weights only, so an artifact trained with
    one runtime loads with another; `runtime_id` tells them apart.
    """

    ref: str
    batch_size: int = 64
    device: str = "cpu"
    runtime: str = "torch"
    max_seq_length: int | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    _model: "SentenceTransformer | None" = field(default=None, init=False, repr=False)
    _onnx: object = field(default=None, init=False, repr=False)
    _id: str | None = field(default=None, init=False, repr=False)

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = encoder_id(self.ref)
        return self._id

    @property
    def runtime_id(self) -> str:
        return self.runtime + (f"-L{self.max_seq_length}" if self.max_seq_length else "")

    @property
    def onnx(self):
        if self._onnx is None:
            from coe.onnx_encoder import OnnxEncoder, onnx_model_file

            cache = Path(self.cache_dir).expanduser()
            model_dir = encoder_path(self.ref)
            model_file = onnx_model_file(model_dir, cache, self.id, self.runtime)
            limit = self.max_seq_length or _model_max_seq_length(model_dir)
            self._onnx = OnnxEncoder(model_file, model_dir, limit, rowwise=self.runtime == "onnx-int8")
        return self._onnx

    @property
    def model(self) -> "SentenceTransformer":
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(encoder_path(self.ref)), device=self.device, local_files_only=True)
            if self.max_seq_length:
                self._model.max_seq_length = self.max_seq_length
        return self._model

    @property
    def dim(self) -> int:
        if self.runtime != "torch":
            return int(self.encode(["dimension probe"]).shape[1])
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.runtime != "torch":
            return self.onnx.encode(list(texts), batch_size=self.batch_size)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return vectors.astype(np.float32, copy=False)


def make_embedder(settings: "Settings") -> Embedder:
    """The one way serve, train, profile and the benchmarks build the encoder: same runtime, same truncation."""
    return Embedder(settings.encoder, runtime=settings.encoder_runtime, max_seq_length=settings.encoder_max_seq_length,
                    cache_dir=settings.cache_dir)
