"""chaos.json and chaos.md from a chaos run: the load's counts and the faults' requests added up, lost told from
stuck, each 5xx placed inside or outside a Redis outage, the replicas' memory, and which goals were met."""

from __future__ import annotations

import json
from collections import Counter

from coe_evals.chaos_faults import FaultTallies

TIMEOUTS = ("ReadTimeout", "WriteTimeout", "PoolTimeout", "ConnectTimeout")  # no answer by the deadline: stuck
OUTAGES = (("redis_stopped", "redis_started"), ("redis_paused", "redis_unpaused"))
RSS_GROWTH_GOAL = 0.10


def _windows(events: list[dict], grace_s: float) -> list[tuple[float, float]]:
    """When Redis was down or paused (seconds since the start), each end stretched by `grace_s`."""
    windows = []
    for start, end in OUTAGES:
        starts = [e["t_s"] for e in events if e["kind"] == start]
        ends = [e["t_s"] for e in events if e["kind"] == end]
        windows += [(s, e + grace_s) for s, e in zip(starts, ends)]
    return windows


def _growth(rss: dict) -> list[float | None]:
    return [round(end / start - 1, 3) if start and end else None for start, end in zip(rss["start"], rss["end"])]


def summarise(res: dict, tallies: FaultTallies, rss: dict, grace_s: float) -> dict:
    """One summary of the load (`res` from run_load) and the requests the faults sent."""
    faults = tallies.by_fault
    reasons = Counter(res["lost_reasons"])
    kinds = Counter(res["errors_by_kind"])
    server_errors = list(res["server_errors"])
    for tally in faults.values():
        reasons.update(tally.lost_reasons)
        kinds.update(tally.error_kinds)
        server_errors += [{**e, "t": round(e["t"] - tallies.t0, 1)} for e in tally.server_errors]
    stuck = sum(n for reason, n in reasons.items() if reason in TIMEOUTS)
    windows = _windows(res["events"], grace_s)
    outside = [e for e in server_errors
               if not (e["status"] == 503 and e["retry_after"] and any(a <= e["t"] <= b for a, b in windows))]
    growth = _growth(rss)
    fault_requests = {name: {"sent": t.sent, "answered": t.answered, "by_status": {str(k): v for k, v in t.by_status.items()},
                             "errors_by_kind": dict(t.error_kinds), "unexpected_status": dict(t.unexpected),
                             "no_answer": dict(t.lost_reasons)} for name, t in faults.items()}
    return {
        "clients": res["clients"], "replicas": res["replicas"], "duration_s": res["duration_s"], "wall_s": res["wall_s"],
        "sent": res["sent"] + sum(t.sent for t in faults.values()),
        "answered": res["answered"] + sum(t.answered for t in faults.values()),
        "left_mid_stream": res["left_mid_stream"],
        "errors_by_kind": dict(sorted(kinds.items())),
        "unexpected_status": {**res["unexpected_status"],
                              **{f"{name}: {k}": v for name, t in faults.items() for k, v in t.unexpected.items()}},
        "lost": sum(reasons.values()) - stuck, "stuck": stuck, "no_answer_reasons": dict(reasons),
        "server_errors": server_errors, "server_errors_outside_redis_outage": outside,
        "redis_outage_windows_s": windows, "latency_200": res["latency_200"], "coe_timings_200": res["coe_timings_200"],
        "api_rss_mb": {**rss, "growth": growth},
        "goals": {"lost_0": sum(reasons.values()) - stuck == 0, "stuck_0": stuck == 0,
                  "no_5xx_but_503_while_redis_is_out": not outside,
                  "rss_growth_at_most_10_percent": all(g is not None and g <= RSS_GROWTH_GOAL for g in growth)},
        "fault_requests": fault_requests, "poison_job": tallies.poison, "registry": res["registry"],
        "cancelled_jobs": res["cancelled_jobs"], "jobs_reclaimed_from_dead_workers": res["jobs_reclaimed_from_dead_workers"],
        "events": res["events"],
    }


def _p(v: dict) -> str:
    return f"{v['p50_ms']} / {v['p99_ms']}"


def markdown(s: dict) -> str:
    rss = s["api_rss_mb"]
    rows = [("requests sent (load, streams and the faults' own)", s["sent"]), ("answered (200)", s["answered"]),
            ("streams the client left after the first chunk", s["left_mid_stream"]),
            ("**lost** (connection made, no answer)", f"**{s['lost']}**"),
            ("**stuck** (no answer by the deadline)", f"**{s['stuck']}**"),
            ("5xx other than 503 with Retry-After during a Redis outage", len(s["server_errors_outside_redis_outage"])),
            ("answers with an unexpected status", sum(s["unexpected_status"].values())),
            ("latency p50 / p99 of answered requests (ms)", _p(s["latency_200"])),
            ("API replicas' RSS at start / end (MB)", f"{rss['start']} / {rss['end']} (growth {rss['growth']})"),
            ("jobs taken over from a dead or hung worker", s["jobs_reclaimed_from_dead_workers"])]
    timings = s["coe_timings_200"]
    for name in ("total", "queue_wait", "engine", "orchestrator_overhead"):
        rows.append((f"{name} p50 / p99 (ms)", _p(timings[name])))
    rows += [(f"stage `{k}` p50 / p99 (ms)", _p(v)) for k, v in timings["stages"].items()]
    lines = [f"# Chaos run: {s['clients']} clients, {s['duration_s']:g} s, {s['replicas']} replicas, {s['workers']} workers",
             "", f"Command: `{s['command']}` (seed {s['seed']}, deadline {s['deadline_s']:g} s, experts "
             f"`{s['experts_file']}`)", "",
             f"Machine: {s['machine']}; load average (1, 5, 15 min) {s['load_average']['start']} at the start, "
             f"{s['load_average']['end']} at the end.", "",
             "| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), "",
             "Goals: " + ", ".join(f"{k} {'met' if v else '**not met**'}" for k, v in s["goals"].items()) + ".", "",
             "Errors by kind (status and OpenAI error code): " + json.dumps(s["errors_by_kind"]), "",
             "Requests the faults sent: " + json.dumps(s["fault_requests"]), "",
             "Poison job: " + json.dumps(s["poison_job"]), "",
             "Events (seconds since the load started):", "", *(f"- t={e['t_s']} s: {e['what']}" for e in s["events"]), ""]
    if s["server_errors_outside_redis_outage"]:
        lines += ["5xx outside a Redis outage: " + json.dumps(s["server_errors_outside_redis_outage"]), ""]
    if s["unexpected_status"]:
        lines += ["Unexpected statuses (request kind -> status): " + json.dumps(s["unexpected_status"]), ""]
    if s["no_answer_reasons"]:
        lines += ["No answer, by reason: " + json.dumps(s["no_answer_reasons"]), ""]
    return "\n".join(lines)
