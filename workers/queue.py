"""The queue interface between the API and the workers.

One logical queue per expert. The API side submits jobs and waits for their
results (and streamed text); the worker side looks at pending work, claims
batches, publishes text as it is generated, and completes jobs. A job is
acknowledged only after its result is stored, so a worker that dies leaves
its jobs to be claimed again. A caller that gives up cancels its job: a queued
job is then skipped at claim time, a running one is reported by `stopped`.
Workers announce the devices they serve, so the API can refuse work nobody would run.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from workers.jobs import Job, JobResult

log = logging.getLogger(__name__)


class QueueUnavailable(RuntimeError):
    """The queue backend cannot be reached; callers should retry later (HTTP 503)."""


class QueueFull(RuntimeError):
    """Too much work is waiting; callers should back off (HTTP 503)."""


COUNTERS = ("dead_letter", "poison", "cancelled_queued", "cancelled_running")
"""What `counters()` reports: jobs that could not be decoded, jobs set aside after too many deliveries (no worker
survived them), and cancellations before and during a run."""


@dataclass
class PendingStats:
    count: int = 0
    oldest_enqueued_at: float | None = None


@dataclass
class Delta:
    """A piece of generated text for a streaming job."""

    text: str


class JobQueue(ABC):
    # --- API side ---------------------------------------------------------
    @abstractmethod
    async def submit(self, job: Job) -> None:
        """Accept a job; raises QueueFull or QueueUnavailable instead of accepting what it cannot keep."""

    @abstractmethod
    async def wait_result(self, job_id: str, timeout: float) -> JobResult:
        """The job's result; raises TimeoutError after `timeout` seconds."""

    @abstractmethod
    def events(self, job_id: str, timeout: float) -> AsyncIterator[Delta | JobResult]:
        """Deltas of a streaming job as they are generated, then its result."""

    @abstractmethod
    async def depth(self) -> int:
        """Jobs waiting or running, over all experts."""

    @abstractmethod
    async def cancel(self, job_id: str) -> None:
        """The caller gave up: a queued job is never started, a running one shows up in `stopped`."""

    @abstractmethod
    async def consumers(self, device: str) -> int:
        """How many workers serving `device` are alive (announced, not withdrawn, not expired)."""

    @abstractmethod
    async def counters(self) -> dict[str, int]:
        """COUNTERS so far, over every process that shares this queue."""

    # --- worker side --------------------------------------------------------
    @abstractmethod
    async def pending(self, experts: list[str]) -> dict[str, PendingStats]:
        """Waiting (unclaimed) work per expert."""

    @abstractmethod
    async def claim(self, expert: str, consumer: str, max_jobs: int) -> list[Job]:
        """Take up to `max_jobs` of the expert's oldest jobs for `consumer`."""

    @abstractmethod
    async def wait_for_work(self, experts: list[str], timeout: float) -> None:
        """Return when work may have arrived for any of `experts`, or after `timeout`; never spins."""

    @abstractmethod
    async def publish_delta(self, job_id: str, text: str) -> None:
        """Stream a piece of a job's text to its waiting caller."""

    @abstractmethod
    async def complete(self, job: Job, result: JobResult) -> None:
        """Store the result, wake the caller, then acknowledge the job (not if another worker holds it now)."""

    @abstractmethod
    async def release(self, jobs: list[Job]) -> None:
        """Give back claimed jobs this worker will not complete, so that any worker may serve them; never raises."""

    @abstractmethod
    async def stopped(self, job_ids: list[str]) -> set[str]:
        """Of these running jobs, those to stop: cancelled by their caller, or taken over by another worker."""

    @abstractmethod
    async def announce(self, device: str, consumer: str, ttl_s: float) -> None:
        """`consumer` serves `device` for the next `ttl_s` seconds (repeat to stay alive)."""

    @abstractmethod
    async def withdraw(self, device: str, consumer: str) -> None:
        """`consumer` no longer serves `device`."""

    async def reclaim_stale(self, expert: str, consumer: str, idle_s: float, max_jobs: int) -> list[Job]:
        """Jobs claimed by a consumer that went quiet for `idle_s`; backends without crash recovery return none."""
        return []

    async def ping(self) -> None:
        """Raise QueueUnavailable when the backend cannot be reached (readiness); in-process queues always can."""

    async def close(self) -> None:
        """Release connections."""


def watch_for_work(queue: JobQueue, experts: list[str], timeout: float) -> asyncio.Task:
    """queue.wait_for_work as a task whose outcome is always read. A waiter cancelled while its Redis connection
    goes away ends with QueueUnavailable after the cancel, and nobody awaits it: asyncio would then report
    'Task exception was never retrieved' at exit. The next step meets the same outage and handles it."""
    task = asyncio.create_task(queue.wait_for_work(experts, timeout=timeout))
    task.add_done_callback(_read_outcome)
    return task


def _read_outcome(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("waiting for work ended: %s", task.exception())
