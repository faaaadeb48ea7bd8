"""Repeated side-by-side runs of evals/gpu/vs_vllm.py, summed up: the median and the spread (min, max).

Each repeat serves one stream with both systems, one after the other, the order alternating between
repeats; a ratio is taken within a repeat (coe over vLLM on the same stream), then summed up over repeats.
"""

from __future__ import annotations

import statistics

from coe_evals.gpu.streams import COMPARED

MEASURES = COMPARED + ("switches", "errors", "gpu_used_gib_peak")


def spread(values: list[float | None]) -> dict | None:
    """median, min, max of the values there are (None when there are none)."""
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"median": round(statistics.median(vs), 4), "min": round(min(vs), 4), "max": round(max(vs), 4), "n": len(vs)}


def summarize_repeats(repeats: list[dict]) -> dict:
    """Per system, each measure's spread over repeats; per ratio, its spread over repeats."""
    out: dict = {}
    for system in ("vllm", "coe"):
        out[system] = {m: spread([r[system].get(m) for r in repeats if system in r]) for m in MEASURES}
    ratios = sorted({k for r in repeats for k in r.get("compare", {})})
    out["compare"] = {k: spread([r["compare"].get(k) for r in repeats if "compare" in r]) for k in ratios}
    return out
