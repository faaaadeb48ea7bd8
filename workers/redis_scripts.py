"""Key names and the Lua scripts of the Redis Streams queue: every step that must not be torn in half is one script.

Keys (all under one prefix, default `coe`):
  <p>:jobs:<expert>   a stream per expert; consumer group `workers` reads it with COUNT
  <p>:experts         the set of experts that have a stream (for depth)
  <p>:out:<job_id>    a stream per job: text deltas, then one `result` entry; the API reads it
  <p>:done:<job_id>   the stored result (with a TTL): a job is answered at most once
  <p>:cancel:<job_id> the caller gave up (with a TTL): skipped when claimed, stopped when running
  <p>:live:<device>   hash consumer -> expiry (ms, Redis clock) of the workers serving the device
  <p>:stats           hash of counters (dead letters, poison jobs, cancellations) over every process
  <p>:dead            stream of the raw entries set aside: not decodable, or poison (capped)

Ownership is the consumer group's pending list: a worker may publish text for a job, complete it or
renew it only while the pending entry names it as the consumer, so a worker that was paused and
came back after a takeover can neither stream into nor answer a job that is no longer its own.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    prefix: str = "coe"

    def jobs(self, expert: str) -> str:
        return f"{self.prefix}:jobs:{expert}"

    def out(self, job_id: str) -> str:
        return f"{self.prefix}:out:{job_id}"

    def done(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def live(self, device: str) -> str:
        return f"{self.prefix}:live:{device}"

    @property
    def experts(self) -> str:
        return f"{self.prefix}:experts"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"


_OWNS = """
local function owns(stream, group, entry, consumer)
  local p = redis.pcall('XPENDING', stream, group, entry, entry, 1)
  return type(p) == 'table' and p.err == nil and p[1] ~= nil and p[1][2] == consumer
end
"""

SUBMIT = """
local depth = 0
for _, e in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  depth = depth + redis.call('XLEN', ARGV[1] .. ':jobs:' .. e)
end
if depth >= tonumber(ARGV[2]) then return {0, depth} end
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[3], '0', 'MKSTREAM')
redis.call('SADD', KEYS[2], ARGV[4])
return {1, redis.call('XADD', KEYS[1], '*', 'job', ARGV[5], 't', ARGV[6])}
"""
"""KEYS: jobs stream, experts set. ARGV: prefix, max depth, group, expert, job JSON, enqueued at."""

COMPLETE = _OWNS + """
if ARGV[4] ~= '' and not owns(KEYS[3], ARGV[3], ARGV[4], ARGV[5]) then return -1 end
local fresh = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if fresh then
  redis.call('XADD', KEYS[2], '*', 'result', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  if ARGV[6] ~= '' then redis.call('HINCRBY', KEYS[4], ARGV[6], 1) end
end
if ARGV[4] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
  redis.call('XDEL', KEYS[3], ARGV[4])
end
if fresh then return 1 end
return 0
"""
"""KEYS: done, out, jobs stream, stats. ARGV: result JSON, ttl, group, entry id ('' = answer only, nothing held),
consumer, counter to bump ('' = none). -1: another worker holds the job now; 1: answered; 0: answered before."""

SETTLE = """
local verdicts = {}
for i = 3, #ARGV, 2 do
  local verdict = 0
  if redis.call('EXISTS', ARGV[2] .. ':done:' .. ARGV[i + 1]) == 1 then
    verdict = 1
  elseif redis.call('EXISTS', ARGV[2] .. ':cancel:' .. ARGV[i + 1]) == 1 then
    verdict = 2
    redis.call('HINCRBY', KEYS[2], 'cancelled_queued', 1)
  end
  if verdict > 0 then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
  end
  verdicts[#verdicts + 1] = verdict
end
return verdicts
"""
"""Claimed entries already answered (1) or cancelled (2) are acknowledged and deleted in one step; 0 = keep.
KEYS: jobs stream, stats. ARGV: group, prefix, then (entry id, job id) pairs."""

DEAD_LETTER = """
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'entry', ARGV[2], 'raw', ARGV[3], 'error', ARGV[4])
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
"""
"""KEYS: jobs stream, stats, dead stream. ARGV: group, entry id, raw payload, why it is set aside, counter to bump."""

REQUEUE = _OWNS + """
local n = 0
for i = 4, #ARGV, 4 do
  if owns(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
    if redis.call('EXISTS', ARGV[3] .. ':done:' .. ARGV[i + 1]) == 0 then
      redis.call('XADD', KEYS[1], '*', 'job', ARGV[i + 2], 't', ARGV[i + 3])
      n = n + 1
    end
  end
end
return n
"""
"""Held jobs go back to the end of their stream as new entries, unclaimed. KEYS: jobs stream.
ARGV: group, consumer, prefix, then (entry id, job id, job JSON, enqueued at) quadruples."""

RENEW = _OWNS + """
local lost = {}
for i = 3, #ARGV do
  if owns(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""
"""The heartbeat: reset the idle time of the entries this consumer still holds; returns those it lost.
KEYS: jobs stream. ARGV: group, consumer, entry ids."""

PUBLISH = _OWNS + """
if not owns(KEYS[2], ARGV[3], ARGV[4], ARGV[5]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'd', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
"""KEYS: out stream, jobs stream. ARGV: text, ttl, group, entry id, consumer. 0 = not this consumer's job now."""

ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
"""
"""KEYS: live hash of the device. ARGV: consumer, ttl (ms). Expiry on Redis's clock: workers' clocks may differ."""

CONSUMERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live, entries = 0, redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if tonumber(entries[i + 1]) > now then live = live + 1 else redis.call('HDEL', KEYS[1], entries[i]) end
end
return live
"""
"""KEYS: live hash of the device. Returns the consumers whose announcement has not expired (and forgets the rest)."""
