"""What `/dashboard` shows, read back from this process's Prometheus metrics (coe/metrics.py) so the page and
Grafana tell the same story: traffic per endpoint, route and expert, the router's confidence, latency per stage,
where the models are, feedback, caches, and any budget or bandit metrics the service has.

Counts are since this process started; with several API replicas each page shows its own replica (Grafana,
deploy/grafana/, sums the fleet). The page itself is a template (coe/api/static/dashboard.html) filled with
the first snapshot, then kept live by its script polling `/dashboard/data`.
"""

from __future__ import annotations

import html
import math
import time
from collections import defaultdict
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from pydantic import BaseModel

from coe import gauges, metrics
from coe.metric_samples import Samples, quantile

if TYPE_CHECKING:
    from coe.service import Service

STATIC = Path(__file__).parent / "api" / "static"
ASSETS = ("dashboard.js", "dashboard.css", "chart.umd.min.js", "chart.js.LICENSE.md")
"""The files of STATIC the page loads (the template is not one of them)."""
OWN_PATHS = ("/dashboard",)
"""Endpoints left out of the traffic charts: the page's own polling would outgrow what it watches."""
QUANTILES = (0.5, 0.9, 0.99)
OPTIONAL = {"budgets": "budget", "bandit": "bandit"}
"""Sections shown only when the service has metrics whose names contain the word (issue 27 items 2 and 3)."""


class Count(BaseModel):
    name: str
    value: float


class Bin(BaseModel):
    upper: float
    count: int


class StageLatency(BaseModel):
    stage: str
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None


class DeviceModels(BaseModel):
    device: str
    workers: int
    resident: list[str]
    asleep: list[str]
    cold: list[str]


class ExpertFeedback(BaseModel):
    expert: str
    count: int
    mean_score: float


class CacheUse(BaseModel):
    cache: str
    hits: int
    misses: int
    hit_rate: float | None


class MetricRow(BaseModel):
    metric: str
    labels: dict[str, str]
    value: float


class DashboardData(BaseModel):
    generated_at: float
    uptime_s: float
    router: str | None
    registry_version: int | None
    queue_depth: int
    requests_total: int
    requests_by_endpoint: list[Count]
    requests_by_status: list[Count]
    decisions_total: int
    fallback_share: float | None
    decisions_by_route: list[Count]
    routed_by_expert: list[Count]
    tokens_by_expert: list[Count]
    confidence: list[Bin]
    stage_latency: list[StageLatency]
    devices: list[DeviceModels]
    feedback: list[ExpertFeedback]
    caches: list[CacheUse]
    budgets: list[MetricRow] | None
    bandit: list[MetricRow] | None


def _counts(totals: dict[str, float]) -> list[Count]:
    return [Count(name=k, value=v) for k, v in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]


def _latency(samples: Samples) -> list[StageLatency]:
    counts = samples.total("coe_stage_seconds_count", by="stage")
    sums = samples.total("coe_stage_seconds_sum", by="stage")
    order = ["embed", "route", "queue", "generate", "aggregate"]
    out = []
    for stage in sorted(counts, key=lambda s: (order.index(s) if s in order else len(order), s)):
        buckets = samples.buckets("coe_stage_seconds", stage=stage)
        ms = [quantile(q, buckets) for q in QUANTILES]
        n = int(counts[stage])
        out.append(StageLatency(stage=stage, count=n, mean_ms=1000 * sums.get(stage, 0) / n if n else None,
                                **{f"p{round(q * 100)}_ms": None if v is None else 1000 * v for q, v in zip(QUANTILES, ms)}))
    return out


def _confidence(samples: Samples) -> list[Bin]:
    bins, below = [], 0.0
    for upper, cumulative in samples.buckets("coe_router_confidence"):
        if not math.isinf(upper):
            bins.append(Bin(upper=upper, count=int(cumulative - below)))
        below = cumulative
    return bins


