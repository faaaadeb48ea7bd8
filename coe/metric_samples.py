"""Prometheus metrics read back in this process: sums over labels, and percentiles from histogram buckets the way
PromQL's histogram_quantile computes them, so the dashboard's numbers are Grafana's."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Samples:
    """Every sample of the registry (but the `_created` timestamps), by family and by sample name."""

    def __init__(self, families: Iterable) -> None:
        self.by_family: dict[str, list[Sample]] = {}
        self.by_name: dict[str, list[Sample]] = defaultdict(list)
        for family in families:
            rows = [Sample(s.name, dict(s.labels), s.value) for s in family.samples if not s.name.endswith("_created")]
            self.by_family[family.name] = rows
            for row in rows:
                self.by_name[row.name].append(row)

    def total(self, name: str, by: str | None = None, **match: str) -> dict[str, float]:
        """Sum of the samples called `name` that carry `match`, grouped by label `by` ('' when None)."""
        out: dict[str, float] = defaultdict(float)
        for s in self.by_name.get(name, []):
            if all(s.labels.get(k) == v for k, v in match.items()):
                out[s.labels.get(by, "") if by else ""] += s.value
        return dict(out)

    def buckets(self, name: str, **match: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets (upper bound, count), summed over its other labels."""
        summed: dict[float, float] = defaultdict(float)
        for s in self.by_name.get(f"{name}_bucket", []):
            if all(s.labels.get(k) == v for k, v in match.items()):
                summed[float(s.labels["le"])] += s.value
        return sorted(summed.items())


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile: linear inside the bucket the rank falls in; the top finite bound for +Inf."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below) if cumulative > below else upper
        lower, below = upper, cumulative
    return lower
