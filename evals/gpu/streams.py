"""Streaming clients for evals/gpu/vs_vllm.py: replay a request stream, time the first token and the last.

Every request starts at its arrival time (Poisson gaps) as its own task and streams; its time to first
token (TTFT) runs from the moment it is sent to the first text, its latency to the end. Throughput two
ways: makespan (completion tokens over first arrival to last answer: set by the slowest requests) and
steady (tokens produced inside a window from the end of the warm-up to the end of the arrivals, over its length;
a request's tokens are counted as produced evenly between its first token and its end). GPU memory is
sampled while a run lasts (device-wide, so every engine process counts).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from coe_evals.workload import Arrival, percentile
from workers.jobs import GenerationRequest, Job, JobResult
from workers.queue import Delta


@dataclass
class Outcome:
    expert: str
    ok: bool
    ttft_s: float | None
    latency_s: float
    tokens: int
    error: str | None = None
    sent_s: float = 0.0  # when it was sent, from the stream's start


async def replay(arrivals: list[Arrival], send: Callable[[Arrival], Awaitable[Outcome]],
                 timeout_s: float) -> tuple[list[Outcome], float]:
    """Send every arrival at its time; requests still unanswered after `timeout_s` count as errors."""
    t0 = time.perf_counter()

    async def one(a: Arrival) -> Outcome:
        started = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(send(a), max(0.1, timeout_s - (started - t0)))
        except Exception as exc:  # a failed or timed-out request is counted, never fatal
            outcome = Outcome(a.expert, False, None, time.perf_counter() - started, 0, f"{type(exc).__name__}: {exc}"[:300])
        outcome.sent_s = started - t0
        return outcome

    tasks = []
    for a in arrivals:
        delay = t0 + a.at_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(a)))
    outcomes = list(await asyncio.gather(*tasks))
    return outcomes, time.perf_counter() - t0


def coe_sender(queue, max_tokens: int, timeout_s: float) -> Callable[[Arrival], Awaitable[Outcome]]:
    """A client of coe's queue: a streaming job per request, read back as the worker publishes it."""

    async def send(a: Arrival) -> Outcome:
        job = Job(expert=a.expert, stream=True,
                  request=GenerationRequest(messages=a.messages, max_tokens=max_tokens, temperature=0.0))
        started, first, result = time.perf_counter(), None, None
        await queue.submit(job)
        async for event in queue.events(job.id, timeout_s):
            if isinstance(event, Delta):
                first = first or time.perf_counter()
            elif isinstance(event, JobResult):
                result = event
        done = time.perf_counter()
        if result is None or not result.ok:
            return Outcome(a.expert, False, None, done - started, 0, result.error if result else "no result")
        return Outcome(a.expert, True, (first or done) - started, done - started, result.completion.completion_tokens)

    return send


def _q(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 4) if values else None


def steady_tokens_per_s(outcomes: list[Outcome], start_s: float, end_s: float) -> float | None:
    """Tokens produced inside [start_s, end_s] (from the stream's start) over its length; each request's spread
    evenly from its first token to its end."""
    if end_s <= start_s:
        return None
    tokens = 0.0
    for o in outcomes:
        if not o.ok or not o.tokens:
            continue
        first, done = o.sent_s + (o.ttft_s or o.latency_s), o.sent_s + o.latency_s
        if done <= first:
            tokens += o.tokens if start_s <= done <= end_s else 0
            continue
        tokens += o.tokens * max(0.0, min(done, end_s) - max(first, start_s)) / (done - first)
    return round(tokens / (end_s - start_s), 1)


def summarize(outcomes: list[Outcome], wall_s: float, window: tuple[float, float], **extra) -> dict:
    ok = [o for o in outcomes if o.ok]
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    lat = [o.latency_s for o in ok]
    tokens = sum(o.tokens for o in ok)
    errors = [o.error for o in outcomes if not o.ok]
    return {
        "requests": len(outcomes), "errors": len(errors), "first_errors": sorted(set(errors))[:3],
        "completion_tokens": tokens, "makespan_s": round(wall_s, 3),
        "makespan_tokens_per_s": round(tokens / wall_s, 1) if wall_s else None,
        "steady_window_s": [round(w, 2) for w in window], "steady_tokens_per_s": steady_tokens_per_s(ok, *window),
        "ttft_p50_s": _q(ttft, 50), "ttft_p99_s": _q(ttft, 99), "ttft_mean_s": round(statistics.fmean(ttft), 4) if ttft else None,
        "latency_p50_s": _q(lat, 50), "latency_p99_s": _q(lat, 99),
        **extra,
    }


COMPARED = ("steady_tokens_per_s", "makespan_tokens_per_s", "ttft_p50_s", "ttft_p99_s", "latency_p50_s",
            "latency_p99_s", "switch_s")


def compare(vllm: dict, coe: dict) -> dict:
    """coe against vLLM, side by side: >1 means coe is higher (better for tokens/s, worse for times)."""
    def ratio(k: str) -> float | None:
        a, b = coe.get(k), vllm.get(k)
        return round(a / b, 3) if a is not None and b else None

    return {f"coe_over_vllm_{k}": ratio(k) for k in COMPARED}


class MemorySampler:
    """Peak and mean of `read()` (GiB in use on the GPU), sampled in a thread while a run lasts."""

    def __init__(self, read: Callable[[], float], every_s: float = 0.2):
        self.read, self.every_s = read, every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="gpu-memory", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.read())
            except Exception:  # a failed reading is a missing sample, not a failed run
                pass
            self._stop.wait(self.every_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        s = self.samples
        return {"gpu_used_gib_peak": round(max(s), 2) if s else None,
                "gpu_used_gib_mean": round(statistics.fmean(s), 2) if s else None}


def gpu_used_gib() -> float:
    """Memory in use on GPU 0 by every process (total minus free), in GiB."""
    import torch

    free, total = torch.cuda.mem_get_info(0)
    return (total - free) / 2**30
