"""One engine batch: run off the event loop, stream its text in order, stop the rows whose callers left.
A row the engine failed alone (its prompt does not fit the context) fails alone; the others are answered.

While the engine runs, the queue is asked every STOP_POLL_S which of the batch's jobs should stop
(cancelled by their caller, or taken over by another worker); engines that can stop a row between
decoding steps (`supports_stop`) get a `should_stop(row)` to poll. A stopped row's result is a
`cancelled` error: nobody waits for it, and a taken-over job's result is refused by the queue anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time

from workers.engines.base import Engine, EngineError, job_error
from workers.jobs import CANCELLED, ENGINE_ERROR, Job, JobResult
from workers.queue import JobQueue, QueueUnavailable

log = logging.getLogger("coe.worker")

STOP_POLL_S = 0.5


async def run_batch(engine: Engine, jobs: list[Job], queue: JobQueue, worker: str,
                    poll_s: float = STOP_POLL_S) -> list[JobResult]:
    """One result per job, in order; raises only what the queue raises (QueueUnavailable)."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
    stop: set[int] = set()  # rows to stop; read by the engine's thread

    def on_delta(row: int, text: str) -> None:
        if jobs[row].stream:
            loop.call_soon_threadsafe(deltas.put_nowait, (jobs[row].id, text))

    async def publish_in_order() -> None:
        while (item := await deltas.get()) is not None:
            await queue.publish_delta(*item)

    async def watch() -> None:
        ids = [j.id for j in jobs]
        while True:
            await asyncio.sleep(poll_s)
            try:
                stopped = await queue.stopped(ids)
            except QueueUnavailable:
                continue
            stop.update(row for row, j in enumerate(jobs) if j.id in stopped)

    publisher = asyncio.create_task(publish_in_order())
    watcher = asyncio.create_task(watch())
    extra = {"should_stop": stop.__contains__} if getattr(engine, "supports_stop", False) else {}
    started = time.time()
    try:
        completions = await asyncio.to_thread(engine.generate, [j.request for j in jobs], on_delta, **extra)
        error = None
    except Exception as exc:  # an engine failure fails its own jobs, never the worker
        log.exception("engine %s failed on a batch of %d", engine.spec.key, len(jobs))
        completions, error = [None] * len(jobs), f"{type(exc).__name__}: {exc}"
    finally:
        watcher.cancel()
        loop.call_soon_threadsafe(deltas.put_nowait, None)
        await publisher
    elapsed = time.time() - started
    results = []
    for row, (job, completion) in enumerate(zip(jobs, completions)):
        result = JobResult(job_id=job.id, expert=job.expert, completion=completion, error=error,
                           error_type=ENGINE_ERROR if error else None, worker=worker,
                           queue_s=max(0.0, started - job.enqueued_at), generate_s=elapsed, batch_size=len(jobs))
        if isinstance(completion, EngineError):  # this row failed alone (e.g. its prompt does not fit)
            result.completion = None
            result.error, result.error_type = job_error(completion)
        elif row in stop and error is None:
            tokens = completion.completion_tokens if completion else 0
            result.completion, result.error_type = None, CANCELLED
            result.error = f"cancelled by its caller after {tokens} tokens"
        results.append(result)
    return results
