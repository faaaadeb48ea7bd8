"""The semantic cache's store: answers kept per bucket, found again by the embeddings of the turns that asked them.

A bucket is everything that must be equal for two requests to share an answer (coe/cache_policy.py: route, experts,
parameters, the messages that are not embedded); inside a bucket an entry matches when every counted human turn is
within `threshold` cosine of the entry's turn at the same place (the lowest of those similarities is the match's
similarity) and passes the lexical guard (coe/cache_guard.py). The best match wins.

In-process by default: at most `max_entries` (least recently used forgotten first), each kept `ttl_s` from when it was
stored. With Redis every API process reads and writes the same keys, so a replica answers what another one stored.
Redis 7.0 here has no vector search (no RediSearch module), so the search runs in the API process with numpy over
one bucket, the `bucket_size` most recently used entries of it (redisvl, which LiteLLM's Redis semantic cache is built
on, needs RediSearch's FT.CREATE; GPTCache embeds again with its own encoder and brings its own stores). Keys, all
under `<prefix>:cache:`: `v:<id>` (the turns' vectors, float32) and `e:<id>` (turns and answer, JSON), both expiring
after `ttl_s`; `b:<bucket>` (a sorted set of ids by last use) and `all` (every `<bucket>|<id>`, by last use), which a
script trims to `bucket_size` and `max_entries` on every store, deleting what it trims: the memory bound is
`max_entries` x (4 x dim bytes a turn + the answer). The script names keys it does not declare: one Redis, not a
Redis Cluster. If Redis cannot be reached a request is answered without the
cache (logged once): the cache saves time, it is never a reason to fail.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from coe.cache_guard import same_literals
from coe.core.settings import Settings

log = logging.getLogger("coe.semantic_cache")


@dataclass(frozen=True)
class Entry:
    turns: list[str]
    vectors: np.ndarray  # (turns, dim), unit length
    answer: dict  # what coe/cache_policy.py kept of the outcome
    created: float  # time.time() when stored


@dataclass(frozen=True)
class Hit:
    answer: dict
    similarity: float
    age_s: float


def similarities(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Each candidate's similarity to the query: the lowest cosine over aligned turns. query (T, d); candidates
    (n, T, d)."""
    return np.einsum("ntd,td->nt", candidates, query).min(axis=1)


def ranked(vectors: np.ndarray, candidates: np.ndarray, threshold: float) -> list[tuple[int, float]]:
    """(index, similarity) of the candidates at or above `threshold`, the most similar first."""
    sims = similarities(vectors, candidates)
    return [(int(i), float(sims[i])) for i in np.argsort(-sims) if sims[i] >= threshold]


def same_turns(turns: list[str], cached: list[str]) -> bool:
    """The lexical guard (coe/cache_guard.py), turn by turn."""
    return all(same_literals(a, b) for a, b in zip(turns, cached))


class SemanticCache:
    """In-process (one API process): a bounded LRU with a TTL."""

    def __init__(self, threshold: float, ttl_s: float, max_entries: int, bucket_size: int):
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.bucket_size = bucket_size
        self._entries: OrderedDict[str, tuple[str, Entry]] = OrderedDict()  # id -> (bucket, entry), oldest use first
        self._buckets: dict[str, OrderedDict[str, None]] = {}

    async def lookup(self, bucket: str, turns: list[str], vectors: np.ndarray) -> Hit | None:
        ids = self._buckets.get(bucket, OrderedDict())
        live = []
        for entry_id in list(ids)[-self.bucket_size:]:
            entry = self._entries[entry_id][1]
            if time.time() - entry.created > self.ttl_s:
                self._forget(entry_id)
            else:
                live.append((entry_id, entry))
        if not live:
            return None
        for i, sim in ranked(vectors, np.stack([e.vectors for _, e in live]), self.threshold):
            entry_id, entry = live[i]
            if same_turns(turns, entry.turns):
                self._entries.move_to_end(entry_id)
                ids.move_to_end(entry_id)
                return Hit(entry.answer, sim, max(0.0, time.time() - entry.created))
        return None

    async def store(self, bucket: str, turns: list[str], vectors: np.ndarray, answer: dict) -> None:
        entry_id = uuid.uuid4().hex
        self._entries[entry_id] = (bucket, Entry(list(turns), np.asarray(vectors, dtype=np.float32), answer, time.time()))
        self._buckets.setdefault(bucket, OrderedDict())[entry_id] = None
        while len(self._buckets[bucket]) > self.bucket_size:
            self._forget(next(iter(self._buckets[bucket])))
        while len(self._entries) > self.max_entries:
            self._forget(next(iter(self._entries)))

    def _forget(self, entry_id: str) -> None:
        bucket, _ = self._entries.pop(entry_id)
        ids = self._buckets[bucket]
        ids.pop(entry_id, None)
        if not ids:
            del self._buckets[bucket]

    async def close(self) -> None:
        pass


