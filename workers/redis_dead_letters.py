"""Setting aside what must not run: stream entries that are not jobs, and poison jobs no worker survives.

A poison job is one that every worker taking it dies or hangs on: each takeover (XAUTOCLAIM) counts a delivery,
and once a job has been delivered `max_deliveries` times it is not handed to another worker. Either way the entry
is acknowledged and deleted from its stream, kept in the dead-letter stream (the last 1000, for inspection),
counted (`dead_letter` or `poison` in the stats hash), and its caller, when the job id can be read, is answered
with an error at once instead of waiting for its deadline.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis

from workers import redis_scripts as scripts
from workers.jobs import BAD_JOB, POISON, JobResult
from workers.redis_leases import text as _s
from workers.redis_scripts import GROUP, Keys

log = logging.getLogger("coe.queue.redis")


def readable_id(raw: bytes | str) -> str | None:
    try:
        job_id = json.loads(raw).get("id")
    except (ValueError, AttributeError):
        return None
    return job_id if isinstance(job_id, str) and job_id else None


class DeadLetters:
    def __init__(self, redis: aioredis.Redis, keys: Keys, result_ttl_s: int, max_deliveries: int):
        self.redis = redis
        self.keys = keys
        self.result_ttl_s = result_ttl_s
        self.max_deliveries = max_deliveries
        self._complete, self._dead = redis.register_script(scripts.COMPLETE), redis.register_script(scripts.DEAD_LETTER)

    async def undecodable(self, expert: str, entry_id: str, raw: bytes | str, error: str) -> None:
        log.error("entry %s of %s cannot be decoded (%s); dead-lettered to %s", entry_id, expert, error, self.keys.dead)
        await self._set_aside(expert, entry_id, raw, error, BAD_JOB, "dead_letter",
                              f"the queued job cannot be decoded ({error}); it was set aside, not run")

    async def without_poison(self, expert: str, entries: list) -> list:
        """The claimed entries minus those delivered more than `max_deliveries` times, which are set aside."""
        if not entries:
            return entries
        stream = self.keys.jobs(expert)
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _fields in entries:
                pipe.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        kept = []
        for (entry_id, fields), reply in zip(entries, pending):
            delivered = reply[0]["times_delivered"] if reply else 0
            if not fields or delivered <= self.max_deliveries:
                kept.append((entry_id, fields))
                continue
            why = (f"the job was taken {self.max_deliveries} times and no worker finished it (it may crash or hang "
                   "the workers that run it); it was set aside, not run again")
            log.error("entry %s of %s: %s; dead-lettered to %s", _s(entry_id), expert, why, self.keys.dead)
            await self._set_aside(expert, _s(entry_id), fields.get(b"job", b""), why, POISON, "poison", why)
        return kept

    async def _set_aside(self, expert: str, entry_id: str, raw: bytes | str, why: str, error_type: str,
                         counter: str, error: str) -> None:
        job_id = readable_id(raw)
        if job_id is not None:
            result = JobResult(job_id=job_id, expert=expert, error_type=error_type, error=error)
            await self._complete(keys=[self.keys.done(job_id), self.keys.out(job_id), self.keys.jobs(expert),
                                       self.keys.stats], args=[result.to_json(), self.result_ttl_s, GROUP, "", "", ""])
        await self._dead(keys=[self.keys.jobs(expert), self.keys.stats, self.keys.dead],
                         args=[GROUP, entry_id, raw, why, counter])
