"""Markdown of evals/gpu/vs_vllm.py's JSON: the memory plan, then per phase each system's medians [min-max] over
repeats and coe's ratios to the vLLM-only baseline of that phase.

    python evals/gpu/vs_report.py OUT.md RUN.json [RUN.json ...]     (several runs: e.g. one device call per phase)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [("steady tok/s", "steady_tokens_per_s", 1, "{:.0f}"), ("makespan tok/s", "makespan_tokens_per_s", 1, "{:.0f}"),
           ("TTFT p50 ms", "ttft_p50_s", 1000, "{:.0f}"), ("TTFT p99 ms", "ttft_p99_s", 1000, "{:.0f}"),
           ("latency p50 s", "latency_p50_s", 1, "{:.2f}"), ("latency p99 s", "latency_p99_s", 1, "{:.2f}"),
           ("switches", "switches", 1, "{:.0f}"), ("switch s", "switch_s", 1, "{:.2f}"), ("errors", "errors", 1, "{:.0f}")]


def _cell(s: dict | None, scale: float, fmt: str) -> str:
    if not s:
        return "-"
    med, lo, hi = (fmt.format(s[k] * scale) for k in ("median", "min", "max"))
    return med if lo == hi else f"{med} [{lo}-{hi}]"


def _ratio(s: dict | None) -> str:
    return f"**{s['median']:.2f}x** [{s['min']:.2f}-{s['max']:.2f}]" if s else "-"


def phase_table(name: str, p: dict) -> list[str]:
    summary = p.get("summary") or {}
    runs = p.get("repeats", [])
    policy = next((r["vllm"]["policy"] for r in runs if "vllm" in r), "?")
    lines = [f"### {name}: {len(p['experts'])} experts, {p['rate_per_s']}/s for {p['duration_s']} s, "
             f"budget {p['budget_gb']} GB, {len(runs)} repeats (vLLM baseline: {policy})", "",
             "| system | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for system in ("vllm", "coe"):
        cells = [_cell((summary.get(system) or {}).get(key), scale, fmt) for _, key, scale, fmt in COLUMNS]
        lines.append(f"| {system if system == 'coe' else 'vLLM ' + policy} | " + " | ".join(cells) + " |")
    ratios = summary.get("compare") or {}
    ratio_cells = [_ratio(ratios.get(f"coe_over_vllm_{key}")) if f"coe_over_vllm_{key}" in ratios else ""
                   for _, key, _, _ in COLUMNS]
    lines.append("| coe / vLLM | " + " | ".join(ratio_cells) + " |")
    orders = ", ".join("-".join(r["order"]) for r in runs)
    return lines + ["", f"Orders: {orders}. Median [min-max] over repeats; ratios within a repeat, then over repeats.", ""]


def markdown(*reports: dict) -> str:
    first = reports[0]
    plan = first["memory_plan"]
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    lines = [f"# coe vs vLLM-only ({versions})", "",
             f"Commands: {'; '.join(r['command'] for r in reports)}. Engine args {first['engine_args']}; "
             f"{first['note']}; GPU {first['gpu_total_gib']} GiB, planned on {first['gpu_gb_used_for_plan']} GB: "
             f"budget {plan['budget_gb']} GB, the experts need {plan['all_need_gb']} GB, {len(plan['fit'])} fit.", "",
             "| expert | shape | GB |", "|---|---|---:|"]
    lines += [f"| {n}{' (fits)' if n in plan['fit'] else ''} | {plan['archs'][n]} | {gb} |" for n, gb in plan["memory_gb"].items()]
    lines.append("")
    for report in reports:
        for name, p in report["phases"].items():
            lines += phase_table(name, p)
        for what in ("errors", "skipped"):
            if report.get(what):
                lines += [f"{what}: {', '.join(report[what])}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    out, *files = sys.argv[1:]
    Path(out).write_text(markdown(*(json.loads(Path(f).read_text()) for f in files)))
