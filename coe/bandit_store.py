"""The online bandit's statistics (coe/bandit.py): per route, per expert, the feedback scores it was given, discounted
so that recent feedback weighs most; and per API key, how many of its requests were routed and how many explored.

They live where feedback lives (coe/feedback.py): an SQLite file beside the trained routers in the embedded
default, Redis when the service runs on Redis, so every replica samples from the same posterior. Every update is
atomic (one SQLite transaction, one Lua script in Redis), and a completion's feedback counts once however often
it is rated.

Discounting is counted in feedback events of the route, not in time: each event multiplies what the route learnt
before by `decay` (0.5 ** (1 / half_life)), applied lazily when an expert's counts are next read or written.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from coe.feedback import SERVED_TTL_S, SQLITE_FILE

_RECORD = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) == false then return 0 end
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '0') + 1
local s = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '|s') or '0')
local f = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '|f') or '0')
local at = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '|t') or '0')
local g = tonumber(ARGV[3]) ^ (t - at)
local r = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 't', t, ARGV[1] .. '|t', t,
           ARGV[1] .. '|s', string.format('%.17g', s * g + r), ARGV[1] .. '|f', string.format('%.17g', f * g + 1 - r))
return 1
"""
"""KEYS: the route's hash, the completion's once-only mark; ARGV: expert, score, decay, the mark's TTL."""

_ADMIT = """
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
if ARGV[1] == '1' then
  local e = tonumber(redis.call('HGET', KEYS[1], 'e') or '0')
  if e + 1 <= tonumber(ARGV[2]) * n then
    redis.call('HINCRBY', KEYS[1], 'e', 1)
    return 1
  end
end
return 0
"""
"""KEYS: the key's counters of this window; ARGV: wants to explore ('1'/'0'), the cap, the counters' TTL."""


@dataclass(frozen=True)
class ArmStats:
    """An expert's discounted feedback on one route: the sum of scores, and of (1 - score)."""

    successes: float = 0.0
    failures: float = 0.0


def discounted(s: float, f: float, arm_t: float, route_t: float, decay: float) -> ArmStats:
    g = decay ** (route_t - arm_t)
    return ArmStats(s * g, f * g)


def may_explore(explored: int, requests: int, cap: float) -> bool:
    """Whether one more exploring request keeps the share at or under `cap` (`requests` counts this one)."""
    return explored + 1 <= cap * requests


class ArmStore(Protocol):
    """`clock` (seconds) dates the keys' windows: the wall clock, or a simulation's."""

    async def stats(self, context: str, experts: list[str]) -> dict[str, ArmStats]: ...
    async def record(self, completion_id: str, context: str, expert: str, score: float) -> bool: ...
    async def admit(self, key: str, explore: bool, cap: float, window_s: float) -> bool: ...
    async def close(self) -> None: ...


