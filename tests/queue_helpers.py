"""What the queue tests share: the Redis they use, a runner that builds queues of one backend, jobs and results.

Each Redis queue a test builds gets the test's own key prefix, and the keys are deleted afterwards, so a test
never touches other data.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable

from workers.jobs import Completion, GenerationRequest, Job, JobResult
from workers.queue import JobQueue
from workers.queue_memory import MemoryQueue

REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

Scenario = Callable[[Callable[..., JobQueue]], Awaitable[None]]


def redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def runner(backend: str) -> Callable[[Scenario], None]:
    """run(scenario): runs `scenario(make_queue)` in a fresh event loop; make_queue(**kw) builds a queue of
    `backend` (Redis: a unique key prefix, in `run.prefix`), closed and cleaned up afterwards."""
    prefix = f"coetest:{uuid.uuid4().hex[:12]}"

    def go(scenario: Scenario) -> None:
        async def main():
            made: list[JobQueue] = []

            def make_queue(max_depth: int = 1000, **kw) -> JobQueue:
                if backend == "memory":
                    q = MemoryQueue(max_depth=max_depth)
                else:
                    from workers.queue_redis import RedisQueue

                    q = RedisQueue(REDIS_URL, max_depth=max_depth, prefix=prefix, **kw)
                made.append(q)
                return q

            try:
                await scenario(make_queue)
            finally:
                for q in made:
                    if backend == "redis":
                        keys = [k async for k in q.redis.scan_iter(match=f"{prefix}:*")]
                        if keys:
                            await q.redis.delete(*keys)
                    await q.close()

        asyncio.run(main())

    go.backend = backend
    go.prefix = prefix
    return go


def job(expert: str = "a", text: str = "hi", stream: bool = False) -> Job:
    return Job(expert=expert, request=GenerationRequest(messages=[{"role": "user", "content": text}], max_tokens=4),
               stream=stream)


def ok(j: Job, text: str = "answer", worker: str = "w") -> JobResult:
    return JobResult(job_id=j.id, expert=j.expert, completion=Completion(text, 3, 1), worker=worker)
