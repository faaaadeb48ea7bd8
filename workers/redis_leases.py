"""The jobs a worker process holds in Redis, and the heartbeat that keeps them its own while they run.

A job is held from its claim until the worker completes or releases it; the worker does one or the
other for every job of a batch, whatever happens, so nothing stays held once its batch is over. While
anything is held, a heartbeat resets the idle time of the entries this consumer still owns, so other
workers do not take a long batch for a dead one. It never takes back an entry another worker took over
while this one was paused: such jobs are marked lost, and the worker stops generating them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis import exceptions as rexc
from redis.commands.core import AsyncScript

from workers.redis_scripts import GROUP

log = logging.getLogger("coe.queue.redis")

CONNECTION_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError)


def text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class Held:
    stream: str
    entry_id: str
    consumer: str


class Leases:
    def __init__(self, renew: AsyncScript, heartbeat_s: float):
        self.renew = renew
        self.heartbeat_s = heartbeat_s
        self.held: dict[str, Held] = {}
        self.lost: set[str] = set()
        self._task: asyncio.Task | None = None

    def hold(self, job_id: str, held: Held) -> None:
        self.held[job_id] = held
        self.lost.discard(job_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._beat(), name="redis-queue-heartbeat")

    def drop(self, job_id: str) -> Held | None:
        """Forget a job (completed or released): no more heartbeats for it."""
        self.lost.discard(job_id)
        return self.held.pop(job_id, None)

    def mark_lost(self, job_id: str) -> None:
        """Another worker took the job over: stop renewing it, and let the worker know it should stop."""
        if self.held.pop(job_id, None) is not None:
            self.lost.add(job_id)
            log.warning("job %s was taken over by another worker; this worker stops generating it", job_id)

    async def beat(self) -> None:
        """One round of the heartbeat over every held job."""
        groups: dict[tuple[str, str], dict[str, str]] = {}
        for job_id, held in list(self.held.items()):
            groups.setdefault((held.stream, held.consumer), {})[held.entry_id] = job_id
        for (stream, consumer), by_entry in groups.items():
            try:
                lost = await self.renew(keys=[stream], args=[GROUP, consumer, *by_entry])
            except (*CONNECTION_ERRORS, rexc.ResponseError) as exc:
                log.warning("heartbeat on %s failed: %s", stream, exc)
                continue
            for entry_id in lost:
                self.mark_lost(by_entry[text(entry_id)])

    async def _beat(self) -> None:
        while self.held:
            await asyncio.sleep(self.heartbeat_s)
            await self.beat()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
