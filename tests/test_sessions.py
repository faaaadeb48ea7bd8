"""Session state: in-process with a TTL by default; in Redis, seen by every API process (real Redis)."""

from __future__ import annotations

import asyncio
import uuid

from coe.sessions import RedisSessionStore, SessionRoute, SessionStore

ROUTE = SessionRoute("history", ["humanities"], "two_stage")


def test_an_in_process_session_is_forgotten_after_its_ttl():
    async def go():
        store = SessionStore(ttl_s=0.2)
        await store.put("s1", ROUTE)
        held = await store.get("s1")
        await asyncio.sleep(0.3)
        return held, await store.get("s1"), await store.get("never")

    assert asyncio.run(go()) == (ROUTE, None, None)


def test_a_session_written_by_one_process_is_read_by_another_through_redis():
    prefix = f"test-{uuid.uuid4().hex}"

    async def go():
        writer = RedisSessionStore("redis://127.0.0.1:6379", ttl_s=60, prefix=prefix)
        reader = RedisSessionStore("redis://127.0.0.1:6379", ttl_s=60, prefix=prefix)
        await writer.put("s1", ROUTE)
        held, ttl = await reader.get("s1"), await reader.redis.ttl(f"{prefix}:session:s1")
        await reader.redis.delete(f"{prefix}:session:s1")
        await writer.close()
        await reader.close()
        return held, ttl

    held, ttl = asyncio.run(go())
    assert held == ROUTE and 0 < ttl <= 60


def test_an_unreachable_redis_means_no_affinity_not_an_error():
    async def go():
        store = RedisSessionStore("redis://127.0.0.1:1", ttl_s=60)
        await store.put("s1", ROUTE)
        held = await store.get("s1")
        await store.close()
        return held

    assert asyncio.run(go()) is None
