"""Scoring jobs: a request with `choices` asks for a log-probability per choice instead of text.

The worker hands such jobs here instead of to `engine.generate`. Jobs with the same choices
run as one `engine.choice_logprobs(requests, choices)` call (a batch, like generate); an
engine without that method, or one that answers with the wrong shape, fails its jobs with
an engine error, never the worker. The Completion's text is the best-scoring choice, and its
prompt_tokens the prompt the engine read (from `engine.prompt_ids`, where the engine has it), so
that scoring counts in compute like generation does.
"""

from __future__ import annotations

import asyncio
import logging
import time

from workers.engines.base import EngineError, job_error
from workers.jobs import Completion, Job, JobResult

log = logging.getLogger("coe.worker")


def is_scoring(job: Job) -> bool:
    return job.request.choices is not None


def _completion(choices: tuple[str, ...], row: list[float], prompt_tokens: int) -> Completion:
    scores = [float(x) for x in row]
    best = max(range(len(scores)), key=scores.__getitem__)
    return Completion(text=choices[best], prompt_tokens=prompt_tokens, completion_tokens=0, choice_logprobs=scores)


def _score_and_count(engine, score, requests: list, choices: list[str]) -> tuple[list, list[int]]:
    """The engine's scores and each request's prompt length in tokens (0 where the engine cannot say)."""
    rows = score(requests, choices)
    count = getattr(engine, "prompt_ids", None)
    return rows, [len(count(r.messages)) if count is not None else 0 for r in requests]


async def _score_group(engine, jobs: list[Job],
                       choices: tuple[str, ...]) -> tuple[list[Completion | EngineError | None], str | None]:
    score = getattr(engine, "choice_logprobs", None)
    try:
        if score is None:
            raise EngineError(f"{type(engine).__name__} cannot score choices (it has no choice_logprobs)")
        if not choices:
            raise EngineError("a scoring job needs at least one choice")
        rows, tokens = await asyncio.to_thread(_score_and_count, engine, score, [j.request for j in jobs], list(choices))
        scored = [r for r in rows if not isinstance(r, EngineError)]
        if len(rows) != len(jobs) or any(len(row) != len(choices) for row in scored):
            raise EngineError(f"choice_logprobs answered {len(rows)} rows of {sorted({len(r) for r in scored})} "
                              f"scores; expected {len(jobs)} rows of {len(choices)}")
        return [row if isinstance(row, EngineError) else _completion(choices, row, n)
                for row, n in zip(rows, tokens)], None
    except Exception as exc:  # an engine failure fails its own jobs, never the worker
        if score is not None:
            log.exception("scoring failed on a batch of %d", len(jobs))
        return [None] * len(jobs), f"{type(exc).__name__}: {exc}"


async def score_jobs(engine, jobs: list[Job], worker: str) -> list[JobResult]:
    """One result per job, in order: choice log-probabilities, or the engine's error."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(tuple(job.request.choices or ()), []).append(i)
    results: list[JobResult | None] = [None] * len(jobs)
    for choices, rows in groups.items():
        group = [jobs[i] for i in rows]
        started = time.time()
        completions, error = await _score_group(engine, group, choices)
        elapsed = time.time() - started
        for i, job, completion in zip(rows, group, completions):
            results[i] = JobResult(
                job_id=job.id, expert=job.expert, completion=completion, error=error,
                error_type="engine_error" if error else None, worker=worker,
                queue_s=max(0.0, started - job.enqueued_at), generate_s=elapsed, batch_size=len(group),
            )
            if isinstance(completion, EngineError):  # this job failed alone (e.g. its prompt does not fit)
                results[i].completion = None
                results[i].error, results[i].error_type = job_error(completion)
    return results
