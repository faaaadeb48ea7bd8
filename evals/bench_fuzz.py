"""`coe bench fuzz`: many hostile requests against a running embedded server; no 5xx, no crash, bounded memory.

One `coe serve` (embedded workers, the experts file's real weights, max_tokens capped at 4 so answers stay cheap,
every other limit at its default) takes first the hand-written list of evals/fuzz_cases.py, then `--examples`
requests that schemathesis generates from the service's own OpenAPI schema, spread evenly over every operation
with valid and with invalid input, plus chats aimed at a real model. Each answer is counted by status; a 5xx,
a dropped connection or a schema violation (undeclared status, content type or body) is listed. The list is sent
twice: the server's RSS is read before, after each pass and at the end, so what the first use costs (the
experts' weights load then) is told from growth; the server must still be ready at the end.
Needs the `test` extra (schemathesis). Results: fuzz.json and fuzz.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import typer

from coe_evals.fuzz_cases import cases
from coe_evals.load_faults import CPU_ENGINES
from coe_evals.load_fleet import ROOT, Fleet

KEEP = 20  # problems listed in full; the rest are counted


def _hand_written(url: str, expert: str, timeout_s: float) -> list[dict]:
    answers = []
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        for hostile in cases(expert):
            started = time.perf_counter()
            try:
                resp = http.post(hostile.path, **hostile.request())
                answers.append({"name": hostile.name, "status": resp.status_code, "body": resp.text[:200],
                                "ms": round((time.perf_counter() - started) * 1000, 1)})
            except httpx.HTTPError as exc:
                answers.append({"name": hostile.name, "status": None, "body": f"{type(exc).__name__}: {exc}"})
    return answers


def _generated(url: str, examples: int, expert: str, timeout_s: float, seed: int) -> dict:
    """Drive schemathesis' strategies with hypothesis: `examples` requests spread over the operations and modes."""
    from hypothesis import HealthCheck, given, seed as hseed, settings
    from schemathesis.specs.openapi.checks import (
        content_type_conformance, response_schema_conformance, status_code_conformance,
    )

    from coe_evals.fuzz_schema import aimed_at, operation_modes, schema

    spec = schema()
    strategies = [(f"{op.label} {mode.value}", op.as_strategy(generation_mode=mode)) for op, mode in operation_modes(spec)]
    strategies.append(("chat aimed at a real model", spec["/v1/chat/completions"]["POST"].as_strategy().map(aimed_at(expert))))
    counts: dict[str, Counter] = {}
    problems: Counter = Counter()
    listed: list[dict] = []

    def note(kind: str, label: str, detail: str) -> None:
        problems[kind] += 1
        if len(listed) < KEEP:
            listed.append({"kind": kind, "operation": label, "detail": detail[:500]})

    for label, strategy in strategies:
        statuses = counts.setdefault(label, Counter())

        @hseed(seed)
        @given(case=strategy)
        @settings(max_examples=max(1, examples // len(strategies)), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def send(case):
            try:
                resp = case.call(base_url=url, timeout=timeout_s)
            except Exception as exc:  # a dropped connection or a timeout: the finding is the exception itself
                statuses["no answer"] += 1
                note("no answer", label, f"{type(exc).__name__}: {exc}")
                return
            statuses[str(resp.status_code)] += 1
            if resp.status_code >= 500:
                note("5xx", label, f"{resp.status_code} {resp.text}")
            try:
                case.validate_response(resp, checks=[status_code_conformance, content_type_conformance,
                                                     response_schema_conformance])
            except Exception as exc:  # schemathesis raises its failure group: counted, not fatal
                note("schema violation", label, f"{type(exc).__name__}: {exc}")

        send()
    return {"by_operation": {k: dict(v) for k, v in counts.items()}, "problems": dict(problems), "listed": listed,
            "sent": sum(sum(v.values()) for v in counts.values())}


def markdown(res: dict) -> str:
    hand = res["hand_written"]
    gen = res["generated"]
    rss = res["api_rss_mb"]
    rows = [("hand-written requests", len(hand)), ("hand-written 5xx", sum((a["status"] or 0) >= 500 for a in hand)),
            ("hand-written with no answer", sum(a["status"] is None for a in hand)),
            ("the list sent again: 5xx or no answer", len(res["hand_written_again_5xx_or_no_answer"])),
            ("generated requests (schemathesis)", gen["sent"]),
            ("generated 5xx", gen["problems"].get("5xx", 0)), ("generated with no answer", gen["problems"].get("no answer", 0)),
            ("generated schema violations", gen["problems"].get("schema violation", 0)),
            ("server still ready at the end", res["alive"]),
            ("RSS (MB) before / after the list / after it again / at the end",
             f"{rss['before']} / {rss['after_hand']} / {rss['after_hand_again']} / {rss['end']}"),
            ("wall time (s)", res["wall_s"])]
    lines = [f"# Fuzz run: {len(hand)} hand-written + {gen['sent']} generated requests", "",
             f"Command: `{res['command']}`; experts `{res['experts_file']}`", "",
             f"Machine: {res['machine']}; load average {res['load_average']['start']} at the start, "
             f"{res['load_average']['end']} at the end.", "",
             "| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), "",
             "Hand-written, status by case: " + ", ".join(f"{a['name']} {a['status']}" for a in hand), "",
             "Generated, statuses by operation: " + json.dumps(gen["by_operation"]), ""]
    if gen["listed"]:
        lines += ["Problems (first ones): " + json.dumps(gen["listed"]), ""]
    return "\n".join(lines)


def fuzz(
    examples: int = typer.Option(10_000, min=1, help="generated requests, spread over the operations"),
    seed: int = typer.Option(0),
    timeout_s: float = typer.Option(120.0, help="per request; later is counted as no answer"),
    experts_file: Path = typer.Option(ROOT / "experts.yaml", "--experts", "-e"),
    ready_timeout_s: float = typer.Option(1200.0),
    out: Path = typer.Option(Path("evals/results"), help="where fuzz.json and fuzz.md go"),
) -> None:
    """Hand-written and schema-generated hostile requests against one embedded server: 0 5xx, no crash, RSS."""
    load_start = os.getloadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="coe-bench-fuzz-"))
    typer.echo(f"server log in {log_dir}")
    fleet = Fleet("embedded", experts_file, 1, 0, 5.0, log_dir, env={"COE_MAX_TOKENS_CAP": "4"})
    started = time.monotonic()
    try:
        fleet.start(ready_timeout_s)
        url = fleet.urls[0]
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
        expert = next(m["id"] for m in models if m["id"] != "coe" and m["engine"] in CPU_ENGINES)
        rss = {"before": fleet.api_rss_mb()[0]}
        hand = _hand_written(url, expert, timeout_s)
        rss["after_hand"] = fleet.api_rss_mb()[0]  # includes the experts' weights, loaded on first use
        hand_again = _hand_written(url, expert, timeout_s)
        rss["after_hand_again"] = fleet.api_rss_mb()[0]  # the same list once more: growth, not first use
        generated = _generated(url, examples, expert, timeout_s, seed)
        rss["end"] = fleet.api_rss_mb()[0]
        alive = fleet.servers[0].poll() is None and httpx.get(f"{url}/readyz", timeout=30).status_code == 200
    finally:
        fleet.stop()
    args = sys.argv[sys.argv.index("fuzz") + 1:] if "fuzz" in sys.argv else sys.argv[1:]
    hand_again_5xx = [a["name"] for a in hand_again if (a["status"] or 500) >= 500]
    res = {"command": " ".join(["coe bench fuzz", *args]), "experts_file": str(experts_file), "hand_written": hand,
           "hand_written_again_5xx_or_no_answer": hand_again_5xx,
           "generated": generated, "api_rss_mb": rss, "alive": alive, "wall_s": round(time.monotonic() - started, 1),
           "machine": f"{os.cpu_count()} CPU cores, shared with other jobs",
           "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "fuzz.md").write_text(markdown(res))
    typer.echo(markdown(res))
    if not alive or hand_again_5xx or any((a["status"] or 500) >= 500 for a in hand) or generated["problems"].get("5xx"):
        raise typer.Exit(1)
