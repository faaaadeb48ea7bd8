"""Models that failed to load, and when to try each again.

A model that cannot load (corrupt weights, no GPU, a missing package) would otherwise be retried on every
batch, evicting the models that work each time. After a failure it is tried again only after a back-off
that doubles with each failure (capped); meanwhile its jobs fail at once with the load error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class _Failure:
    count: int
    retry_at: float
    error: str


@dataclass
class LoadFailures:
    first_s: float = 5.0
    max_s: float = 300.0
    _failed: dict[str, _Failure] = field(default_factory=dict)

    def blocked(self, key: str, now: float | None = None) -> str | None:
        """The load error of `key` while its back-off runs, else None (try to load it)."""
        failure = self._failed.get(key)
        if failure is None or (time.monotonic() if now is None else now) >= failure.retry_at:
            return None
        return failure.error

    def failed(self, key: str, error: str, now: float | None = None) -> float:
        """Record a failed load; returns the seconds until the next try."""
        count = self._failed[key].count + 1 if key in self._failed else 1
        wait = min(self.max_s, self.first_s * 2 ** (count - 1))
        self._failed[key] = _Failure(count, (time.monotonic() if now is None else now) + wait, error)
        return wait

    def loaded(self, key: str) -> None:
        self._failed.pop(key, None)

    def errors(self) -> dict[str, str]:
        """Every model whose last load failed, with its error."""
        return {key: f.error for key, f in self._failed.items()}
