"""load.md from load.json: the counts, latency, the faults and what they did."""

from __future__ import annotations

import json


def _p(v: dict) -> str:
    return f"{v['p50_ms']} / {v['p99_ms']}"


def markdown(res: dict) -> str:
    cancelled = res["cancelled_jobs"]
    leavers = res["streams_left_after_first_chunk"]
    rows = [
        ("requests sent", res["sent"]),
        ("answered (200)", res["answered"]),
        ("refused, retryable (503 with Retry-After)", res["refused_retryable"]),
        ("client errors, as expected (4xx for the invalid requests)", res["client_errors_expected"]),
        ("other errors (any other status)", res["other_errors"]),
        (f"streams the client left after the first chunk (one every {leavers['every_s']:g} s)", res["left_mid_stream"]),
        ("**lost** (no answer, a dropped connection, a timeout)", f"**{res['lost']}**"),
        ("answers with an unexpected status", sum(res["unexpected_status"].values())),
        ("200 per second", res["ok_per_s"]),
        ("latency p50 / p99 of answered requests (ms)", _p(res["latency_200"])),
        ("latency p50 / p99 of refusals and client errors (ms)", _p(res["latency_refused"])),
        ("cancelled jobs never run / cancelled while running", f"{cancelled['never_run']} / {cancelled['while_running']}"),
    ]
    for name, label in (("engine", "engine time (generate + aggregate)"), ("queue_wait", "waiting for a worker (queue)"),
                        ("orchestrator_overhead", "orchestrator overhead (total - queue - engine)")):
        rows.append((f"{label}, p50 / p99 (ms)", _p(res["coe_timings_200"][name])))
    registry = res.get("registry")
    if registry:
        served, visible = registry["registry_served_s"], registry.get("registry_visible_s")
        rows.append((f"registry change (replica {registry['registered_through_replica']}) to listed in /v1/models "
                     f"(replica {registry['asked_through_replica']})",
                     f"{visible} s" if visible is not None else f"not within {registry['probe_window_s']:g} s"))
        rows.append((f"registry change (replica {registry['registered_through_replica']}) to served (replica "
                     f"{registry['asked_through_replica']})",
                     f"{served} s" if served is not None else
                     f"not served within {registry['probe_window_s']:g} s ({registry['probe_statuses']})"))
    if "jobs_reclaimed_from_dead_workers" in res:
        rows.append(("jobs a worker took over from another (the killed one, or one cut off by the Redis restart)",
                     res["jobs_reclaimed_from_dead_workers"]))
    workers = f", {res['workers']} workers" if res.get("workers") else ""
    lines = [f"# Load test: {res['clients']} clients, {res['duration_s']:g} s, {res['replicas']} replicas{workers}, "
             f"mode `{res['mode']}`", "", f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']}; load average (1, 5, 15 min) {res['load_average']['start']} at the start, "
             f"{res['load_average']['end']} at the end.", "",
             "| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]
    if res["events"]:
        lines += ["Events during the run (seconds since the load started):", "",
                  *(f"- t={e['t_s']} s: {e['what']}" for e in res["events"]), ""]
    if res["unexpected_status"]:
        lines += ["Unexpected statuses (request kind -> status): " + json.dumps(res["unexpected_status"]), ""]
    if res["lost"]:
        lines += ["Lost, by reason: " + json.dumps(res["lost_reasons"]), ""]
    return "\n".join(lines)
