"""The Redis Streams queue: API and workers in separate processes, jobs survive a worker crash.

Keys (all under one prefix, default `coe`):
  <p>:jobs:<expert>   a stream per expert; consumer group `workers` reads it with COUNT
  <p>:experts         the set of experts that have a stream (for depth)
  <p>:out:<job_id>    a stream per job: text deltas, then one `result` entry; the API reads it
  <p>:done:<job_id>   the stored result (with a TTL): a job is answered at most once

Life of a job: submit = XADD (a Lua script checks the depth limit and makes the
consumer group first, so the two are atomic); claim = XREADGROUP `>`; complete
= one Lua script: SET done NX, XADD the result to the job's out stream, then
XACK + XDEL the job. A job whose worker dies stays in the group's pending list;
`reclaim_stale` XAUTOCLAIMs it once it has been idle past the visibility timeout.
While a worker runs a batch, a heartbeat re-claims its own jobs (XCLAIM JUSTID)
so a long batch is never mistaken for a dead worker. A reclaimed job that was
in fact completed is dropped (its done key exists), and a second completion
never publishes (SET NX), so every job answers its caller exactly once. For a
streaming job reclaimed halfway, the text already sent is not sent again.

Every wait is a blocking Redis call (XREAD BLOCK) with a short timeout; nothing
polls. Connection errors raise QueueUnavailable; redis-py reconnects on the
next call, and consumer groups are recreated if Redis lost its data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import exceptions as rexc

from workers.jobs import Job, JobResult
from workers.queue import Delta, JobQueue, PendingStats, QueueFull, QueueUnavailable

log = logging.getLogger("coe.queue.redis")

GROUP = "workers"
BLOCK_CHUNK_S = 2.0
"""Longest single blocking call; waits longer than this are made of several, so a dead server is noticed."""

AUTOCLAIM_PAGES = 10
CONSUMER_CLEANUP_EVERY_S = 300.0
CONSUMER_FORGET_IDLE_S = 3600.0

_SUBMIT = """
local depth = 0
for _, e in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  depth = depth + redis.call('XLEN', ARGV[1] .. ':jobs:' .. e)
end
if depth >= tonumber(ARGV[2]) then return {0, depth} end
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[3], '0', 'MKSTREAM')
redis.call('SADD', KEYS[2], ARGV[4])
return {1, redis.call('XADD', KEYS[1], '*', 'job', ARGV[5], 't', ARGV[6])}
"""

_COMPLETE = """
local fresh = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if fresh then
  redis.call('XADD', KEYS[2], '*', 'result', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if ARGV[4] ~= '' then
  redis.pcall('XACK', KEYS[3], ARGV[3], ARGV[4])
  redis.pcall('XDEL', KEYS[3], ARGV[4])
end
if fresh then return 1 end
return 0
"""

_CONNECTION_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass
class _Claimed:
    stream: str
    entry_id: str


class RedisQueue(JobQueue):
    def __init__(self, url: str, max_depth: int = 10_000, prefix: str = "coe", result_ttl_s: int = 3600,
                 heartbeat_s: float = 5.0, connect_timeout_s: float = 2.0):
        self.url = url
        self.max_depth = max_depth
        self.prefix = prefix
        self.result_ttl_s = result_ttl_s
        self.heartbeat_s = heartbeat_s
        self.redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout_s, socket_timeout=BLOCK_CHUNK_S + 8,
            health_check_interval=30, retry_on_timeout=False,
        )
        self._submit = self.redis.register_script(_SUBMIT)
        self._complete = self.redis.register_script(_COMPLETE)
        self._claimed: dict[str, _Claimed] = {}
        self._skip: dict[str, int] = {}
        self._heartbeat: asyncio.Task | None = None
        self._last_cleanup: dict[str, float] = {}

    # --- keys -------------------------------------------------------------------
    def _jobs(self, expert: str) -> str:
        return f"{self.prefix}:jobs:{expert}"

    def _out(self, job_id: str) -> str:
        return f"{self.prefix}:out:{job_id}"

    def _done(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    @property
    def _experts_key(self) -> str:
        return f"{self.prefix}:experts"

    def _unavailable(self, exc: Exception) -> QueueUnavailable:
        return QueueUnavailable(f"redis at {self.url} is unreachable: {type(exc).__name__}: {exc}")

    # --- API side ---------------------------------------------------------------
    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def submit(self, job: Job) -> None:
        try:
            ok, value = await self._submit(
                keys=[self._jobs(job.expert), self._experts_key],
                args=[self.prefix, self.max_depth, GROUP, job.expert, job.to_json(), repr(job.enqueued_at)],
            )
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None
        if not ok:
            raise QueueFull(f"{value} jobs already waiting (limit {self.max_depth})")

    async def _read_out(self, job_id: str, timeout: float) -> AsyncIterator[Delta | JobResult]:
        """Entries of the job's out stream as they come, ending with its result; TimeoutError at the deadline."""
        key = self._out(job_id)
        last = "0-0"
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no result for job {job_id} within {timeout:.1f}s")
                block_ms = max(1, int(min(left, BLOCK_CHUNK_S) * 1000))
                try:
                    reply = await self.redis.xread({key: last}, block=block_ms, count=256)
                except _CONNECTION_ERRORS as exc:
                    raise self._unavailable(exc) from None
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        last = _s(entry_id)
                        fields = {_s(k): v for k, v in fields.items()}
                        if "result" in fields:
                            yield JobResult.from_json(fields["result"])
                            return
                        yield Delta(_s(fields["d"]))
        finally:
            try:
                await self.redis.delete(key)
            except _CONNECTION_ERRORS:
                pass  # it expires on its own

    async def wait_result(self, job_id: str, timeout: float) -> JobResult:
        async with aclosing(self._read_out(job_id, timeout)) as items:  # closed here: its clean-up runs now
            async for item in items:
                if isinstance(item, JobResult):
                    return item
        raise TimeoutError(job_id)  # pragma: no cover - _read_out ends with a result or raises

    async def events(self, job_id: str, timeout: float) -> AsyncIterator[Delta | JobResult]:
        async with aclosing(self._read_out(job_id, timeout)) as items:
            async for item in items:
                yield item

    async def depth(self) -> int:
        try:
            experts = [_s(e) for e in await self.redis.smembers(self._experts_key)]
            if not experts:
                return 0
            async with self.redis.pipeline(transaction=False) as pipe:
                for e in experts:
                    pipe.xlen(self._jobs(e))
                return sum(await pipe.execute())
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    # --- worker side ------------------------------------------------------------
    async def _ensure_group(self, expert: str) -> None:
        try:
            await self.redis.xgroup_create(self._jobs(expert), GROUP, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _groups(self, experts: list[str]) -> dict[str, dict]:
        """XINFO GROUPS of each expert's stream; makes the stream and group where Redis has none (e.g. after losing its data)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for e in experts:
                pipe.xinfo_groups(self._jobs(e))
            replies = await pipe.execute(raise_on_error=False)
        out = {}
        for e, reply in zip(experts, replies):
            group = None
            if not isinstance(reply, Exception):
                group = next((g for g in reply if _s(g["name"]) == GROUP), None)
            if group is None:
                await self._ensure_group(e)
                group = {"last-delivered-id": b"0-0", "pending": 0}
            out[e] = group
        return out

    async def pending(self, experts: list[str]) -> dict[str, PendingStats]:
        """Unclaimed jobs per expert: stream length minus the group's pending (claimed, unacknowledged) entries.

        Acknowledged entries are deleted in the same script that acknowledges them, so the stream holds
        exactly the waiting and the running jobs.
        """
        try:
            groups = await self._groups(experts)
            async with self.redis.pipeline(transaction=False) as pipe:
                for e in experts:
                    pipe.xlen(self._jobs(e))
                lengths = await pipe.execute()
            waiting = {e: max(0, n - int(groups[e]["pending"])) for e, n in zip(experts, lengths)}
            async with self.redis.pipeline(transaction=False) as pipe:
                busy = [e for e in experts if waiting[e]]
                for e in busy:
                    pipe.xrange(self._jobs(e), min=f"({_s(groups[e]['last-delivered-id'])}", count=1)
                firsts = dict(zip(busy, await pipe.execute()))
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None
        out = {}
        for e in experts:
            first = firsts.get(e)
            oldest = float(first[0][1][b"t"]) if first else None
            out[e] = PendingStats(waiting[e], oldest) if waiting[e] else PendingStats()
        return out

    async def _keep(self, expert: str, entries: list, consumer: str) -> list[Job]:
        """Jobs from stream entries, minus those already answered (acknowledged and dropped here)."""
        stream = self._jobs(expert)
        jobs = [(_s(eid), Job.from_json(fields[b"job"])) for eid, fields in entries if fields]
        if not jobs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, job in jobs:
                pipe.exists(self._done(job.id))
            done = await pipe.execute()
        kept = []
        for (eid, job), answered in zip(jobs, done):
            if answered:
                log.info("job %s was already answered; dropping the duplicate", job.id)
                await self.redis.xack(stream, GROUP, eid)
                await self.redis.xdel(stream, eid)
                continue
            self._claimed[job.id] = _Claimed(stream, eid)
            kept.append(job)
        if kept and (self._heartbeat is None or self._heartbeat.done()):
            self._heartbeat = asyncio.create_task(self._beat(consumer), name="redis-queue-heartbeat")
        return kept

    async def claim(self, expert: str, consumer: str, max_jobs: int) -> list[Job]:
        if max_jobs <= 0:
            return []
        try:
            try:
                reply = await self.redis.xreadgroup(GROUP, consumer, {self._jobs(expert): ">"}, count=max_jobs)
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._ensure_group(expert)
                reply = await self.redis.xreadgroup(GROUP, consumer, {self._jobs(expert): ">"}, count=max_jobs)
            entries = reply[0][1] if reply else []
            return await self._keep(expert, entries, consumer)
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def reclaim_stale(self, expert: str, consumer: str, idle_s: float, max_jobs: int) -> list[Job]:
        try:
            entries, cursor = [], "0-0"
            for _ in range(AUTOCLAIM_PAGES):  # each call looks at about 10 x count entries of the pending list
                try:
                    reply = await self.redis.xautoclaim(self._jobs(expert), GROUP, consumer, int(idle_s * 1000),
                                                        start_id=cursor, count=max_jobs - len(entries))
                except rexc.ResponseError as exc:
                    if "NOGROUP" in str(exc) or "no such key" in str(exc).lower():
                        return []
                    raise
                cursor = _s(reply[0])
                entries += reply[1]
                if cursor == "0-0" or len(entries) >= max_jobs:
                    break
            jobs = await self._keep(expert, entries, consumer)
            await self._forget_idle_consumers(expert)
            for job in jobs:
                log.warning("reclaimed job %s of expert %s after %.1fs without progress", job.id, expert, idle_s)
                if job.stream:
                    self._skip[job.id] = await self._sent_chars(job.id)
            return jobs
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def _forget_idle_consumers(self, expert: str) -> None:
        """Now and then, drop consumers that hold nothing and have been quiet for an hour (workers long gone)."""
        now = time.monotonic()
        if now - self._last_cleanup.get(expert, 0.0) < CONSUMER_CLEANUP_EVERY_S:
            return
        self._last_cleanup[expert] = now
        stream = self._jobs(expert)
        for c in await self.redis.xinfo_consumers(stream, GROUP):
            if not c["pending"] and c["idle"] > CONSUMER_FORGET_IDLE_S * 1000:
                await self.redis.xgroup_delconsumer(stream, GROUP, c["name"])

    async def _sent_chars(self, job_id: str) -> int:
        entries = await self.redis.xrange(self._out(job_id))
        return sum(len(_s(f[b"d"])) for _, f in entries if b"d" in f)

    async def _beat(self, consumer: str) -> None:
        """While this process holds jobs, re-claim them now and then so other workers see them as alive."""
        while self._claimed:
            await asyncio.sleep(self.heartbeat_s)
            by_stream: dict[str, list[str]] = {}
            for claimed in list(self._claimed.values()):
                by_stream.setdefault(claimed.stream, []).append(claimed.entry_id)
            for stream, ids in by_stream.items():
                try:
                    await self.redis.xclaim(stream, GROUP, consumer, 0, ids, justid=True)
                except (*_CONNECTION_ERRORS, rexc.ResponseError) as exc:
                    log.warning("heartbeat on %s failed: %s", stream, exc)

    async def wait_for_work(self, experts: list[str], timeout: float) -> None:
        """Block until an entry the group has not delivered yet exists in any of the streams (XREAD BLOCK after
        each group's last-delivered id: returns at once if such entries exist, so no arrival is missed)."""
        try:
            groups = await self._groups(experts)
            streams = {self._jobs(e): _s(groups[e]["last-delivered-id"]) for e in experts}
            await self.redis.xread(streams, count=1, block=max(1, int(min(timeout, BLOCK_CHUNK_S) * 1000)))
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def publish_delta(self, job_id: str, text: str) -> None:
        skip = self._skip.get(job_id, 0)
        if skip:
            self._skip[job_id] = max(0, skip - len(text))
            text = text[skip:]
            if not text:
                return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self._out(job_id), {"d": text})
                pipe.expire(self._out(job_id), self.result_ttl_s)
                await pipe.execute()
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def complete(self, job: Job, result: JobResult) -> None:
        claimed = self._claimed.get(job.id)
        try:
            fresh = await self._complete(
                keys=[self._done(job.id), self._out(job.id), claimed.stream if claimed else self._jobs(job.expert)],
                args=[result.to_json(), self.result_ttl_s, GROUP, claimed.entry_id if claimed else ""],
            )
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None
        finally:  # stored or not, stop the heartbeat: an unstored job goes idle and is reclaimed
            self._claimed.pop(job.id, None)
            self._skip.pop(job.id, None)
        if not fresh:
            log.info("job %s had already been answered; this second result is dropped", job.id)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            await self.redis.aclose()
        except _CONNECTION_ERRORS:
            pass
