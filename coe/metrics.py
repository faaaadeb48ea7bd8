"""Prometheus metrics. They observe the pipeline and workers; only /metrics and the dashboard (coe/dashboard.py)
read them back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from routers import RouteDecision

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("coe_requests_total", "HTTP requests by route template ('unmatched' if no route took them) and status",
                   ["endpoint", "status"], registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "coe_stage_seconds", "Time per request stage", ["stage"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
REQUEST_SECONDS = Histogram(
    "coe_request_seconds", "End-to-end chat completion latency", ["model"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
ROUTED = Counter("coe_routed_total", "Queries routed to each expert", ["expert", "router"], registry=REGISTRY)
ROUTER_LLM_JOBS = Counter("coe_router_llm_jobs_total", "Jobs a router's LLM sent through the queue (e.g. skills keywords)",
                          ["expert"], registry=REGISTRY)
BANDIT_CHOICES = Counter("coe_bandit_choices_total", "Decisions the online bandit saw, by what it did: kept the router's "
                         "pick, changed it on feedback, explored, or would have explored past the key's cap",
                         ["router", "outcome"], registry=REGISTRY)
FALLBACKS = Counter("coe_fallback_total", "Queries sent to the fallback expert for low confidence", registry=REGISTRY)
DECISIONS = Counter("coe_route_decisions_total", "Routing decisions by the route (category) chosen ('none' for "
                    "routers that name none) and router", ["route", "router"], registry=REGISTRY)
CONFIDENCE = Histogram("coe_router_confidence", "The router's confidence in each decision (max p(category|query) "
                       "for the two-stage router)", ["router"], registry=REGISTRY,
                       buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
EMBED_CACHE = Counter("coe_embed_cache_total", "Query texts the embedding cache answered (hit) or left to the "
                      "encoder (miss)", ["result"], registry=REGISTRY)
FEEDBACK_SCORE = Histogram("coe_feedback_score", "Scores given with POST /v1/feedback, by each expert the completion "
                           "was routed to", ["expert"], registry=REGISTRY, buckets=(0.0, 0.25, 0.5, 0.75, 1.0))


def observe_routing(embed_s: float, route_s: float, decisions: list[RouteDecision]) -> None:
    """A routing call's stage times and what it decided."""
    STAGE_SECONDS.labels("embed").observe(embed_s)
    STAGE_SECONDS.labels("route").observe(route_s)
    for d in decisions:
        for e in d.experts:
            ROUTED.labels(e, d.router).inc()
        DECISIONS.labels(d.category or "none", d.router).inc()
        CONFIDENCE.labels(d.router).observe(d.confidence)
        if d.fallback:
            FALLBACKS.inc()


CACHE_LOOKUPS = Counter("coe_cache_lookups_total", "Semantic cache lookups of requests that asked for it, by result: "
                        "hit, miss, or skipped (not cacheable, e.g. temperature > 0)", ["result"], registry=REGISTRY)
CACHE_LOOKUP_SECONDS = Histogram(
    "coe_cache_lookup_seconds", "Time to look a request up in the semantic cache (search and guard), by result",
    ["result"], registry=REGISTRY, buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
CACHE_STORES = Counter("coe_cache_stores_total", "Answers kept in the semantic cache", registry=REGISTRY)


def observe_cache_lookup(seconds: float, hit: bool) -> None:
    result = "hit" if hit else "miss"
    CACHE_LOOKUPS.labels(result).inc()
    CACHE_LOOKUP_SECONDS.labels(result).observe(seconds)


def observe_feedback(experts: Iterable[str], score: float) -> None:
    for e in experts:
        FEEDBACK_SCORE.labels(e).observe(score)


QUEUE_DEPTH = Gauge("coe_queue_depth", "Jobs waiting or running", registry=REGISTRY)
TOKENS = Counter("coe_tokens_total", "Tokens by expert and kind", ["expert", "kind"], registry=REGISTRY)
WORKER_SWITCHES = Gauge("coe_worker_switches", "Model switches (loads + wakes) by the embedded workers", registry=REGISTRY)
REGISTRY_VERSION = Gauge("coe_registry_version", "The version of the expert registry this process runs", registry=REGISTRY)
REGISTRY_PROBLEMS = Gauge("coe_registry_problems", "Experts of the running registry this host lacks something to serve "
                          "(weights, an api_key_env): listed by /readyz", registry=REGISTRY)
WORKER_BATCHES = Gauge("coe_worker_batches", "Engine batches run by the embedded workers", registry=REGISTRY)
BUDGET_TOKENS = Counter("coe_budget_tokens_total", "Tokens charged to each key's budget", ["key"], registry=REGISTRY)
BUDGET_COST = Counter("coe_budget_cost_total", "Cost charged to each key's budget (the unit of the experts' prices)",
                      ["key"], registry=REGISTRY)
BUDGET_REJECTED = Counter("coe_budget_rejected_total", "Requests refused (429) because a key's budget would pass a cap",
                          ["key", "limit"], registry=REGISTRY)
BUDGET_CHEAPER = Counter("coe_budget_cheaper_total", "Requests routed to a cheaper expert because the key's budget "
                         "ran low", ["key"], registry=REGISTRY)
BUDGET_UNBOOKED = Counter("coe_budget_unbooked_total", "Reservations or charges the books missed (Redis unreachable: "
                          "the request went through)", ["step"], registry=REGISTRY)
BUDGET_USED = Gauge("coe_budget_used_ratio", "Share of a key's cap used or reserved in the current window, as this "
                    "process last saw it", ["key", "limit"], registry=REGISTRY)

EXPERT_TIER = Gauge("coe_expert_tier", "1 for each expert of the embedded workers in its residency tier (resident, "
                    "asleep, cold), by device", ["device", "expert", "tier"], registry=REGISTRY)
WORKERS_LIVE = Gauge("coe_workers_live", "Worker processes serving each device of the registry (any process, "
                     "with Redis)", ["device"], registry=REGISTRY)


class QueueCounters(Collector):
    """Counts the queue keeps (with Redis: over every API and worker process), copied in when /metrics is read."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def collect(self):
        cancelled = CounterMetricFamily("coe_jobs_cancelled", "Jobs whose caller left or ran out of time, by when "
                                        "they were cancelled: before they started, or while running", labels=["stage"])
        cancelled.add_metric(["queued"], self.values.get("cancelled_queued", 0))
        cancelled.add_metric(["running"], self.values.get("cancelled_running", 0))
        yield cancelled
        dead = CounterMetricFamily("coe_jobs_dead_lettered", "Queued jobs set aside unrun, with their caller answered: "
                                   "entries that cannot be decoded, or poison jobs no worker survived", labels=["reason"])
        dead.add_metric(["undecodable"], self.values.get("dead_letter", 0))
        dead.add_metric(["poison"], self.values.get("poison", 0))
        yield dead


QUEUE_COUNTERS = QueueCounters()
REGISTRY.register(QUEUE_COUNTERS)

