"""Per-caller request limits: N requests per fixed window, shared through Redis when there is one.

A window is `window_s` long and aligned to multiples of it; each caller (a key's identity, or the
client address on an open service) may make `limit` requests in it. Over the limit, `hit` returns
the seconds until the window ends (the Retry-After). With Redis, every API process counts in the
same keys (`<prefix>:rl:<identity>:<window>`, INCR + PEXPIRE in one script), so the limit holds
across replicas. If Redis cannot be reached the limiter lets requests through (and logs once):
the queue answers 503 for them anyway, and a limiter must not be the reason a service is down.
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("coe.ratelimit")

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class RateLimiter:
    """In-process counting (one API process)."""

    def __init__(self, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self._counts: dict[str, tuple[int, int]] = {}

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def _window(self, now: float) -> tuple[int, float]:
        index = int(now // self.window_s)
        return index, (index + 1) * self.window_s - now

    async def _count(self, identity: str, index: int) -> int:
        if len(self._counts) > 10_000:  # forget callers from earlier windows
            self._counts = {k: v for k, v in self._counts.items() if v[0] == index}
        seen, n = self._counts.get(identity, (index, 0))
        n = n + 1 if seen == index else 1
        self._counts[identity] = (index, n)
        return n

    async def hit(self, identity: str) -> float | None:
        """Count one request; None if allowed, else seconds until the caller may try again."""
        if not self.enabled:
            return None
        index, left = self._window(time.time())
        if await self._count(identity, index) <= self.limit:
            return None
        return max(1.0, math.ceil(left))

    async def close(self) -> None:
        pass


class RedisRateLimiter(RateLimiter):
    def __init__(self, url: str, limit: int, window_s: float, prefix: str = "coe"):
        super().__init__(limit, window_s)
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._script = self.redis.register_script(_HIT)
        self._warned = False

    async def _count(self, identity: str, index: int) -> int:
        from redis import exceptions as rexc

        try:
            n = await self._script(keys=[f"{self.prefix}:rl:{identity}:{index}"],
                                   args=[int(self.window_s * 2000)])
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            if not self._warned:
                log.warning("rate limiter cannot reach redis (%s); letting requests through", type(exc).__name__)
                self._warned = True
            return 0
        self._warned = False
        return int(n)

    async def close(self) -> None:
        await self.redis.aclose()


def make_limiter(limit: int, window_s: float, redis_url: str | None) -> RateLimiter:
    if limit > 0 and redis_url:
        return RedisRateLimiter(redis_url, limit, window_s)
    return RateLimiter(limit, window_s)
