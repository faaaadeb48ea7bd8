"""The Redis Streams queue: API and workers in separate processes, jobs survive a worker crash and a Redis restart.

Key layout and scripts: workers/redis_scripts.py; the heartbeat of held jobs: workers/redis_leases.py.

Life of a job: submit = XADD (a Lua script checks the depth limit and makes the consumer group first,
so the two are atomic); claim = XREADGROUP `>`, then one script acknowledges and deletes what was
answered or cancelled meanwhile (an entry that cannot be decoded is dead-lettered instead of stopping
the worker); complete = one script: SET done NX, XADD the result to the job's out stream, XACK + XDEL,
only while this consumer still owns the entry. A job whose worker dies stays in the group's pending
list; `reclaim_stale` XAUTOCLAIMs it once it has been idle past the visibility timeout, unless it has
been delivered `max_deliveries` times already: a job no worker survives is dead-lettered
(workers/redis_dead_letters.py). A worker that cannot complete a batch (Redis went away) releases it:
its jobs go back to the stream, or, if Redis cannot be reached, stop being renewed and are taken over
after the timeout. Every job answers its
caller once: results are stored with SET NX. A streamed job taken over after it had sent text is
answered with an `interrupted` error (another generation cannot continue it); one taken over before
any text was sent starts again, and the old worker's text is refused.

Every wait is a blocking Redis call (XREAD BLOCK) with a short timeout; nothing polls. The callers of a
process share one reader of their out streams (workers/redis_out_reader.py), not a connection each. Connection
errors raise QueueUnavailable; redis-py reconnects on the next call, and consumer groups are recreated
if Redis lost its data. A caller already waiting for a result rides out an outage of up to
`outage_grace_s` (e.g. a Redis restart), then gets QueueUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import redis.asyncio as aioredis
from redis import exceptions as rexc

from coe.core.redaction import redact_url
from workers import redis_scripts as scripts
from workers.jobs import CANCELLED, INTERRUPTED, Job, JobResult
from workers.queue import COUNTERS, Delta, JobQueue, PendingStats, QueueFull, QueueUnavailable
from workers.redis_dead_letters import DeadLetters
from workers.redis_leases import CONNECTION_ERRORS, Held, Leases
from workers.redis_leases import text as _s
from workers.redis_out_reader import OutReader
from workers.redis_scripts import GROUP, Keys

log = logging.getLogger("coe.queue.redis")

BLOCK_CHUNK_S = 2.0
"""Longest single blocking call; waits longer than this are made of several, so a dead server is noticed."""

AUTOCLAIM_PAGES = 10
CONSUMER_CLEANUP_EVERY_S = 300.0
CONSUMER_FORGET_IDLE_S = 3600.0


class RedisQueue(JobQueue):
    def __init__(self, url: str, max_depth: int = 10_000, prefix: str = "coe", result_ttl_s: int = 3600,
                 heartbeat_s: float = 5.0, connect_timeout_s: float = 2.0, outage_grace_s: float = 30.0,
                 max_deliveries: int = 3):
        self.url = redact_url(url)  # for messages: the password never leaves the connection
        self.max_depth = max_depth
        self.keys = Keys(prefix)
        self.result_ttl_s = result_ttl_s
        self.redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout_s, socket_timeout=BLOCK_CHUNK_S + 8,
            health_check_interval=30, retry_on_timeout=False,
        )
        s = self.redis.register_script
        self._submit, self._complete, self._settle = s(scripts.SUBMIT), s(scripts.COMPLETE), s(scripts.SETTLE)
        self._requeue, self._publish = s(scripts.REQUEUE), s(scripts.PUBLISH)
        self._announce, self._consumers = s(scripts.ANNOUNCE), s(scripts.CONSUMERS)
        self.leases = Leases(s(scripts.RENEW), heartbeat_s)
        self.dead_letters = DeadLetters(self.redis, self.keys, result_ttl_s, max_deliveries)
        self.out = OutReader(url, self.redis, connect_timeout_s=connect_timeout_s, block_s=BLOCK_CHUNK_S,
                             outage_grace_s=outage_grace_s, unavailable=self._unavailable)
        self._last_cleanup: dict[str, float] = {}

    def _unavailable(self, exc: Exception) -> QueueUnavailable:
        return QueueUnavailable(f"redis at {self.url} is unreachable: {type(exc).__name__}: {exc}")

    async def _call(self, awaitable):
        try:
            return await awaitable
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    # --- API side ---------------------------------------------------------------
    async def ping(self) -> None:
        await self._call(self.redis.ping())

    async def submit(self, job: Job) -> None:
        ok, value = await self._call(self._submit(
            keys=[self.keys.jobs(job.expert), self.keys.experts],
            args=[self.keys.prefix, self.max_depth, GROUP, job.expert, job.to_json(), repr(job.enqueued_at)]))
        if not ok:
            raise QueueFull(f"{value} jobs already waiting (limit {self.max_depth})")

    async def _read_out(self, job_id: str, timeout: float) -> AsyncIterator[Delta | JobResult]:
        """Entries of the job's out stream as they come, ending with its result; TimeoutError at the deadline."""
        async with aclosing(self.out.read(self.keys.out(job_id), timeout)) as entries:
            try:
                async for fields in entries:
                    if "result" in fields:
                        yield JobResult.from_json(fields["result"])
                        return
                    yield Delta(_s(fields["d"]))
            except TimeoutError:
                raise TimeoutError(f"no result for job {job_id} within {timeout:.1f}s") from None

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
        """Stream lengths: acknowledged entries are deleted in the same script, so streams hold waiting and running jobs."""
        experts = [_s(e) for e in await self._call(self.redis.smembers(self.keys.experts))]
        if not experts:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for e in experts:
                pipe.xlen(self.keys.jobs(e))
            return sum(await self._call(pipe.execute()))

    async def cancel(self, job_id: str) -> None:
        await self._call(self.redis.set(self.keys.cancel(job_id), 1, ex=self.result_ttl_s))

    async def consumers(self, device: str) -> int:
        return int(await self._call(self._consumers(keys=[self.keys.live(device)])))

    async def counters(self) -> dict[str, int]:
        raw = await self._call(self.redis.hgetall(self.keys.stats))
        values = {_s(k): int(v) for k, v in raw.items()}
        return {name: values.get(name, 0) for name in COUNTERS}

    # --- worker side ------------------------------------------------------------
    async def _ensure_group(self, expert: str) -> None:
        try:
            await self.redis.xgroup_create(self.keys.jobs(expert), GROUP, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _groups(self, experts: list[str]) -> dict[str, dict]:
        """XINFO GROUPS of each expert's stream; makes the stream and group where Redis has none (e.g. after losing its data)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for e in experts:
                pipe.xinfo_groups(self.keys.jobs(e))
            replies = await pipe.execute(raise_on_error=False)
        out = {}
        for e, reply in zip(experts, replies):
            group = None
            if not isinstance(reply, Exception):
                group = next((g for g in reply if _s(g["name"]) == GROUP), None)
            if group is None:
                await self._ensure_group(e)
                group = {"last-delivered-id": b"0-0", "pending": 0, "lag": None}
            out[e] = group
        return out

    async def pending(self, experts: list[str]) -> dict[str, PendingStats]:
        """Jobs not yet delivered to any worker: the group's `lag` (Redis 7), else stream length minus the
        group's pending entries; none at all when nothing follows the group's last-delivered id."""
        try:
            groups = await self._groups(experts)
            async with self.redis.pipeline(transaction=False) as pipe:
                for e in experts:
                    pipe.xlen(self.keys.jobs(e))
                lengths = dict(zip(experts, await pipe.execute()))
            waiting = {}
            for e in experts:
                lag = groups[e].get("lag")
                waiting[e] = int(lag) if lag is not None else max(0, lengths[e] - int(groups[e]["pending"]))
            busy = [e for e in experts if waiting[e]]
            async with self.redis.pipeline(transaction=False) as pipe:
                for e in busy:
                    pipe.xrange(self.keys.jobs(e), min=f"({_s(groups[e]['last-delivered-id'])}", count=1)
                firsts = dict(zip(busy, await pipe.execute()))
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None
        out = {}
        for e in experts:
            first = firsts.get(e)
            out[e] = PendingStats(waiting[e], float(first[0][1][b"t"])) if first else PendingStats()
        return out

    async def _keep(self, expert: str, entries: list, consumer: str) -> list[Job]:
        """Jobs from claimed stream entries, minus those that cannot be decoded (dead-lettered) and those answered
        or cancelled meanwhile (acknowledged and dropped); the rest are held by `consumer`."""
        stream = self.keys.jobs(expert)
        decoded = []
        for entry_id, fields in entries:
            if not fields:
                continue  # deleted since it was claimed
            raw = fields.get(b"job", b"")
            try:
                decoded.append((_s(entry_id), Job.from_json(raw)))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                await self.dead_letters.undecodable(expert, _s(entry_id), raw, f"{type(exc).__name__}: {exc}")
        if not decoded:
            return []
        verdicts = await self._settle(keys=[stream, self.keys.stats],
                                      args=[GROUP, self.keys.prefix, *[x for e, j in decoded for x in (e, j.id)]])
        kept = []
        for (entry_id, job), verdict in zip(decoded, verdicts):
            if verdict:
                log.info("job %s was already %s; dropped", job.id, "answered" if verdict == 1 else "cancelled")
                continue
            self.leases.hold(job.id, Held(stream, entry_id, consumer))
            kept.append(job)
        return kept

    async def claim(self, expert: str, consumer: str, max_jobs: int) -> list[Job]:
        if max_jobs <= 0:
            return []
        streams = {self.keys.jobs(expert): ">"}
        try:
            try:
                reply = await self.redis.xreadgroup(GROUP, consumer, streams, count=max_jobs)
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._ensure_group(expert)
                reply = await self.redis.xreadgroup(GROUP, consumer, streams, count=max_jobs)
            return await self._keep(expert, reply[0][1] if reply else [], consumer)
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def reclaim_stale(self, expert: str, consumer: str, idle_s: float, max_jobs: int) -> list[Job]:
        try:
            entries, cursor = [], "0-0"
            for _ in range(AUTOCLAIM_PAGES):  # each call looks at about 10 x count entries of the pending list
                try:
                    reply = await self.redis.xautoclaim(self.keys.jobs(expert), GROUP, consumer, int(idle_s * 1000),
                                                        start_id=cursor, count=max_jobs - len(entries))
                except rexc.ResponseError as exc:
                    if "NOGROUP" in str(exc) or "no such key" in str(exc).lower():
                        return []
                    raise
                cursor = _s(reply[0])
                entries += reply[1]
                if cursor == "0-0" or len(entries) >= max_jobs:
                    break
            entries = await self.dead_letters.without_poison(expert, entries)
            jobs = await self._keep(expert, entries, consumer)
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None
        try:
            await self._forget_idle_consumers(expert)
            fresh = []
            for job in jobs:
                log.warning("reclaimed job %s of expert %s after %.1fs without progress", job.id, expert, idle_s)
                if job.stream and await self.redis.xlen(self.keys.out(job.id)):
                    await self.complete(job, JobResult(
                        job_id=job.id, expert=expert, error_type=INTERRUPTED, worker=consumer,
                        error="the worker streaming this answer stopped after sending part of it, and another "
                              "generation cannot continue it; retry the request"))
                    continue
                fresh.append(job)
            return fresh
        except BaseException as exc:  # held now, yet never handed to the worker: give them back
            await self.release(jobs)
            if isinstance(exc, CONNECTION_ERRORS):
                raise self._unavailable(exc) from None
            raise

    async def _forget_idle_consumers(self, expert: str) -> None:
        """Now and then, drop consumers that hold nothing and have been quiet for an hour (workers long gone)."""
        now = time.monotonic()
        if now - self._last_cleanup.get(expert, 0.0) < CONSUMER_CLEANUP_EVERY_S:
            return
        self._last_cleanup[expert] = now
        stream = self.keys.jobs(expert)
        for c in await self.redis.xinfo_consumers(stream, GROUP):
            if not c["pending"] and c["idle"] > CONSUMER_FORGET_IDLE_S * 1000:
                await self.redis.xgroup_delconsumer(stream, GROUP, c["name"])

    async def wait_for_work(self, experts: list[str], timeout: float) -> None:
        """Block until an entry the group has not delivered yet exists in any of the streams (XREAD BLOCK after
        each group's last-delivered id: returns at once if such entries exist, so no arrival is missed)."""
        if not experts:  # a worker whose device has no experts (left): nothing can arrive, wait out the timeout
            await asyncio.sleep(timeout)
            return
        try:
            groups = await self._groups(experts)
            streams = {self.keys.jobs(e): _s(groups[e]["last-delivered-id"]) for e in experts}
            await self.redis.xread(streams, count=1, block=max(1, int(min(timeout, BLOCK_CHUNK_S) * 1000)))
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def publish_delta(self, job_id: str, text: str) -> None:
        held = self.leases.held.get(job_id)
        if held is None:
            return  # not (or no longer) this worker's job
        sent = await self._call(self._publish(keys=[self.keys.out(job_id), held.stream],
                                              args=[text, self.result_ttl_s, GROUP, held.entry_id, held.consumer]))
        if not sent:
            self.leases.mark_lost(job_id)

    async def complete(self, job: Job, result: JobResult) -> None:
        held = self.leases.drop(job.id)  # stored or not, no more heartbeats: an unstored job is taken over later
        if held is None:
            log.warning("job %s is not held here (taken over by another worker); its result is dropped", job.id)
            return
        counter = "cancelled_running" if result.error_type == CANCELLED else ""
        status = await self._call(self._complete(
            keys=[self.keys.done(job.id), self.keys.out(job.id), held.stream, self.keys.stats],
            args=[result.to_json(), self.result_ttl_s, GROUP, held.entry_id, held.consumer, counter]))
        if status == -1:
            log.warning("job %s was taken over by another worker; this result is dropped", job.id)
        elif status == 0:
            log.info("job %s had already been answered; this second result is dropped", job.id)

    async def release(self, jobs: list[Job]) -> None:
        by_stream: dict[tuple[str, str], list] = {}
        for job in jobs:
            held = self.leases.drop(job.id)
            if held is not None:
                by_stream.setdefault((held.stream, held.consumer), []).extend(
                    [held.entry_id, job.id, job.to_json(), repr(job.enqueued_at)])
        for (stream, consumer), args in by_stream.items():
            try:
                await self._requeue(keys=[stream], args=[GROUP, consumer, self.keys.prefix, *args])
            except (*CONNECTION_ERRORS, rexc.ResponseError) as exc:
                log.warning("could not requeue %d jobs of %s (%s); they are taken over after the idle timeout",
                            len(args) // 4, stream, exc)

    async def stopped(self, job_ids: list[str]) -> set[str]:
        lost = {i for i in job_ids if i in self.leases.lost}
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in job_ids:
                pipe.exists(self.keys.cancel(i))
            cancelled = await self._call(pipe.execute())
        return lost | {i for i, c in zip(job_ids, cancelled) if c}

    async def announce(self, device: str, consumer: str, ttl_s: float) -> None:
        await self._call(self._announce(keys=[self.keys.live(device)], args=[consumer, max(1, int(ttl_s * 1000))]))

    async def withdraw(self, device: str, consumer: str) -> None:
        await self._call(self.redis.hdel(self.keys.live(device), consumer))

    async def close(self) -> None:
        self.leases.close()
        await self.out.close()
        try:
            await self.redis.aclose()
        except CONNECTION_ERRORS:
            pass
