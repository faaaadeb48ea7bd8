"""The clients of `coe bench load`: a mixed load of valid and invalid chats, and streams that leave early.

What came back for each request decides its class:
  answered           200 with a chat completion in it
  refused_retryable  503 with Retry-After (queue full, Redis down, no live worker); the client then waits
                     as long as Retry-After says (at most until the end of the run) before its next request
  client_errors      the 4xx an invalid request must get
  other_errors       any other HTTP answer (502 and 504 are documented errors; unexpected ones are listed too)
  lost               no HTTP answer: a dropped connection, a client timeout, a 200 without a completion
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

QUESTIONS = [
    "What is the derivative of x squared?", "Who was Napoleon Bonaparte?", "How do vaccines work?",
    "Explain the law of supply and demand.", "What is a prime number?", "Name a famous philosopher.",
    "Why is the sky blue?", "What causes inflation?", "Say hello.", "What is 12 times 12?",
]


def invalid_request(rng: random.Random, experts: list[str]) -> tuple[str, dict | bytes, int]:
    """An invalid request and the status it must get."""
    kind = rng.randrange(5)
    if kind == 0:
        return "unknown-model", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404
    if kind == 1:
        return "bad-json", b'{"model": "coe", "messages": [', 400
    if kind == 2:
        return "empty-messages", {"model": "coe", "messages": []}, 400
    if kind == 3:
        return "bad-temperature", {"model": rng.choice(experts), "temperature": 9,
                                   "messages": [{"role": "user", "content": "hi"}]}, 400
    return "bad-role", {"model": "coe", "messages": [{"role": "wizard", "content": "hi"}]}, 400


def error_code(resp: httpx.Response) -> str:
    """The OpenAI error body's code (else its type), or what the body is when it is not one."""
    try:
        error = resp.json()["error"]
        return str(error.get("code") or error.get("type"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "not an OpenAI error body"


def retry_after(resp: httpx.Response) -> float | None:
    """Retry-After of a 503 in seconds, None when the answer is not a retryable refusal."""
    if resp.status_code != 503:
        return None
    try:
        return float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    refused_retryable: int = 0
    client_errors: int = 0
    other_errors: int = 0
    lost: int = 0
    by_status: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    lost_reasons: Counter = field(default_factory=Counter)
    latency_ok: list[float] = field(default_factory=list)
    latency_refused: list[float] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    error_kinds: Counter = field(default_factory=Counter)  # "<status> <error code or type>" of every non-200
    server_errors: list[dict] = field(default_factory=list)  # each 5xx: when (monotonic), status, Retry-After, code

    def record(self, kind: str, expected: int, resp: httpx.Response, elapsed: float) -> float:
        """Count one HTTP answer; returns how long the client should wait before its next request."""
        self.by_status[resp.status_code] += 1
        wait = retry_after(resp)
        if resp.status_code != 200:
            code = error_code(resp)
            self.error_kinds[f"{resp.status_code} {code}"] += 1
            if resp.status_code >= 500:
                self.server_errors.append({"t": time.monotonic(), "status": resp.status_code,
                                           "retry_after": wait is not None, "code": code})
        if resp.status_code != expected and wait is None:
            self.unexpected[f"{kind}->{resp.status_code}"] += 1
        if resp.status_code == 200:
            try:
                self.timings.append(resp.json()["coe"]["timings"])
            except (ValueError, KeyError, TypeError):
                self.lost += 1
                self.lost_reasons["200 without a completion"] += 1
                return 0.0
            self.answered += 1
            self.latency_ok.append(elapsed)
        elif wait is not None:
            self.refused_retryable += 1
            self.latency_refused.append(elapsed)
            return wait
        elif 400 <= resp.status_code < 500 and resp.status_code == expected:
            self.client_errors += 1
            self.latency_refused.append(elapsed)
        else:
            self.other_errors += 1
        return 0.0


async def load_client(http: httpx.AsyncClient, url: str, end: float, rng: random.Random, tally: Tally,
                      experts: list[str], invalid_share: float, max_tokens: int) -> None:
    """Requests back to back until `end`: valid chats (half routed, half naming an expert) and invalid ones."""
    while time.monotonic() < end:
        if rng.random() < invalid_share:
            kind, body, expected = invalid_request(rng, experts)
        else:
            model = "coe" if rng.random() < 0.5 else rng.choice(experts)
            kind, expected = f"valid-{'routed' if model == 'coe' else 'named'}", 200
            body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}]}
        wait = await send(http, url, kind, body, expected, tally)
        if wait:
            await asyncio.sleep(max(0.0, min(wait, end - time.monotonic())))


async def send(http: httpx.AsyncClient, url: str, kind: str, body: dict | bytes, expected: int, tally: Tally) -> float:
    """One chat request, counted in `tally`; returns how long to wait before the next (a 503's Retry-After)."""
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    tally.sent += 1
    started = time.perf_counter()
    try:
        resp = await http.post(f"{url}/v1/chat/completions", **kwargs)
    except httpx.HTTPError as exc:
        tally.lost += 1
        tally.lost_reasons[type(exc).__name__] += 1
        return 0.0
    return tally.record(kind, expected, resp, time.perf_counter() - started)


@dataclass
class Leavers:
    """Streaming clients that close the connection after the first chunk."""

    sent: int = 0
    left_after_first_chunk: int = 0
    refused_retryable: int = 0
    other: Counter = field(default_factory=Counter)
    lost: int = 0
    lost_reasons: Counter = field(default_factory=Counter)


async def leave_after_first_chunk(http: httpx.AsyncClient, url: str, body: dict, leavers: Leavers) -> None:
    leavers.sent += 1
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                if retry_after(resp) is not None:
                    leavers.refused_retryable += 1
                else:
                    leavers.other[resp.status_code] += 1
                return
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    leavers.left_after_first_chunk += 1
                    return  # leaving the block closes the connection mid-stream
            leavers.lost += 1
            leavers.lost_reasons["stream ended without a chunk"] += 1
    except httpx.HTTPError as exc:
        leavers.lost += 1
        leavers.lost_reasons[type(exc).__name__] += 1


async def leavers_loop(http: httpx.AsyncClient, urls: list[str], end: float, every_s: float, experts: list[str],
                       rng: random.Random, leavers: Leavers) -> None:
    """Every `every_s` until `end`, one streaming client (over the replicas in turn) that leaves after one chunk."""
    tasks, turn = [], 0
    while True:
        await asyncio.sleep(every_s)
        if time.monotonic() >= end:
            break
        body = {"model": rng.choice(["coe", *experts]), "stream": True, "max_tokens": 64,
                "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}]}
        tasks.append(asyncio.create_task(leave_after_first_chunk(http, urls[turn % len(urls)], body, leavers)))
        turn += 1
    await asyncio.gather(*tasks)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ms(values: list[float]) -> dict:
    """p50, p99 and mean in milliseconds (None without values)."""
    def rounded(v):
        return round(v * 1000, 2) if v is not None else None

    return {"p50_ms": rounded(percentile(values, 50)), "p99_ms": rounded(percentile(values, 99)),
            "mean_ms": rounded(statistics.fmean(values)) if values else None}
