"""Session affinity: the route a session's chat last took, so its next turns reach the same expert (and that
engine's prefix cache) unless the router is confident the topic changed (coe/conversation_routing.py).

A request names its session with the `x-session-id` header or OpenAI's `user` field (the header wins). Entries
expire `session_ttl_s` after their last use. In-process by default (at most `MAX_SESSIONS`, the oldest forgotten
first); with Redis every API process reads and writes the same keys (`<prefix>:session:<id>`, SET with EX), so a
session keeps its expert whichever replica answers. If Redis cannot be reached a request is routed without affinity
(logged once): affinity saves time, it is never a reason to fail.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

log = logging.getLogger("coe.sessions")
MAX_SESSIONS = 100_000


@dataclass(frozen=True)
class SessionRoute:
    category: str | None
    experts: list[str]
    router: str


class SessionStore:
    """In-process sessions (one API process)."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._routes: OrderedDict[str, tuple[float, SessionRoute]] = OrderedDict()

    async def get(self, session: str) -> SessionRoute | None:
        held = self._routes.get(session)
        if held is None or held[0] < time.monotonic():
            self._routes.pop(session, None)
            return None
        return held[1]

    async def put(self, session: str, route: SessionRoute) -> None:
        self._routes[session] = (time.monotonic() + self.ttl_s, route)
        self._routes.move_to_end(session)
        while len(self._routes) > MAX_SESSIONS:
            self._routes.popitem(last=False)

    async def close(self) -> None:
        pass


class RedisSessionStore(SessionStore):
    def __init__(self, url: str, ttl_s: float, prefix: str = "coe"):
        super().__init__(ttl_s)
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._warned = False

    def _unreachable(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("session store cannot reach redis (%s); routing without affinity", type(exc).__name__)
            self._warned = True

    async def get(self, session: str) -> SessionRoute | None:
        from redis import exceptions as rexc

        try:
            raw = await self.redis.get(f"{self.prefix}:session:{session}")
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            self._unreachable(exc)
            return None
        return SessionRoute(**json.loads(raw)) if raw else None

    async def put(self, session: str, route: SessionRoute) -> None:
        from redis import exceptions as rexc

        try:
            await self.redis.set(f"{self.prefix}:session:{session}", json.dumps(asdict(route)), ex=max(1, int(self.ttl_s)))
            self._warned = False
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            self._unreachable(exc)

    async def close(self) -> None:
        await self.redis.aclose()


def make_session_store(ttl_s: float, redis_url: str | None) -> SessionStore:
    return RedisSessionStore(redis_url, ttl_s) if redis_url else SessionStore(ttl_s)