def _devices(samples: Samples) -> list[DeviceModels]:
    workers = samples.total("coe_workers_live", by="device")
    tiers: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for s in samples.by_name.get("coe_expert_tier", []):
        if s.value:
            tiers[s.labels["device"]][s.labels["tier"]].append(s.labels["expert"])
    return [DeviceModels(device=d, workers=int(workers.get(d, 0)), resident=sorted(tiers[d]["resident"]),
                         asleep=sorted(tiers[d]["asleep"]), cold=sorted(tiers[d]["cold"]))
            for d in sorted(set(workers) | set(tiers))]


def _feedback(samples: Samples) -> list[ExpertFeedback]:
    counts = samples.total("coe_feedback_score_count", by="expert")
    sums = samples.total("coe_feedback_score_sum", by="expert")
    return [ExpertFeedback(expert=e, count=int(n), mean_score=sums.get(e, 0) / n) for e, n in sorted(counts.items()) if n]


def _caches(samples: Samples) -> list[CacheUse]:
    """Every metric with `cache` in its name that counts hits and misses, in a `result` label or in its name."""
    out = []
    for family, rows in sorted(samples.by_family.items()):
        if "cache" not in family:
            continue
        hits = sum(r.value for r in rows if r.labels.get("result") == "hit" or r.name.endswith("_hits_total"))
        misses = sum(r.value for r in rows if r.labels.get("result") == "miss" or r.name.endswith("_misses_total"))
        out.append(CacheUse(cache=family.removeprefix("coe_"), hits=int(hits), misses=int(misses),
                            hit_rate=hits / (hits + misses) if hits + misses else None))
    return out


def _optional(samples: Samples, word: str) -> list[MetricRow] | None:
    """The samples of the metrics named with `word`; None when the service has no such metric."""
    families = [f for f in sorted(samples.by_family) if word in f]
    if not families:
        return None
    return [MetricRow(metric=s.name, labels=s.labels, value=s.value) for f in families for s in samples.by_family[f]]


async def snapshot(service: Service) -> DashboardData:
    await gauges.sample(service)
    samples = Samples(metrics.REGISTRY.collect())
    requests = {k: v for k, v in samples.total("coe_requests_total", by="endpoint").items() if not k.startswith(OWN_PATHS)}
    statuses: dict[str, float] = defaultdict(float)
    for s in samples.by_name.get("coe_requests_total", []):
        if not s.labels["endpoint"].startswith(OWN_PATHS):
            statuses[s.labels["status"]] += s.value
    decisions = samples.total("coe_route_decisions_total", by="route")
    fallbacks = samples.total("coe_fallback_total").get("", 0.0)
    pipeline = service.pipeline
    return DashboardData(
        generated_at=time.time(), uptime_s=time.time() - service.started_at,
        router=pipeline.default_router if pipeline else None,
        registry_version=service.registry_version if service.store is not None else None,
        queue_depth=int(samples.total("coe_queue_depth").get("", 0)),
        requests_total=int(sum(requests.values())), requests_by_endpoint=_counts(requests),
        requests_by_status=_counts(statuses),
        decisions_total=int(sum(decisions.values())),
        fallback_share=fallbacks / sum(decisions.values()) if decisions else None,
        decisions_by_route=_counts(decisions), routed_by_expert=_counts(samples.total("coe_routed_total", by="expert")),
        tokens_by_expert=_counts(samples.total("coe_tokens_total", by="expert")),
        confidence=_confidence(samples), stage_latency=_latency(samples), devices=_devices(samples),
        feedback=_feedback(samples), caches=_caches(samples),
        **{field: _optional(samples, word) for field, word in OPTIONAL.items()},
    )


def render_page(data: DashboardData) -> str:
    """The page with its first snapshot in it: it shows numbers before its script has fetched anything."""
    template = Template((STATIC / "dashboard.html").read_text())
    first = data.model_dump_json().replace("<", "\\u003c")  # inside <script>: no tag can close it early
    return template.substitute(
        router=html.escape(data.router or "starting"), registry_version=html.escape(str(data.registry_version)),
        requests=data.requests_total, decisions=data.decisions_total, data=first,
    )


def asset(name: str) -> Path | None:
    return STATIC / name if name in ASSETS else None
