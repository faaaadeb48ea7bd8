"""What routers and data caches need of an encoder: an identity and a way to embed texts."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Encoder(Protocol):
    """L2-normalised sentence embeddings. `id` names the weights; `runtime_id` the runtime and truncation."""

    @property
    def id(self) -> str: ...

    @property
    def runtime_id(self) -> str: ...

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray: ...
