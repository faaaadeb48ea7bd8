"""The queue interface between the API and the workers.

One logical queue per expert. The API side submits jobs and waits for their
results (and streamed text); the worker side looks at pending work, claims
batches, publishes text as it is generated, and completes jobs. A job is
acknowledged only after its result is stored, so a worker that dies leaves
its jobs to be claimed again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from workers.jobs import Job, JobResult


class QueueUnavailable(RuntimeError):
    """The queue backend cannot be reached; callers should retry later (HTTP 503)."""


class QueueFull(RuntimeError):
    """Too much work is waiting; callers should back off (HTTP 503)."""


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
        """Store the result, wake the caller, then acknowledge the job."""

    async def reclaim_stale(self, expert: str, consumer: str, idle_s: float, max_jobs: int) -> list[Job]:
        """Jobs claimed by a consumer that went quiet for `idle_s`; backends without crash recovery return none."""
        return []

    async def ping(self) -> None:
        """Raise QueueUnavailable when the backend cannot be reached (readiness); in-process queues always can."""

    async def close(self) -> None:
        """Release connections."""
