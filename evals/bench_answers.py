"""`coe bench answers`: what a user waits for, end to end, with a few people asking at once.

Issue 23's goal: on this machine with the default experts, a 128-token answer has p50 <= 8 s with 4 concurrent
users. Only the whole path can say whether it holds (embedding, routing, the queue, the engine, the strategy, SSE),
so the bench starts `coe serve` as a user would (a subprocess on a free port, the experts file given, ready once
/readyz says so) and talks to it through the official `openai` client (AsyncOpenAI, stream=True, temperature 0).

The prompts are the README's first examples and five everyday ones. `users` clients take them from one shared
queue (`rounds` passes over the list) and each request records its wall latency, time to first content chunk,
completion tokens (the usage chunk, stream_options.include_usage) and who answered (the final chunk's `coe`
object: expert and strategy). Answers shorter than max_tokens finish sooner, so latency scaled to 128 tokens
(latency / tokens x 128) is reported beside the raw figure. No warm-up: the first requests are counted as a
user would meet them. Writes answers.json and answers.md under the output folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import typer
from openai import AsyncOpenAI

from coe_evals.load_clients import percentile
from coe_evals.load_fleet import ROOT, Fleet

GOAL_P50_S = 8.0
GOAL_TOKENS = 128
GOAL_USERS = 4
PROMPTS: list[tuple[str, str]] = [
    # the README's chat examples (curl, the openai client, streaming, k experts), in its order
    ("readme-derivative", "What is the derivative of x squared?"),
    ("readme-napoleon", "Who was Napoleon?"),
    ("readme-entropy", "Explain entropy."),
    ("readme-prime", "Is 221 prime?"),
    # everyday requests
    ("history", "Why did the Western Roman Empire fall?"),
    ("coding", "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces."),
    ("word-problem", "A bakery sells muffins at $3 each or 4 for $10. How much do 10 muffins cost at the cheapest?"),
    ("haiku", "Write a haiku about the first snow of winter."),
    ("extraction", 'Extract the name, city and date from this message as JSON with keys name, city and date: '
                   '"Hi, this is Anna Berg from Uppsala, I would like to book a table for two on 14 March."'),
]


async def ask(client: AsyncOpenAI, model: str, name: str, text: str, max_tokens: int) -> dict:
    """One streamed chat: latency, first content chunk, tokens and who answered; a failure is a row, not a crash."""
    row: dict = {"prompt": name, "ok": False, "error": None, "latency_s": None, "ttft_s": None,
                 "completion_tokens": None, "expert": None, "strategy": None, "attempts": None, "router": None,
                 "category": None, "finish_reason": None}
    sent = time.perf_counter()
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0.0,
            stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and row["ttft_s"] is None:
                row["ttft_s"] = round(time.perf_counter() - sent, 3)
            if chunk.choices and chunk.choices[0].finish_reason:
                row["finish_reason"] = chunk.choices[0].finish_reason
                coe = (chunk.model_extra or {}).get("coe") or {}
                answers = coe.get("answers") or []
                if answers:  # the last answer is the one shown (a cascade lists every attempt before it)
                    row.update(expert=answers[-1]["expert"], strategy=answers[-1]["strategy"],
                               attempts=[a["expert"] for a in answers])
                row.update(router=coe.get("router"), category=coe.get("category"))
            if chunk.usage is not None:
                row["completion_tokens"] = chunk.usage.completion_tokens
        row["latency_s"] = round(time.perf_counter() - sent, 3)
        row["ok"] = row["finish_reason"] is not None and row["completion_tokens"] is not None
        if not row["ok"]:
            row["error"] = "the stream ended without a final chunk or usage"
    except Exception as exc:  # noqa: BLE001 - every failure is reported per request
        row.update(latency_s=round(time.perf_counter() - sent, 3), error=f"{type(exc).__name__}: {exc}"[:300])
    return row


async def run_users(base_url: str, model: str, max_tokens: int, users: int, rounds: int,
                    timeout_s: float) -> tuple[list[dict], float]:
    """`users` clients draining one queue of (round, prompt); the rows in queue order and the wall time."""
    queue: asyncio.Queue[tuple[int, int, str, str]] = asyncio.Queue()
    for r in range(rounds):
        for i, (name, text) in enumerate(PROMPTS):
            queue.put_nowait((r * len(PROMPTS) + i, r, name, text))
    rows: dict[int, dict] = {}

    async def user(n: int, client: AsyncOpenAI) -> None:
        while not queue.empty():
            order, r, name, text = queue.get_nowait()
            rows[order] = {**await ask(client, model, name, text, max_tokens), "round": r, "user": n}

    async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=timeout_s) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(user(n, client) for n in range(users)))
        wall = time.perf_counter() - t0
    return [rows[k] for k in sorted(rows)], wall


def _scaled(row: dict) -> float | None:
    """Latency scaled to a 128-token answer; None where nothing was generated (a scored choice)."""
    return round(row["latency_s"] / row["completion_tokens"] * GOAL_TOKENS, 3) if row["completion_tokens"] else None


def summarise(rows: list[dict], wall: float, max_tokens: int, users: int, model: str) -> dict:
    ok = [r for r in rows if r["ok"]]
    latency = [r["latency_s"] for r in ok]
    scaled = [s for s in map(_scaled, ok) if s is not None]
    tokens = sum(r["completion_tokens"] for r in ok)
    per_request = [r["completion_tokens"] / r["latency_s"] for r in ok if r["latency_s"]]
    p50, p50_scaled = percentile(latency, 50), percentile(scaled, 50)

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "requests": len(rows), "ok": len(ok), "failed": len(rows) - len(ok), "wall_s": round(wall, 2),
        "latency_s": {"p50": rounded(p50), "p95": rounded(percentile(latency, 95)),
                      "max": rounded(max(latency, default=None))},
        "ttft_s": {"p50": rounded(percentile([r["ttft_s"] for r in ok if r["ttft_s"] is not None], 50))},
        "latency_per_128_tokens_s": {"p50": rounded(p50_scaled), "p95": rounded(percentile(scaled, 95))},
        "routers": sorted({r["router"] for r in ok if r["router"]}),
        "completion_tokens": {"total": tokens, "mean": round(tokens / len(ok), 1) if ok else None},
        "tokens_per_s": {"per_request_p50": rounded(percentile(per_request, 50)),
                         "aggregate": round(tokens / wall, 2) if wall else None},
        "goal": {"p50_s": GOAL_P50_S, "tokens": GOAL_TOKENS, "users": GOAL_USERS,
                 "applies": max_tokens == GOAL_TOKENS and users == GOAL_USERS and model == "coe",
                 "met": p50 is not None and p50 <= GOAL_P50_S and len(ok) == len(rows),
                 "met_per_128_tokens": p50_scaled is not None and p50_scaled <= GOAL_P50_S and len(ok) == len(rows)},
    }


def bench_answers(experts_file: Path, out_dir: Path, users: int = GOAL_USERS, rounds: int = 1,
                  max_tokens: int = GOAL_TOKENS, model: str = "coe", ready_timeout_s: float = 1200.0,
                  timeout_s: float = 300.0, log=print) -> dict:
    """Serve `experts_file`, run the users, stop the server (always); results written and returned."""
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)", "experts_file": str(experts_file),
        "model": model, "users": users, "rounds": rounds, "max_tokens": max_tokens, "temperature": 0.0,
        "command": "coe bench answers " + " ".join(shlex.quote(a) for a in sys.argv[3:])
                   if sys.argv[1:3] == ["bench", "answers"] else
                   f"coe bench answers --experts {experts_file} --users {users} --rounds {rounds} "
                   f"--max-tokens {max_tokens} --model {model}",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    log_dir = Path(tempfile.mkdtemp(prefix="coe-bench-answers-"))
    result["server_log_dir"] = str(log_dir)
    log(f"coe serve with {experts_file}; its log in {log_dir}")
    fleet = Fleet("embedded", experts_file, 1, 0, 0.0, log_dir, threads=None)  # one server: as a user runs it
    try:
        t0 = time.perf_counter()
        fleet.start(ready_timeout_s)
        result["ready_s"] = round(time.perf_counter() - t0, 1)
        log(f"ready in {result['ready_s']} s; {users} users, {rounds} round(s) of {len(PROMPTS)} prompts")
        rows, wall = asyncio.run(run_users(fleet.urls[0], model, max_tokens, users, rounds, timeout_s))
    finally:
        fleet.stop()
    for row in rows:
        row["latency_per_128_tokens_s"] = _scaled(row) if row["ok"] else None
    result.update(summary=summarise(rows, wall, max_tokens, users, model), requests=rows,
                  loadavg_end=[round(x, 2) for x in os.getloadavg()])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "answers.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "answers.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    s, goal = result["summary"], result["summary"]["goal"]

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    lines = [
        "# End-to-end answers: latency with concurrent users",
        "",
        f"`coe serve` with {result['experts_file']} ({result['machine']}), ready in {result['ready_s']} s; "
        f"{result['users']} users over {result['rounds']} round(s) of {len(PROMPTS)} prompts, model "
        f"`{result['model']}`, max_tokens {result['max_tokens']}, temperature 0, streamed through the openai client. "
        "Latency is wall time from sending to the end of the stream; TTFT is the first content chunk (a strategy "
        "that is not direct sends its answer in one piece, so its TTFT is close to its latency). Per 128 tokens = "
        "latency / completion tokens x 128: it scales the fixed cost (routing, prefill) too, so it overstates short "
        f"answers. Router(s) that answered: {', '.join(s['routers']) or 'none'}.",
        "",
        f"Command: `{result['command']}`. Load average (1/5/15 min) at start {result['loadavg_start']}, "
        f"at end {result['loadavg_end']}.",
        "",
        f"Goal (issue 23): p50 <= {goal['p50_s']:g} s for a {goal['tokens']}-token answer with {goal['users']} users: "
        + (f"**{verdict(goal['met'])}** (p50 {s['latency_s']['p50']} s); scaled to {goal['tokens']} tokens "
           f"**{verdict(goal['met_per_128_tokens'])}** (p50 {s['latency_per_128_tokens_s']['p50']} s)."
           if goal["applies"] else "not measured by this run (other max_tokens, users or model)."),
        "",
        "| requests | failed | wall s | latency p50 / p95 / max s | TTFT p50 s | per 128 tokens p50 / p95 s | "
        "tokens mean | tok/s per request p50 | tok/s aggregate |",
        "| ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |",
        f"| {s['requests']} | {s['failed']} | {s['wall_s']} | {s['latency_s']['p50']} / {s['latency_s']['p95']} / "
        f"{s['latency_s']['max']} | {s['ttft_s']['p50']} | {s['latency_per_128_tokens_s']['p50']} / "
        f"{s['latency_per_128_tokens_s']['p95']} | {s['completion_tokens']['mean']} | "
        f"{s['tokens_per_s']['per_request_p50']} | {s['tokens_per_s']['aggregate']} |",
        "",
        "| prompt | round | expert | strategy | tokens | TTFT s | latency s | per 128 tokens s |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["requests"]:
        if r["ok"]:
            lines.append(f"| {r['prompt']} | {r['round']} | {r['expert']} | {r['strategy']} | "
                         f"{r['completion_tokens']} | {r['ttft_s']} | {r['latency_s']} | {r['latency_per_128_tokens_s']} |")
        else:
            lines.append(f"| {r['prompt']} | {r['round']} | — | — | — | — | {r['latency_s']} | failed: "
                         f"{r['error'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def answers(
    experts_file: Path = typer.Option(ROOT / "experts.yaml", "--experts", "-e", help="the experts file served"),
    users: int = typer.Option(GOAL_USERS, min=1, help="concurrent users, each taking the next prompt from one queue"),
    rounds: int = typer.Option(1, min=1, help="passes over the prompt list"),
    max_tokens: int = typer.Option(GOAL_TOKENS, min=1, help="max_tokens of every request"),
    model: str = typer.Option("coe", help="`coe` (routed) or an expert's name (bypass routing)"),
    ready_timeout_s: float = typer.Option(1200.0, help="wait this long for /readyz (a first run on a machine "
                                                       "assembles the experts' weights)"),
    timeout_s: float = typer.Option(300.0, help="client timeout per request"),
    out: Path = typer.Option(Path("evals/results"), help="where answers.json and answers.md go"),
) -> None:
    """End-to-end latency of real answers from `coe serve` with concurrent users, against issue 23's goal
    (p50 <= 8 s for a 128-token answer at 4 users)."""
    res = bench_answers(experts_file, out, users=users, rounds=rounds, max_tokens=max_tokens, model=model,
                        ready_timeout_s=ready_timeout_s, timeout_s=timeout_s, log=typer.echo)
    typer.echo(markdown(res))
    typer.echo(f"wrote {out}/answers.json and answers.md")
    if res["summary"]["failed"]:
        raise typer.Exit(1)
