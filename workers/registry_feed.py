"""The expert registry shared through Redis: one versioned copy of the experts file's text, and word of each change.

Every API replica and every `coe worker` runs the copy held here, so a change made through one replica
reaches all of them. Keys (prefix `coe`, as the queue's):
  <p>:registry          hash {version, text, file_sha}: the registry as experts-file text, its version (1, 2, ...),
                        and the SHA-256 of the experts file it was last taken from
  <p>:registry:changes  Pub/Sub channel: each new version number, as it is written

A process joins with the text of its experts file (one script): Redis without a copy is seeded with it as
version 1; otherwise the process runs Redis's copy, with the changes made through the admin API since, even
when its file differs from the one the copy was last taken from (it is told so, and logs it): a restarting
process must not replace the fleet's registry with whatever file it was started with. Publishing an edited
file is an explicit admin action (`POST /v1/experts/reload`, a change `from_file`). A change is compare-and-set on the version its writer read (one script): a writer whose
base is no longer current is told so and redoes its change on top of the new copy, so two replicas'
concurrent changes both land. Followers hear of a change through Pub/Sub and also look at the version every
second, because Pub/Sub keeps nothing for a subscriber that was away (a Redis restart, a dropped connection).
A running process that finds the copy gone (Redis lost its data) puts back the one it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from coe.core.redaction import redact_url
from workers.queue import QueueUnavailable
from workers.redis_leases import CONNECTION_ERRORS

log = logging.getLogger("coe.registry")

JOIN = """
local sha = redis.call('HGET', KEYS[1], 'file_sha')
local outcome = 'kept'
if not sha then
  redis.call('HSET', KEYS[1], 'version', 1, 'text', ARGV[1], 'file_sha', ARGV[2])
  redis.call('PUBLISH', ARGV[3], 1)
  outcome = 'seeded'
elseif sha ~= ARGV[2] then
  outcome = 'file differs'
end
local copy = redis.call('HMGET', KEYS[1], 'version', 'text')
return {copy[1], copy[2], outcome}
"""

SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'version', ARGV[1], 'text', ARGV[2], 'file_sha', ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[1])
end
return redis.call('HMGET', KEYS[1], 'version', 'text')
"""

CHANGE = """
local current = redis.call('HGET', KEYS[1], 'version')
if current ~= ARGV[1] then
  return false
end
local version = tonumber(current) + 1
redis.call('HSET', KEYS[1], 'version', version, 'text', ARGV[2])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'file_sha', ARGV[4])
end
redis.call('PUBLISH', ARGV[3], version)
return version
"""


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """One version of the registry: experts-file text."""

    version: int
    text: str


class RegistryFeed:
    def __init__(self, url: str, prefix: str = "coe", connect_timeout_s: float = 2.0):
        self.url = redact_url(url)  # for messages: the password never leaves the connection
        self.key, self.channel = f"{prefix}:registry", f"{prefix}:registry:changes"
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=10,
                                             decode_responses=True)
        script = self.redis.register_script
        self._join, self._seed, self._change = script(JOIN), script(SEED), script(CHANGE)
        self._pubsub: aioredis.client.PubSub | None = None

    async def _call(self, awaitable):
        try:
            return await awaitable
        except CONNECTION_ERRORS as exc:
            raise QueueUnavailable(f"redis at {self.url} is unreachable: {type(exc).__name__}: {exc}") from None

    async def version(self) -> int | None:
        """The version Redis holds (None: no copy); one small read, for the poll."""
        value = await self._call(self.redis.hget(self.key, "version"))
        return int(value) if value is not None else None

    async def snapshot(self) -> Snapshot | None:
        version, text = await self._call(self.redis.hmget(self.key, "version", "text"))
        return Snapshot(int(version), text) if version is not None and text is not None else None

    async def join(self, file_text: str) -> tuple[Snapshot, str]:
        """The copy to run, given this process's experts file: 'seeded' (Redis had none: the file is version 1),
        'kept' (Redis's copy, admin changes included) or 'file differs' (Redis's copy all the same: the file
        differs from the one the copy was last taken from, and only a reload publishes it)."""
        version, text, outcome = await self._call(self._join(keys=[self.key],
                                                             args=[file_text, sha256(file_text), self.channel]))
        return Snapshot(int(version), text), outcome

    async def seed(self, snapshot: Snapshot, file_text: str) -> Snapshot:
        """Put back `snapshot` (taken from `file_text` and changed since) if Redis holds no copy; the copy Redis
        holds afterwards (maybe another process's)."""
        version, text = await self._call(self._seed(
            keys=[self.key], args=[snapshot.version, snapshot.text, sha256(file_text), self.channel]))
        return Snapshot(int(version), text)

    async def change(self, text: str, based_on: int, from_file: bool = False) -> Snapshot | None:
        """Write `text` as the next version if `based_on` is still the current one; None if another change
        (or the loss of Redis's copy) came first: read the copy again and redo the change on it. `from_file`:
        `text` is the experts file's (a reload), so a restart with that file keeps what comes after."""
        version = await self._call(self._change(
            keys=[self.key], args=[based_on, text, self.channel, sha256(text) if from_file else ""]))
        return Snapshot(int(version), text) if version is not None else None

    async def wait(self, timeout: float) -> None:
        """Return when a new version is announced, or after `timeout`; a broken connection is made again later."""
        try:
            if self._pubsub is None:
                self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(self.channel)
            await self._pubsub.get_message(timeout=timeout)
        except CONNECTION_ERRORS as exc:
            log.debug("registry channel unavailable: %s", exc)
            await self._drop_pubsub()
            await asyncio.sleep(timeout)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except CONNECTION_ERRORS:
                pass

    async def close(self) -> None:
        await self._drop_pubsub()
        await self.redis.aclose()
