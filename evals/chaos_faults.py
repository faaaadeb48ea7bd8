"""The faults of `coe bench chaos` beyond those of `coe bench load`, and the seeded schedule that places them all.

Each fault is a coroutine that waits for its time, does its harm, and notes what happened in the run's
events; those that send requests count them in a Tally of their own (which the report adds to the
load's), with the status each must get:
  hang          SIGSTOP a worker for `hang_s`, then SIGCONT (a hung worker: its leases lapse, others take over)
  redis-pause   `CLIENT PAUSE` the bench's Redis for `pause_s` (up, but answering nothing)
  long-prompt   a batch of short chats to one expert with one prompt far beyond its context among them:
                the long one gets 400 context_length_exceeded, its batch mates 200
  poison        a job whose takers all died: submitted to the queue, then forced into a dead consumer's
                pending list with its delivery count at the limit; the next takeover must dead-letter it
                and answer its caller (error_type poison) instead of running it again
  skills        `skills_burst` concurrent routed chats through the skills router with keyword LLM jobs
The load's own faults (kill, redis-restart, register) are in evals/load_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx

from coe_evals.load_clients import QUESTIONS, Tally, send
from coe_evals.load_faults import Events
from coe_evals.load_fleet import Fleet

FAULTS = ("kill", "hang", "redis-restart", "redis-pause", "long-prompt", "poison", "skills", "register")
LONG_PROMPT_CHARS = 60_000  # ~10k tokens: beyond the 8k context of the smallest experts, within COE_MAX_CHARS
BATCH_MATES = 7
GHOST = "chaos-dead-worker"


@dataclass
class ChaosPlan:
    hang_s: float = 10.0
    pause_s: float = 5.0
    redis_down_s: float = 2.0
    skills_burst: int = 32
    max_deliveries: int = 3  # the workers' (workers/queue_redis.py default)
    poison_wait_s: float = 60.0


@dataclass
class FaultTallies:
    """The requests the faults send, by fault; and what the poison job's caller got."""

    by_fault: dict[str, Tally] = field(default_factory=dict)
    poison: dict = field(default_factory=dict)
    t0: float = 0.0  # when the load started (monotonic), for the times of their 5xx

    def tally(self, fault: str) -> Tally:
        return self.by_fault.setdefault(fault, Tally())


def schedule(seed: int, duration: float, faults: list[str]) -> dict[str, float]:
    """When each fault starts, in seconds of the run: the faults in a seeded order, one in each equal slot of the
    middle of the run (10 % to 80 %), at a seeded point of its slot; the end is left for the system to recover."""
    rng = random.Random(seed)
    order = list(faults)
    rng.shuffle(order)
    start, span = 0.1 * duration, 0.7 * duration
    slot = span / max(1, len(order))
    return {name: round(start + slot * (i + rng.uniform(0.0, 0.8)), 1) for i, name in enumerate(order)}


async def hang_worker(fleet: Fleet, events: Events, at_s: float, seconds: float) -> None:
    await events.at(at_s)
    events.add("worker_stopped", f"SIGSTOP a worker for {seconds:g} s")
    stopped, continued = await asyncio.to_thread(fleet.hang_worker, seconds)
    events.add("worker_continued", f"{stopped}; {continued}")


async def pause_redis(fleet: Fleet, events: Events, at_s: float, seconds: float) -> None:
    await events.at(at_s)
    await asyncio.to_thread(fleet.pause_redis, seconds)
    events.add("redis_paused", f"CLIENT PAUSE {seconds * 1000:g} ms ALL on the bench's Redis")
    await asyncio.sleep(seconds)
    events.add("redis_unpaused", "the pause ended")


async def long_prompt_in_batch(http: httpx.AsyncClient, url: str, expert: str, events: Events, at_s: float,
                               tallies: FaultTallies) -> None:
    await events.at(at_s)
    tally = tallies.tally("long-prompt")
    long = {"model": expert, "max_tokens": 4, "messages": [{"role": "user", "content": "lorem " * (LONG_PROMPT_CHARS // 6)}]}
    mates = [{"model": expert, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": q}]}
             for q in QUESTIONS[:BATCH_MATES]]
    events.add("long_prompt", f"{LONG_PROMPT_CHARS} characters to {expert} among {len(mates)} short chats to it")
    await asyncio.gather(send(http, url, "long-prompt", long, 400, tally),
                         *(send(http, url, "long-prompt-batch-mate", m, 200, tally) for m in mates))


async def skills_burst(http: httpx.AsyncClient, urls: list[str], n: int, events: Events, at_s: float,
                       tallies: FaultTallies) -> None:
    await events.at(at_s)
    tally = tallies.tally("skills")
    events.add("skills_burst", f"{n} concurrent chats routed by the skills router (keyword LLM jobs)")
    await asyncio.gather(*(send(http, urls[i % len(urls)], "skills", {
        "model": "coe", "max_tokens": 2, "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}],
        "coe": {"router": "skills"}}, 200, tally) for i in range(n)))


async def _held_by_a_dead_worker(queue, job, deliveries: int) -> None:
    """Queue `job` as a job `deliveries` workers took and died on: in one transaction it is added and a consumer that
    will never come back reads every entry not yet delivered (the job last, so no live worker ever sees it new),
    then its delivery count is set. What else that consumer took waits for a takeover, like a killed worker's jobs."""
    import redis.exceptions as rexc

    from workers.redis_scripts import GROUP, Keys

    stream = Keys().jobs(job.expert)
    try:
        await queue.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except rexc.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    async with queue.redis.pipeline(transaction=True) as tx:
        tx.xadd(stream, {"job": job.to_json(), "t": job.enqueued_at})
        tx.xreadgroup(GROUP, GHOST, {stream: ">"})
        entry, _ = await tx.execute()
    await queue.redis.execute_command("XCLAIM", stream, GROUP, GHOST, 0, entry, "RETRYCOUNT", deliveries)


async def poison_job(fleet: Fleet, expert: str, events: Events, at_s: float, plan: ChaosPlan,
                     tallies: FaultTallies) -> None:
    """A job that has already been delivered `max_deliveries` times to workers that died on it: the next takeover
    must set it aside and answer its caller (here the bench, through the queue) with error_type poison."""
    from workers.jobs import GenerationRequest, Job
    from workers.queue_redis import RedisQueue

    await events.at(at_s)
    queue = RedisQueue(fleet.redis.url)
    job = Job(expert=expert, request=GenerationRequest(messages=[{"role": "user", "content": "poison"}], max_tokens=1))
    started = time.monotonic()
    try:
        await _held_by_a_dead_worker(queue, job, plan.max_deliveries)
        events.add("poison_job", f"job {job.id} of {expert} held by a dead consumer, delivered {plan.max_deliveries} times")
        result = await queue.wait_result(job.id, timeout=plan.poison_wait_s)
        tallies.poison = {"job": job.id, "answered": True, "ok": result.ok, "error_type": result.error_type,
                          "error": result.error, "answered_after_s": round(time.monotonic() - started, 1)}
    except Exception as exc:  # the fault's own failure (Redis out at that moment) is a finding, not a crash of the run
        tallies.poison = {"job": job.id, "answered": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        await queue.close()
    events.add("poison_answered", json.dumps(tallies.poison))
