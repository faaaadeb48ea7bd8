"""Which expert a worker serves next, and what must be loaded or evicted for it.

The unit of residency is a weights group: experts that share engine, model and
device share one set of weights. Tiers: resident (on the device), asleep
(host memory, fast to wake; engines that support it), cold (on disk). A
memory budget caps what is resident; the least recently used group is put to
sleep (or unloaded) to make room.

Policies:
  grouped  serve the resident group with the most work first, else the group
           with the most pending work (ties by age); take a whole batch.
  fcfs     serve the single oldest job anywhere, one at a time: the
           per-request dispatch that grouped batching is measured against.
Neither starves: a group whose oldest job has waited `max_wait_s` goes first.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from workers.queue import PendingStats

Policy = Literal["grouped", "fcfs"]


class Tier(str, Enum):
    RESIDENT = "resident"
    ASLEEP = "asleep"
    COLD = "cold"


@dataclass
class Group:
    key: str
    experts: list[str]
    memory_gb: float
    max_batch: int
    supports_sleep: bool = False
    tier: Tier = Tier.COLD
    last_used: float = 0.0


@dataclass
class Action:
    """One residency change the worker must carry out, in order."""

    kind: Literal["load", "wake", "sleep", "unload"]
    key: str


@dataclass
class SchedulerStats:
    switches: int = 0
    loads: int = 0
    wakes: int = 0
    evictions: int = 0
    switch_seconds: float = 0.0
    batches: int = 0
    jobs: int = 0


@dataclass
class Scheduler:
    groups: dict[str, Group]
    memory_budget_gb: float
    policy: Policy = "grouped"
    max_wait_s: float = 30.0
    stats: SchedulerStats = field(default_factory=SchedulerStats)

    def __post_init__(self) -> None:
        too_big = [g.key for g in self.groups.values() if g.memory_gb > self.memory_budget_gb]
        if too_big:
            raise ValueError(f"memory budget {self.memory_budget_gb} GB is smaller than a single model: {too_big}")

    def group_stats(self, per_expert: dict[str, PendingStats]) -> dict[str, PendingStats]:
        out = {}
        for key, g in self.groups.items():
            stats = [per_expert[e] for e in g.experts if e in per_expert and per_expert[e].count]
            ages = [s.oldest_enqueued_at for s in stats if s.oldest_enqueued_at is not None]
            out[key] = PendingStats(sum(s.count for s in stats), min(ages) if ages else None)
        return out

    def pick(self, per_expert: dict[str, PendingStats], now: float | None = None) -> str | None:
        """The group to serve next, or None when there is no work."""
        now = time.time() if now is None else now
        work = {k: s for k, s in self.group_stats(per_expert).items() if s.count}
        if not work:
            return None
        oldest = min(work, key=lambda k: work[k].oldest_enqueued_at or now)
        if self.policy == "fcfs":
            return oldest
        if now - (work[oldest].oldest_enqueued_at or now) >= self.max_wait_s:
            return oldest
        resident = [k for k in work if self.groups[k].tier is Tier.RESIDENT]
        pool = resident or list(work)
        return max(pool, key=lambda k: (work[k].count, -(work[k].oldest_enqueued_at or now)))

    def batch_size(self, key: str) -> int:
        return 1 if self.policy == "fcfs" else self.groups[key].max_batch

    def plan(self, key: str, busy: Collection[str] = ()) -> list[Action]:
        """Evictions (idle before `busy` groups, least recently used first) then the wake or load that makes `key` resident."""
        target = self.groups[key]
        if target.tier is Tier.RESIDENT:
            return []
        actions = []
        used = sum(g.memory_gb for g in self.groups.values() if g.tier is Tier.RESIDENT)
        victims = sorted((g for g in self.groups.values() if g.tier is Tier.RESIDENT),
                         key=lambda g: (g.key in busy, g.last_used))
        for victim in victims:
            if used + target.memory_gb <= self.memory_budget_gb:
                break
            actions.append(Action("sleep" if victim.supports_sleep else "unload", victim.key))
            used -= victim.memory_gb
        actions.append(Action("wake" if target.tier is Tier.ASLEEP else "load", key))
        return actions

    def applied(self, action: Action, seconds: float) -> None:
        """Record that the worker carried out `action` in `seconds`."""
        g = self.groups[action.key]
        if action.kind in ("load", "wake"):
            g.tier = Tier.RESIDENT
            self.stats.switches += 1
            self.stats.switch_seconds += seconds
            if action.kind == "load":
                self.stats.loads += 1
            else:
                self.stats.wakes += 1
        else:
            g.tier = Tier.ASLEEP if action.kind == "sleep" else Tier.COLD
            self.stats.evictions += 1

    def served(self, key: str, jobs: int) -> None:
        self.groups[key].last_used = time.monotonic()
        self.stats.batches += 1
        self.stats.jobs += jobs
