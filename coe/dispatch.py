"""One expert's jobs, from request to answer: the request as its settings and strategy ask it, submitted only
where a live worker serves its device (else 503), awaited within the request's deadline, read as its strategy
reads it (a strategy that finds no answer falls back to a direct answer, both attempts paid), and cancelled
when the request leaves them unanswered. A prompt the worker found too long for the expert's context refuses
the request (400), whichever expert it was. The pipeline composes these per plan; this module knows no routing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from coe import metrics
from coe.core.registry import ExpertConfig, Registry, served_as
from coe.core.settings import Settings
from coe.pipeline_types import ChatInput, ExpertAnswer, PromptTooLong, TimedOut, Unavailable
from coe.strategies import Ask, direct_confidence, get_strategy
from workers.jobs import CONTEXT_LENGTH_EXCEEDED, GenerationRequest, Job, JobResult
from workers.queue import JobQueue, QueueFull, QueueUnavailable


def _nobody_serves(expert: ExpertConfig) -> str:
    if expert.device == "auto":
        return (f"no worker serves expert '{expert.name}' (device: auto) right now; start the GPU workers "
                "(coe worker --device gpu:N) or retry later")
    return (f"no worker serves device '{expert.device}' (expert '{expert.name}') right now; "
            f"start one (coe worker --device {expert.device}) or retry later")


class Dispatch:
    """Jobs in, answers out, for every expert of the registry."""

    def __init__(self, registry: Registry, queue: JobQueue, settings: Settings):
        self.registry = registry
        self.queue = queue
        self.settings = settings
        self._cancelling: set[asyncio.Task] = set()

    def request(self, expert: ExpertConfig, inp: ChatInput, messages: list[dict], seed_offset: int = 0) -> GenerationRequest:
        gen = expert.generation
        if expert.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": expert.system_prompt}, *messages]
        max_tokens = min(inp.max_tokens or gen.max_tokens, self.settings.max_tokens_cap)
        seed = None if inp.seed is None else inp.seed + seed_offset
        return GenerationRequest(
            messages=messages, max_tokens=max_tokens,
            temperature=gen.temperature if inp.temperature is None else inp.temperature,
            top_p=gen.top_p if inp.top_p is None else inp.top_p,
            repetition_penalty=gen.repetition_penalty, seed=seed, stop=list(inp.stop), choices=inp.choices,
            confidence=inp.confidence,
        )

    async def submit(self, job: Job, open_jobs: set[str]) -> None:
        """Queue `job` (and note it in `open_jobs` until answered); 503 when no live worker serves its device."""
        expert = self.registry.experts.get(job.expert)
        try:
            if expert is not None and not await self.queue.consumers(served_as(expert)):
                raise Unavailable(_nobody_serves(expert), "model")
            open_jobs.add(job.id)  # before the submit: a request cancelled meanwhile still cancels the job
            await self.queue.submit(job)
        except QueueFull as exc:
            open_jobs.discard(job.id)
            raise Unavailable(f"the service is at capacity ({exc}); retry later") from None
        except QueueUnavailable as exc:
            open_jobs.discard(job.id)
            raise Unavailable(f"the job queue is unavailable ({exc}); retry later") from None
        try:
            metrics.QUEUE_DEPTH.set(await self.queue.depth())
        except QueueUnavailable:
            pass  # the job is in; the gauge can wait

    def cancel(self, open_jobs: set[str]) -> None:
        """Cancel the jobs a request leaves unanswered, without waiting (this may run inside a cancelled task)."""
        if not open_jobs:
            return
        task = asyncio.get_running_loop().create_task(self.cancel_now(list(open_jobs)))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def cancel_now(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            try:
                await self.queue.cancel(job_id)
            except QueueUnavailable:
                return  # the jobs run, and nobody reads their results

    def strategy_job(self, name: str, inp: ChatInput, seed_offset: int = 0) -> tuple[Job, Ask | None]:
        """Expert `name`'s first job for `inp`, as its strategy asks it (explicit `choices` are scored as they are)."""
        expert = self.registry.experts[name]
        ask = None if inp.choices is not None else get_strategy(expert.strategy).ask(inp.messages)
        request = self.request(expert, inp, ask.messages if ask else inp.messages, seed_offset)
        if ask is not None and ask.choices is not None:
            request.choices = ask.choices
        return Job(expert=name, request=request), ask

    async def settle(self, job: Job, ask: Ask | None, result: JobResult, inp: ChatInput, started: float,
                      open_jobs: set[str]) -> JobResult | ExpertAnswer:
        """The expert's answer as its strategy reads it; a strategy that finds no answer in its attempt falls back
        to a direct answer from the same expert (both attempts are paid). A failed job comes back as it is."""
        if not result.ok:
            return result
        answer = self.answer(result)
        expert = self.registry.experts[job.expert]
        if ask is None:
            return answer
        verdict = await get_strategy(expert.strategy).verdict(ask, result.completion)
        if verdict.text is not None:
            return replace(answer, text=verdict.text, strategy=expert.strategy, confidence=verdict.confidence,
                           note=verdict.note)
        retry = Job(expert=job.expert, request=self.request(expert, inp, inp.messages))
        await self.submit(retry, open_jobs)
        second = await self.result(retry, self.deadline_left(started), open_jobs)
        if not second.ok:
            return second
        direct = self.answer(second)
        return replace(direct, strategy=f"{expert.strategy}->direct", note=verdict.note,
                       prompt_tokens=direct.prompt_tokens + answer.prompt_tokens,
                       completion_tokens=direct.completion_tokens + answer.completion_tokens,
                       queue_s=answer.queue_s + direct.queue_s, generate_s=answer.generate_s + direct.generate_s)

    async def result(self, job: Job, timeout: float, open_jobs: set[str]) -> JobResult:
        try:
            result = await self.queue.wait_result(job.id, timeout)
        except TimeoutError:
            raise TimedOut(f"expert '{job.expert}' did not answer within {timeout:.0f}s") from None
        except QueueUnavailable as exc:
            raise Unavailable(f"the job queue is unavailable ({exc}); retry later") from None
        open_jobs.discard(job.id)
        return refuse_too_long(result)

    def deadline_left(self, started: float) -> float:
        return max(0.1, self.settings.request_timeout_s - (time.perf_counter() - started))

    @staticmethod
    def answer(result: JobResult) -> ExpertAnswer:
        c = result.completion
        metrics.TOKENS.labels(result.expert, "prompt").inc(c.prompt_tokens)
        metrics.TOKENS.labels(result.expert, "completion").inc(c.completion_tokens)
        return ExpertAnswer(result.expert, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason,
                            result.queue_s, result.generate_s, confidence=direct_confidence(c))


def refuse_too_long(result: JobResult) -> JobResult:
    """The result as it is, unless its prompt did not fit the expert's context: that is the request's fault, not the
    expert's, so the whole request is refused (400 context_length_exceeded) instead of failing over."""
    if result.error_type == CONTEXT_LENGTH_EXCEEDED:
        raise PromptTooLong(result.error or "the messages do not fit the model's context", "messages")
    return result