class SQLiteArmStore:
    """Tables beside the feedback's in the same file; each call on a worker thread with its own connection."""

    def __init__(self, path: Path, decay: float, rated_ttl_s: float = SERVED_TTL_S, clock: Callable[[], float] = time.time):
        self.path, self.decay, self.rated_ttl_s, self.clock = Path(path), decay, rated_ttl_s, clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS bandit_routes (context TEXT PRIMARY KEY, t INTEGER)")
            db.execute("CREATE TABLE IF NOT EXISTS bandit_arms (context TEXT, expert TEXT, s REAL, f REAL, t INTEGER, "
                       "PRIMARY KEY (context, expert))")
            db.execute("CREATE TABLE IF NOT EXISTS bandit_rated (id TEXT PRIMARY KEY, created REAL)")
            db.execute("CREATE INDEX IF NOT EXISTS bandit_rated_created ON bandit_rated (created)")
            db.execute("CREATE TABLE IF NOT EXISTS bandit_keys (key TEXT, window INTEGER, n INTEGER, e INTEGER, "
                       "PRIMARY KEY (key, window))")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # statistics: a power cut may lose the last updates, never corrupt them
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write-locked (immediate) transaction: committed when the block ends, unless it rolled back itself;
        rolled back when it raises."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            if db.in_transaction:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    async def stats(self, context: str, experts: list[str]) -> dict[str, ArmStats]:
        def go() -> dict[str, ArmStats]:
            with closing(self._connect()) as db:
                row = db.execute("SELECT t FROM bandit_routes WHERE context = ?", (context,)).fetchone()
                arms = db.execute("SELECT expert, s, f, t FROM bandit_arms WHERE context = ?", (context,)).fetchall()
            route_t = row[0] if row else 0
            held = {e: discounted(s, f, t, route_t, self.decay) for e, s, f, t in arms}
            return {e: held.get(e, ArmStats()) for e in experts}

        return await asyncio.to_thread(go)

    async def record(self, completion_id: str, context: str, expert: str, score: float) -> bool:
        def go() -> bool:
            now = self.clock()
            with self._transaction() as db:
                db.execute("DELETE FROM bandit_rated WHERE created < ?", (now - self.rated_ttl_s,))
                if db.execute("INSERT OR IGNORE INTO bandit_rated VALUES (?, ?)", (completion_id, now)).rowcount == 0:
                    db.execute("ROLLBACK")
                    return False
                row = db.execute("SELECT t FROM bandit_routes WHERE context = ?", (context,)).fetchone()
                t = (row[0] if row else 0) + 1
                arm = db.execute("SELECT s, f, t FROM bandit_arms WHERE context = ? AND expert = ?",
                                 (context, expert)).fetchone() or (0.0, 0.0, 0)
                g = self.decay ** (t - arm[2])
                db.execute("INSERT OR REPLACE INTO bandit_routes VALUES (?, ?)", (context, t))
                db.execute("INSERT OR REPLACE INTO bandit_arms VALUES (?, ?, ?, ?, ?)",
                           (context, expert, arm[0] * g + score, arm[1] * g + 1 - score, t))
                return True

        return await asyncio.to_thread(go)

    async def admit(self, key: str, explore: bool, cap: float, window_s: float) -> bool:
        def go() -> bool:
            window = int(self.clock() // window_s)
            with self._transaction() as db:
                db.execute("DELETE FROM bandit_keys WHERE window < ?", (window - 1,))
                n, e = db.execute("SELECT n, e FROM bandit_keys WHERE key = ? AND window = ?",
                                  (key, window)).fetchone() or (0, 0)
                allowed = explore and may_explore(e, n + 1, cap)
                db.execute("INSERT OR REPLACE INTO bandit_keys VALUES (?, ?, ?, ?)", (key, window, n + 1, e + allowed))
                return allowed

        return await asyncio.to_thread(go)

    async def close(self) -> None:
        return None


class RedisArmStore:
    """A hash per route, `<prefix>:route:<context>` (t, and per expert `<expert>|s`, `|f`, `|t`); a mark per rated
    completion, `<prefix>:rated:<id>`, with the completions' TTL; a hash per key and window, `<prefix>:key:<key>:<w>`."""

    def __init__(self, url: str, decay: float, prefix: str = "coe:bandit", rated_ttl_s: float = SERVED_TTL_S,
                 clock: Callable[[], float] = time.time):
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
        self.decay, self.prefix, self.rated_ttl_s, self.clock = decay, prefix, rated_ttl_s, clock
        self._record = self.redis.register_script(_RECORD)
        self._admit = self.redis.register_script(_ADMIT)

    async def stats(self, context: str, experts: list[str]) -> dict[str, ArmStats]:
        fields = ["t"] + [f"{e}|{x}" for e in experts for x in "sft"]
        values = [float(v) if v is not None else 0.0 for v in await self.redis.hmget(f"{self.prefix}:route:{context}", fields)]
        route_t, rest = values[0], values[1:]
        return {e: discounted(*rest[3 * i:3 * i + 3], route_t, self.decay) for i, e in enumerate(experts)}

    async def record(self, completion_id: str, context: str, expert: str, score: float) -> bool:
        keys = [f"{self.prefix}:route:{context}", f"{self.prefix}:rated:{completion_id}"]
        return bool(await self._record(keys=keys, args=[expert, repr(float(score)), repr(self.decay), int(self.rated_ttl_s)]))

    async def admit(self, key: str, explore: bool, cap: float, window_s: float) -> bool:
        window = int(self.clock() // window_s)
        ttl = max(1, math.ceil(2 * window_s))
        return bool(await self._admit(keys=[f"{self.prefix}:key:{key}:{window}"], args=["1" if explore else "0", repr(cap), ttl]))

    async def close(self) -> None:
        await self.redis.aclose()


def make_arm_store(settings, decay: float) -> ArmStore:
    if settings.redis_url:
        return RedisArmStore(settings.redis_url, decay)
    return SQLiteArmStore(settings.artifacts_dir / SQLITE_FILE, decay)
