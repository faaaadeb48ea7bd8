"""Where coe keeps what it makes (converted weights, embeddings, exports), without importing the settings machinery."""

from __future__ import annotations

from pathlib import Path


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "coe"
