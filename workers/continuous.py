"""Serving engines that batch continuously (vLLM's AsyncLLM, a remote server): job by job, not batch by batch.

While a weights group is resident, the worker keeps up to `max_batch` of its jobs inside its engine:
each job is claimed and started as its own task as soon as there is room (`Engine.submit`), its text is
published as it is produced, and it is completed (result stored, job acknowledged) the moment it ends.
The residency scheduler still decides which groups are awake, asleep or cold, and when to switch:

- every resident group with room takes its waiting jobs (oldest first) at once: that needs no switch;
- `scheduler.pick` names the group to serve next; when it is not resident, `scheduler.plan` names the
  evictions (idle groups before busy ones, least recently used first). Groups to be evicted stop taking
  jobs and drain; the switch (sleep or unload them, wake or load the target) starts once none of them
  has a job in flight. So a resident group is switched out when it has nothing waiting, or when
  another group's oldest job has waited `max_wait_s` (the scheduler's starvation rule);
- a switch runs in the background: resident groups it does not touch keep serving meanwhile.

A scoring job (request.choices: a log-probability per choice, no text) goes to the engine's
`choice_logprobs` instead, as the batch loop sends it (workers/choice_jobs.py); it joins the engine's
batch like any job. A job is cancelled (aborted inside the engine, its slot freed, answered with
error_type 'cancelled') when its deadline passes or when `cancel(job_id)` is called. On stop, nothing new is claimed and the
jobs in flight are finished and answered. Every job started is answered whatever fails on its way (a stream whose text
could not all be published ends with an error, not with an answer missing a piece); jobs claimed or reclaimed but not
started when the loop leaves (stop, an outage) are handed back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from workers.choice_jobs import is_scoring, score_jobs
from workers.engines.base import CANCELLED, job_error
from workers.jobs import ENGINE_ERROR, Job, JobResult
from workers.queue import PendingStats, QueueUnavailable, watch_for_work
from workers.scheduler import Action, Tier

log = logging.getLogger("coe.worker")

RECHECK_S = 0.5
"""Longest wait between two looks at the queues (for the starvation rule and jobs of dead workers)."""


@dataclass
class _Running:
    job: Job
    key: str
    task: asyncio.Task
    cancelled: asyncio.Event


class ContinuousLoop:
    """The worker's loop for engines with `supports_streaming_submit`."""

    def __init__(self, worker: Any):
        self.worker = worker  # the workers.worker.Worker this loop serves for (which imports this module)
        self.running: dict[str, _Running] = {}
        self.in_flight: Counter[str] = Counter()  # group key -> jobs inside its engine
        self.backlog: dict[str, list[Job]] = {}  # group key -> reclaimed jobs not started yet
        self.draining: set[str] = set()
        self.switching: asyncio.Task | None = None
        self.frozen: set[str] = set()  # groups the running switch is changing
        self._stats: dict[str, PendingStats] = {}
        self._changed = asyncio.Event()
        self._waiter: asyncio.Task | None = None

    def applies(self) -> bool:
        """True when every engine of the worker takes jobs one by one."""
        return all(getattr(e, "supports_streaming_submit", False) for e in self.worker.engines.values())

    def cancel(self, job_id: str) -> bool:
        """Abort a job in flight (e.g. its client went away); False if it is not running here."""
        running = self.running.get(job_id)
        if running is None:
            return False
        running.cancelled.set()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` (then finish the jobs in flight), or until an engine that serves batches only joins."""
        self._waiter, self._changed = None, asyncio.Event()  # bound to this run's event loop
        try:
            while not stop.is_set() and self.applies():
                await self.tick()
                await self._wait(stop)
        finally:
            await self._drain()

    # --- one look at the queues ------------------------------------------------------
    async def tick(self) -> None:
        w, sched = self.worker, self.worker.scheduler
        if self.switching is not None and self.switching.done():
            self.switching, self.frozen = None, set()
        if w._next_registries:
            w._adopt(w._next_registries)
        stats = await w.queue.pending(w.experts)
        if self.running:  # callers that gave up (client gone, 504) or jobs taken over: abort them in the engine
            for job_id in await w.queue.stopped(list(self.running)):
                self.cancel(job_id)
        if w.has_leftovers() and not self.running:
            await w._drop_idle_leavers(stats)
        key, reclaimed = await w._reclaim()
        if reclaimed:
            self.backlog.setdefault(key, []).extend(reclaimed)
        for jobs in self.backlog.values():
            for job in jobs:
                s = stats.setdefault(job.expert, PendingStats())
                s.count += 1
                s.oldest_enqueued_at = min(s.oldest_enqueued_at or job.enqueued_at, job.enqueued_at)
        for key, g in list(sched.groups.items()):
            if g.tier is Tier.RESIDENT and key not in self.draining and key not in self.frozen:
                room = sched.batch_size(key) - self.in_flight[key]
                if room > 0 and any(stats.get(e) and stats[e].count for e in g.experts):
                    for job in await self._claim(key, stats, room):
                        self._start(key, job)
        self._stats = stats
        if self.switching is None:
            self._plan_switch(stats)

    def _plan_switch(self, stats: dict[str, PendingStats]) -> None:
        sched = self.worker.scheduler
        target = sched.pick(stats)
        if target is None or sched.groups[target].tier is Tier.RESIDENT:
            self.draining = set()
            return
        actions = sched.plan(target, busy={k for k, n in self.in_flight.items() if n})
        victims = {a.key for a in actions if a.kind in ("sleep", "unload")}
        self.draining = {v for v in victims if self.in_flight[v]}
        if not self.draining:
            self.frozen = {a.key for a in actions}
            self.switching = asyncio.create_task(self._switch(target, actions), name=f"switch-{target}")

    async def _claim(self, key: str, stats: dict[str, PendingStats], room: int) -> list[Job]:
        """Up to `room` jobs of the group: reclaimed ones first, then the oldest across its experts."""
        w = self.worker
        backlog = self.backlog.pop(key, [])
        jobs, rest = backlog[:room], backlog[room:]
        if rest:
            self.backlog[key] = rest
        waiting = [e for e in w.scheduler.groups[key].experts if stats.get(e) and stats[e].count]
        try:
            for expert in sorted(waiting, key=lambda e: stats[e].oldest_enqueued_at or float("inf")):
                if len(jobs) >= room:
                    break
                jobs += await w.queue.claim(expert, w.name, room - len(jobs))
        except BaseException:  # e.g. Redis went away after the first claim: what is held goes back for any worker
            await w.queue.release(jobs)
            raise
        for job in jobs:
            s = stats.get(job.expert)
            if s is not None and s.count:
                s.count -= 1
                if not s.count:
                    s.oldest_enqueued_at = None
        if jobs:
            w.scheduler.served(key, len(jobs))
        return jobs

    async def _switch(self, target: str, actions: list[Action]) -> None:
        w = self.worker
        try:
            await w._apply(actions)
        except Exception as exc:
            log.exception("could not make %s resident", target)
            jobs = await self._claim(target, await w.queue.pending(w.experts), w.scheduler.batch_size(target))
            await w._fail(jobs, f"model could not be loaded: {type(exc).__name__}: {exc}")
        finally:
            self._changed.set()

    # --- one job ---------------------------------------------------------------------
    def _start(self, key: str, job: Job) -> None:
        cancelled = asyncio.Event()
        self.in_flight[key] += 1
        task = asyncio.create_task(self._serve(key, job, cancelled, self.in_flight[key]), name=f"job-{job.id}")
        self.running[job.id] = _Running(job, key, task, cancelled)
        task.add_done_callback(lambda _t: self._finished(job.id))

    def _finished(self, job_id: str) -> None:
        running = self.running.pop(job_id)
        self.in_flight[running.key] -= 1
        group = self.worker.scheduler.groups.get(running.key)
        if group is not None:
            group.last_used = time.monotonic()
        self._changed.set()

    async def _serve(self, key: str, job: Job, cancelled: asyncio.Event, concurrency: int) -> None:
        """Run the job and answer it, whatever fails on the way: a job in flight never stays held unanswered."""
        try:
            result = await self._result(key, job, cancelled, concurrency)
        except Exception as exc:  # noqa: BLE001 - the job's caller hears of it; the worker goes on
            log.exception("job %s failed outside its engine", job.id)
            result = JobResult(job_id=job.id, expert=job.expert, error=f"{type(exc).__name__}: {exc}",
                               error_type=ENGINE_ERROR, worker=self.worker.name, batch_size=concurrency)
        await self._complete(job, result)

    async def _result(self, key: str, job: Job, cancelled: asyncio.Event, concurrency: int) -> JobResult:
        w = self.worker
        if is_scoring(job):  # one short pass, nothing to stream or abort half-way
            result = (await score_jobs(w.engines[key], [job], w.name))[0]
            return replace(result, batch_size=concurrency)
        started = time.time()
        timer = None
        if job.deadline is not None:
            timer = asyncio.get_running_loop().call_later(max(0.0, job.deadline - started), cancelled.set)
        deltas: asyncio.Queue[str | None] = asyncio.Queue()
        publisher = asyncio.create_task(self._publish(job.id, deltas)) if job.stream else None
        error = error_type = unsent = None
        try:
            completion = await w.engines[key].submit(job.request, deltas.put_nowait if job.stream else None, cancelled)
            if completion.finish_reason == CANCELLED:
                why = "its deadline passed" if job.deadline is not None and time.time() >= job.deadline else "cancelled"
                completion, error, error_type = None, f"job cancelled: {why}", "cancelled"
        except Exception as exc:  # an engine failure fails its own job, never the worker
            log.warning("engine %s failed on job %s: %s", key, job.id, exc)
            completion, (error, error_type) = None, job_error(exc)
        finally:
            if timer is not None:
                timer.cancel()
            if publisher is not None:
                deltas.put_nowait(None)
                unsent = await publisher
        if unsent is not None and error is None:  # the caller's stream lacks text: an ok answer would hide the gap
            completion, error_type = None, ENGINE_ERROR
            error = f"its text could not be streamed to the caller ({unsent})"
        return JobResult(job_id=job.id, expert=job.expert, completion=completion, error=error, error_type=error_type,
                         worker=w.name, queue_s=max(0.0, started - job.enqueued_at), generate_s=time.time() - started,
                         batch_size=concurrency)

    async def _complete(self, job: Job, result: JobResult) -> None:
        try:
            await self.worker.queue.complete(job, result)
        except QueueUnavailable:
            log.warning("could not store the result of job %s; it will be run again", job.id)

    async def _publish(self, job_id: str, deltas: asyncio.Queue[str | None]) -> str | None:
        """Publish a job's text in order; pieces that piled up during a publish go out as one, and text a publish
        failed on goes out with the next piece. Returns why some text never went out, None when all of it did."""
        unsent, failure, done = "", None, False
        while not done:
            text = await deltas.get()
            done = text is None
            unsent += text or ""
            while not done and not deltas.empty():
                more = deltas.get_nowait()
                done = more is None
                unsent += more or ""
            if not unsent:
                continue
            try:
                await self.worker.queue.publish_delta(job_id, unsent)
                unsent, failure = "", None
            except Exception as exc:  # noqa: BLE001 - whatever the queue raises, the job must still be answered
                failure = f"{type(exc).__name__}: {exc}"
                log.warning("could not publish text of job %s: %s", job_id, failure)
        return failure

    # --- waiting ---------------------------------------------------------------------
    def _watched(self) -> list[str]:
        """Experts whose next job could be acted on at once (the rest would wake the loop for nothing)."""
        sched, out = self.worker.scheduler, []
        for key, g in sched.groups.items():
            if key in self.draining or key in self.frozen:
                continue
            if g.tier is Tier.RESIDENT and self.in_flight[key] >= sched.batch_size(key):
                continue
            out += [e for e in g.experts if not (self._stats.get(e) and self._stats[e].count)]
        return out

    async def _wait(self, stop: asyncio.Event) -> None:
        if self._changed.is_set():
            self._changed.clear()
            return
        if self._waiter is None or self._waiter.done():
            watched = self._watched()
            self._waiter = watch_for_work(self.worker.queue, watched, timeout=RECHECK_S) if watched else None
        stopper = asyncio.create_task(stop.wait())
        changed = asyncio.create_task(self._changed.wait())
        waits = {stopper, changed} | ({self._waiter} if self._waiter is not None else set())
        await asyncio.wait(waits, timeout=RECHECK_S, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        changed.cancel()
        self._changed.clear()

    async def _drain(self) -> None:
        """Finish the jobs in flight and hand back the reclaimed ones not started: whoever serves next takes them
        (this loop when it resumes after an outage, or the batch loop), none stays held by a loop that left."""
        if self._waiter is not None:
            self._waiter.cancel()
        tasks = [r.task for r in self.running.values()] + ([self.switching] if self.switching else [])
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        backlog = [job for jobs in self.backlog.values() for job in jobs]
        self.backlog = {}
        await self.worker.queue.release(backlog)
