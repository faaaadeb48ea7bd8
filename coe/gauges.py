"""The gauges of coe/metrics.py that are read off the running service (queue, registry, embedded workers) when
someone looks, by /metrics or the dashboard, rather than counted as things happen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coe import metrics
from workers.queue import QueueUnavailable

if TYPE_CHECKING:
    from coe.service import Service


async def sample(service: Service) -> None:
    """Read the gauges off `service` now."""
    if service.queue is not None:
        try:
            metrics.QUEUE_DEPTH.set(await service.queue.depth())
            metrics.QUEUE_COUNTERS.values = await service.queue.counters()
            metrics.WORKERS_LIVE.clear()
            for device in service.registry.devices if service.registry is not None else []:
                metrics.WORKERS_LIVE.labels(device).set(await service.queue.consumers(device))
        except QueueUnavailable:
            pass  # /metrics still answers while the queue is down
    if service.store is not None:
        metrics.REGISTRY_VERSION.set(service.registry_version)
        metrics.REGISTRY_PROBLEMS.set(len(service.store.problems))
    metrics.WORKER_SWITCHES.set(sum(w.scheduler.stats.switches for w in service.workers))
    metrics.WORKER_BATCHES.set(sum(w.scheduler.stats.batches for w in service.workers))
    metrics.EXPERT_TIER.clear()
    for worker in service.workers:
        for group in worker.scheduler.groups.values():
            for expert in group.experts:
                metrics.EXPERT_TIER.labels(worker.device, expert, group.tier.value).set(1)