STORE_SCRIPT = """
local prefix, id, bucket = ARGV[1], ARGV[2], ARGV[3]
local now, ttl, bucket_size, max_entries = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local all = prefix .. ':cache:all'
local function forget(b, i)
  redis.call('DEL', prefix .. ':cache:v:' .. i, prefix .. ':cache:e:' .. i)
  redis.call('ZREM', prefix .. ':cache:b:' .. b, i)
  redis.call('ZREM', all, b .. '|' .. i)
end
redis.call('SET', prefix .. ':cache:v:' .. id, ARGV[8], 'PX', ttl)
redis.call('SET', prefix .. ':cache:e:' .. id, ARGV[9], 'PX', ttl)
redis.call('ZADD', KEYS[1], now, id)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', all, now, bucket .. '|' .. id)
redis.call('PEXPIRE', all, ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('ZREMRANGEBYSCORE', all, '-inf', now - ttl)
local over = redis.call('ZCARD', KEYS[1]) - bucket_size
if over > 0 then
  for _, i in ipairs(redis.call('ZRANGE', KEYS[1], 0, over - 1)) do forget(bucket, i) end
end
over = redis.call('ZCARD', all) - max_entries
if over > 0 then
  for _, m in ipairs(redis.call('ZRANGE', all, 0, over - 1)) do
    local sep = string.find(m, '|', 1, true)
    forget(string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
  end
end
return 1
"""


class RedisSemanticCache(SemanticCache):
    """Shared by every API process through Redis (the module's docstring says how it is laid out)."""

    def __init__(self, url: str, threshold: float, ttl_s: float, max_entries: int, bucket_size: int,
                 prefix: str = "coe"):
        super().__init__(threshold, ttl_s, max_entries, bucket_size)
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._store = self.redis.register_script(STORE_SCRIPT)
        self._warned = False

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:cache:{kind}:{name}"

    def _unreachable(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("semantic cache cannot reach redis (%s); answering without it", type(exc).__name__)
            self._warned = True

    async def lookup(self, bucket: str, turns: list[str], vectors: np.ndarray) -> Hit | None:
        from redis import exceptions as rexc

        try:
            return await self._lookup(bucket, turns, vectors)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            self._unreachable(exc)
            return None

    async def _lookup(self, bucket: str, turns: list[str], vectors: np.ndarray) -> Hit | None:
        ids = [i.decode() for i in await self.redis.zrange(self._key("b", bucket), -self.bucket_size, -1)]
        if not ids:
            return None
        raw = await self.redis.mget([self._key("v", i) for i in ids])
        gone = [i for i, r in zip(ids, raw) if r is None]
        if gone:  # expired, though used since it was stored
            await self.redis.zrem(self._key("b", bucket), *gone)
        live = [(i, np.frombuffer(r, dtype=np.float32).reshape(vectors.shape)) for i, r in zip(ids, raw)
                if r is not None and len(r) == vectors.size * 4]
        if not live:
            return None
        for j, sim in ranked(vectors, np.stack([v for _, v in live]), self.threshold):
            entry_id = live[j][0]
            stored = await self.redis.get(self._key("e", entry_id))
            if stored is None:
                continue
            entry = json.loads(stored)
            if same_turns(turns, entry["turns"]):
                await self._touch(bucket, entry_id)
                return Hit(entry["answer"], sim, max(0.0, time.time() - entry["created"]))
        return None

    async def _touch(self, bucket: str, entry_id: str) -> None:
        """Mark a hit as just used, so the bounds forget it last."""
        now = time.time() * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._key("b", bucket), {entry_id: now}, xx=True)
            pipe.zadd(f"{self.prefix}:cache:all", {f"{bucket}|{entry_id}": now}, xx=True)
            await pipe.execute()

    async def store(self, bucket: str, turns: list[str], vectors: np.ndarray, answer: dict) -> None:
        from redis import exceptions as rexc

        entry = json.dumps({"turns": list(turns), "answer": answer, "created": time.time()})
        try:
            await self._store(keys=[self._key("b", bucket)], args=[
                self.prefix, uuid.uuid4().hex, bucket, int(time.time() * 1000), max(1, int(self.ttl_s * 1000)),
                self.bucket_size, self.max_entries, np.asarray(vectors, dtype=np.float32).tobytes(), entry])
            self._warned = False
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            self._unreachable(exc)

    async def close(self) -> None:
        await self.redis.aclose()


def make_semantic_cache(settings: Settings) -> SemanticCache:
    """In Redis when the service runs on Redis (every replica shares it), else in this process."""
    bounds = dict(threshold=settings.cache_threshold, ttl_s=settings.cache_ttl_s,
                  max_entries=settings.cache_max_entries, bucket_size=settings.cache_bucket_size)
    return RedisSemanticCache(settings.redis_url, **bounds) if settings.redis_url else SemanticCache(**bounds)
