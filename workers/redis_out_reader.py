"""One reader per process for the out streams of every job a caller waits on (workers/queue_redis.py).

A caller blocked in an XREAD of its own holds a Redis connection while it waits, so a thousand waiting
requests were a thousand connections. Here one task blocks in a single XREAD over every waited-on stream,
on a connection of its own, and hands each caller its own entries in order. A caller that starts waiting
while that read is blocked has it unblocked (CLIENT UNBLOCK, from the queue's other connections), so its
stream is read at once rather than at the end of the block. The reader deletes a stream once its caller
has the result or gives up, and stops when nobody waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from workers.redis_leases import CONNECTION_ERRORS
from workers.redis_leases import text as _s

OUTAGE_RETRY_S = 0.5
KICK_TRIES = 200  # each a millisecond apart: the reader's XREAD may not have reached the server yet


def _entry_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class _Waiter:
    key: str
    since: float
    last: str = "0-0"
    items: asyncio.Queue = field(default_factory=asyncio.Queue)


class OutReader:
    """read(key, timeout) yields the fields of each entry of one out stream until a `result` entry."""

    def __init__(self, url: str, control: aioredis.Redis, *, connect_timeout_s: float, block_s: float,
                 outage_grace_s: float, unavailable: Callable[[Exception], Exception]):
        # no silent retries: a reconnected socket has a new client id, which must be asked for again
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=block_s + 8,
                                             single_connection_client=True, retry=Retry(NoBackoff(), 0))
        self.control = control
        self.block_ms = max(1, int(block_s * 1000))
        self.outage_grace_s = outage_grace_s
        self.unavailable = unavailable
        self._waiters: set[_Waiter] = set()
        self._finished: set[str] = set()  # streams nobody reads any more, deleted before the next read
        self._task: asyncio.Task | None = None
        self._kicker: asyncio.Task | None = None
        self._client_id: int | None = None
        self._blocked = False
        self._generation = 0  # bumped by every waiter that comes or goes
        self._reading = 0  # the generation the blocked read was built from
        self._down_since: float | None = None

    async def read(self, key: str, timeout: float) -> AsyncIterator[dict[str, bytes]]:
        """TimeoutError at the deadline; the queue's unavailable error once Redis has been away too long."""
        waiter = _Waiter(key, time.monotonic())
        deadline = waiter.since + timeout
        self._waiters.add(waiter)
        self._changed()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(key)
                try:
                    fields = await asyncio.wait_for(waiter.items.get(), left)
                except TimeoutError:
                    raise TimeoutError(key) from None
                if isinstance(fields, Exception):
                    raise fields
                yield fields
                if "result" in fields:
                    return
        finally:
            self._leave(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.discard(waiter)
            if not any(w.key == waiter.key for w in self._waiters):
                self._finished.add(waiter.key)
            self._changed()

    def _changed(self) -> None:
        self._generation += 1
        if self._task is None or self._task.done():
            if self._waiters or self._finished:
                self._task = asyncio.create_task(self._run())
        elif self._blocked and (self._kicker is None or self._kicker.done()):
            self._kicker = asyncio.create_task(self._kick())

    async def _kick(self) -> None:
        """Unblock the reader until its read covers the current waiters (or it has stopped)."""
        try:
            for _ in range(KICK_TRIES):
                if self._task is None or self._task.done() or (self._blocked and self._reading == self._generation):
                    return
                if self._blocked and self._client_id is not None:
                    await self.control.client_unblock(self._client_id)
                await asyncio.sleep(0.001)
        except CONNECTION_ERRORS:
            pass  # the reader's own read fails too and starts over with every waiter

    async def _run(self) -> None:
        while self._waiters or self._finished:
            try:
                await self._read_once()
            except CONNECTION_ERRORS as exc:  # e.g. Redis restarting: the jobs are still there when it is back
                self._client_id = None
                self._outage(exc)
                await asyncio.sleep(OUTAGE_RETRY_S)
            except Exception as exc:  # noqa: BLE001 - every waiter hears of it rather than waiting to its deadline
                for waiter in list(self._waiters):
                    waiter.items.put_nowait(exc)
                    self._leave(waiter)
                await asyncio.sleep(OUTAGE_RETRY_S)

    async def _read_once(self) -> None:
        if self._finished:
            keys = list(self._finished)
            await self.redis.delete(*keys)
            self._finished.difference_update(keys)
        if not self._waiters:
            return
        if self._client_id is None:
            self._client_id = await self.redis.client_id()
        streams: dict[str, str] = {}
        for w in self._waiters:
            if w.key not in streams or _entry_id(w.last) < _entry_id(streams[w.key]):
                streams[w.key] = w.last
        self._reading, self._blocked = self._generation, True
        try:
            reply = await self.redis.xread(streams, block=self.block_ms, count=256)
        finally:
            self._blocked = False
        self._down_since = None
        for stream, entries in (reply.items() if isinstance(reply, dict) else reply or []):
            self._hand_out(_s(stream), entries)

    def _hand_out(self, key: str, entries: list) -> None:
        for waiter in [w for w in self._waiters if w.key == key]:
            for entry_id, fields in entries:
                entry_id = _s(entry_id)
                if _entry_id(entry_id) <= _entry_id(waiter.last):
                    continue
                waiter.last = entry_id
                fields = {_s(k): v for k, v in fields.items()}
                waiter.items.put_nowait(fields)
                if "result" in fields:
                    self._leave(waiter)
                    break

    def _outage(self, exc: Exception) -> None:
        """A waiter rides out an outage of up to outage_grace_s (counted from when it started waiting, if later)."""
        now = time.monotonic()
        self._down_since = self._down_since or now
        for waiter in list(self._waiters):
            if now - max(self._down_since, waiter.since) > self.outage_grace_s:
                waiter.items.put_nowait(self.unavailable(exc))
                self._leave(waiter)

    async def close(self) -> None:
        for task in (self._task, self._kicker):
            if task is not None and not task.done():
                task.cancel()
        try:
            await self.redis.aclose()
        except CONNECTION_ERRORS:
            pass
