"""`coe bench cache`: the semantic cache's threshold, chosen on the paraphrase set's validation pairs and reported on
its test pairs, then the cache in the running service.

Pairs (coe/data/paraphrases.py): a paraphrase pair should be a hit (the hit rate), a near-miss pair must not (the
false-hit rate). A pair hits when its cosine (the service's encoder, as the router embeds) reaches the threshold and
the lexical guard (coe/cache_guard.py) lets it through; cosine alone is reported beside it. The threshold: the highest
validation hit rate whose validation false-hit rate is at most 1 %, the highest such threshold on ties.

The service: one embedded `coe serve` (the experts file given), requests with temperature 0 and `x-coe-cache:
semantic`, one at a time. For each test base: the base (a miss, kept), the base again (a hit), its paraphrase, its
near-miss. Hit and miss latency come from the same run (their ratio, with the load average: the machine is shared);
the service's hit rate also needs the paraphrase routed like its base (the bucket holds the route).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import typer

from coe_evals.load_fleet import ROOT, Fleet

THRESHOLDS = tuple(round(0.70 + 0.01 * i, 2) for i in range(30))
MAX_FALSE_HITS = 0.01


def _rates(pairs, sims: np.ndarray, guarded: np.ndarray, t: float, guard: bool = True) -> dict:
    hit = (sims >= t) & (guarded if guard else True)
    para = np.array([p.kind == "paraphrase" for p in pairs])
    return {"threshold": t, "hit_rate": round(float(hit[para].mean()), 4), "hits": int(hit[para].sum()),
            "paraphrases": int(para.sum()), "false_hit_rate": round(float(hit[~para].mean()), 4),
            "false_hits": int(hit[~para].sum()), "near_misses": int((~para).sum())}


def calibrate(log=print) -> dict:
    """The threshold chosen on validation, and what it does on test (with cosine alone beside it)."""
    from coe.cache_guard import same_literals
    from coe.core.settings import get_settings
    from coe.data.paraphrases import load_pairs
    from coe.embedder import make_embedder

    settings = get_settings()
    embedder = make_embedder(settings)
    out: dict = {"encoder": f"{settings.encoder} ({embedder.runtime_id})", "shipped_threshold": settings.cache_threshold}
    split = {}
    for name in ("validation", "test"):
        pairs = load_pairs(name)
        a, b = embedder.encode([p.a for p in pairs]), embedder.encode([p.b for p in pairs])
        split[name] = (pairs, (a * b).sum(axis=1), np.array([same_literals(p.a, p.b) for p in pairs]))
    val = [_rates(*split["validation"], t) for t in THRESHOLDS]
    safe = [r for r in val if r["false_hit_rate"] <= MAX_FALSE_HITS]
    chosen = max(safe, key=lambda r: (r["hit_rate"], r["threshold"]))["threshold"]
    out["validation_curve"] = val
    out["validation_curve_cosine_only"] = [_rates(*split["validation"], t, guard=False) for t in THRESHOLDS]
    out["chosen_threshold"] = chosen
    for t, label in ((chosen, "test"), (settings.cache_threshold, "test_at_shipped_threshold")):
        out[label] = _rates(*split["test"], t)
        out[label + "_cosine_only"] = _rates(*split["test"], t, guard=False)
    pairs, sims, guarded = split["test"]
    kinds = sorted({p.change for p in pairs if p.change})
    out["test_false_hits_by_change"] = {
        k: {"n": sum(p.change == k for p in pairs),
            "false_hits": int(sum(p.change == k and s >= chosen and g for p, s, g in zip(pairs, sims, guarded))),
            "cosine_only": int(sum(p.change == k and s >= chosen for p, s in zip(pairs, sims)))} for k in kinds}
    log(f"threshold {chosen} (validation); test: {out['test']}")
    return out


def _lookup_means(url: str) -> dict:
    """Mean seconds of a cache lookup by result, from the service's own histogram."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    means = {}
    for result in ("hit", "miss"):
        total = re.search(rf'^coe_cache_lookup_seconds_sum{{result="{result}"}} (\S+)$', text, re.MULTILINE)
        count = re.search(rf'^coe_cache_lookup_seconds_count{{result="{result}"}} (\S+)$', text, re.MULTILINE)
        if total and count and float(count.group(1)):
            means[result] = round(float(total.group(1)) / float(count.group(1)), 6)
    return means


def _ask(url: str, text: str, max_tokens: int, timeout_s: float) -> dict:
    body = {"model": "coe", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0}
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-coe-cache": "semantic"}, timeout=timeout_s)
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    data = r.json()
    return {"seconds": seconds, "text": data["choices"][0]["message"]["content"], "cache": data["coe"]["cache"],
            "experts": data["coe"]["experts"], "category": data["coe"]["category"]}


def in_service(experts_file: Path, bases: int | None, max_tokens: int, timeout_s: float, ready_timeout_s: float,
               log=print) -> dict:
    """The test bases through one embedded server (the module's order), hit and miss latency side by side."""
    from coe.data.paraphrases import load_pairs

    test = load_pairs("test")
    by_base = {}
    for p in test:
        by_base.setdefault(p.a, {})[p.kind] = p.b
    chosen = list(by_base.items())[:bases] if bases else list(by_base.items())
    log_dir = Path(tempfile.mkdtemp(prefix="coe-bench-cache-"))
    log(f"server log in {log_dir}")
    fleet = Fleet("embedded", experts_file, 1, 0, 5.0, log_dir)
    rows = []
    load_start = os.getloadavg()
    try:
        fleet.start(ready_timeout_s)
        url = fleet.urls[0]
        for n, (base, other) in enumerate(chosen):
            first = _ask(url, base, max_tokens, timeout_s)
            again = _ask(url, base, max_tokens, timeout_s)
            para = _ask(url, other["paraphrase"], max_tokens, timeout_s)
            near = _ask(url, other["near-miss"], max_tokens, timeout_s)
            rows.append({"base": base, "first": first, "again": again, "paraphrase": para, "near_miss": near})
            log(f"{n + 1}/{len(chosen)} miss {first['seconds']:.2f}s, hit {again['seconds'] * 1000:.1f} ms, "
                f"paraphrase hit={para['cache']['hit']}, near-miss hit={near['cache']['hit']}")
        lookups = _lookup_means(url)
    finally:
        fleet.stop()
    load_end = os.getloadavg()
    misses = [r["first"]["seconds"] for r in rows if not r["first"]["cache"]["hit"]]
    hits = [r["again"]["seconds"] for r in rows if r["again"]["cache"]["hit"]]
    same_route = [r for r in rows if r["paraphrase"]["experts"] == r["first"]["experts"]
                  and r["paraphrase"]["category"] == r["first"]["category"]]
    return {
        "experts_file": str(experts_file), "max_tokens": max_tokens, "bases": len(rows),
        "miss_p50_s": round(statistics.median(misses), 4) if misses else None,
        "hit_p50_s": round(statistics.median(hits), 4) if hits else None,
        "miss_over_hit": round(statistics.median(misses) / statistics.median(hits), 1) if misses and hits else None,
        "n_misses": len(misses), "n_hits": len(hits),
        "lookup_mean_s": lookups,
        "bases_answered_from_another_base": sum(r["first"]["cache"]["hit"] for r in rows),
        "bases_not_kept": sum(not r["first"]["cache"]["stored"] and not r["first"]["cache"]["hit"] for r in rows),
        "paraphrase_hits": sum(r["paraphrase"]["cache"]["hit"] for r in rows),
        "paraphrases_routed_like_their_base": len(same_route),
        "paraphrase_hits_with_the_base_answer": sum(r["paraphrase"]["cache"]["hit"]
                                                    and r["paraphrase"]["text"] == r["first"]["text"] for r in rows),
        "near_miss_false_hits": sum(r["near_miss"]["cache"]["hit"] for r in rows),
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
        "rows": rows,
    }


def _pct(r: dict, key: str, n: str) -> str:
    return f"{r[key + '_rate'] * 100:.1f} % ({r[key + 's']}/{r[n]})"


def markdown(res: dict) -> str:
    cal = res["calibration"]
    t = cal["chosen_threshold"]
    lines = [f"# Semantic cache: threshold {t}, chosen on validation, reported on test", "",
             f"Command: `{res['command']}` at commit {res['commit']}. Encoder: {cal['encoder']}. "
             f"Machine: {res['machine']}.", "",
             "| pairs (test) | threshold | hit rate on paraphrases | false hits on near-misses |",
             "| --- | --- | --- | --- |"]
    for label, key in (("cosine + guard (the service)", "test"), ("cosine alone", "test_cosine_only")):
        r = cal[key]
        lines.append(f"| {label} | {r['threshold']} | {_pct(r, 'hit', 'paraphrases')} | "
                     f"{_pct(r, 'false_hit', 'near_misses')} |")
    lines += ["", f"Shipped default `COE_CACHE_THRESHOLD` = {cal['shipped_threshold']}"
              + (" (the chosen one)." if cal["shipped_threshold"] == t else "; test at it: "
                 + json.dumps(cal["test_at_shipped_threshold"])), "",
              "Test false hits by kind of near-miss (cosine + guard / cosine alone, at the threshold): "
              + ", ".join(f"{k} {v['false_hits']}/{v['n']} ({v['cosine_only']})"
                          for k, v in cal["test_false_hits_by_change"].items()), "",
              "Validation curve (cosine + guard): " + ", ".join(
                  f"{r['threshold']}: {r['hit_rate']:.2f}/{r['false_hit_rate']:.3f}"
                  for r in cal["validation_curve"] if r["threshold"] in (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)), ""]
    s = res.get("service")
    if s:
        lines += [f"## The running service ({s['experts_file']}, max_tokens {s['max_tokens']}, {s['bases']} test bases, "
                  "one request at a time)", "",
                  "| measure | value |", "| --- | --- |",
                  f"| miss, p50 (routed, generated, kept) | {s['miss_p50_s']} s (n={s['n_misses']}) |",
                  f"| hit, p50 (the same request again) | {s['hit_p50_s']} s (n={s['n_hits']}) |",
                  f"| miss / hit | {s['miss_over_hit']}x |",
                  f"| lookup, mean (search + guard; hit / miss) | {s['lookup_mean_s']} s |",
                  f"| paraphrases answered from their base's entry | {s['paraphrase_hits_with_the_base_answer']}/{s['bases']} "
                  f"({s['paraphrases_routed_like_their_base']} routed like their base) |",
                  f"| near-misses answered from the cache (false hits) | {s['near_miss_false_hits']}/{s['bases']} |",
                  f"| bases answered from another base's entry | {s['bases_answered_from_another_base']}/{s['bases']} |",
                  f"| bases whose answer was not kept (degraded) | {s['bases_not_kept']} |", "",
                  f"Load average (1/5/15 min) {s['load_average']['start']} at the start, {s['load_average']['end']} at "
                  "the end; the machine is shared with other jobs, so only the ratio means anything.", ""]
    return "\n".join(lines)


def cache(
    experts_file: Path = typer.Option(ROOT / "experts.yaml", "--experts", "-e", help="the service's experts"),
    bases: int = typer.Option(None, help="test bases sent to the service (default: all)"),
    max_tokens: int = typer.Option(16, help="max_tokens of every request to the service"),
    service: bool = typer.Option(True, help="also run the service part (off: the pairs only)"),
    timeout_s: float = typer.Option(300.0),
    ready_timeout_s: float = typer.Option(1200.0),
    out: Path = typer.Option(Path("evals/results"), help="where cache.json and cache.md go"),
) -> None:
    """The semantic cache: threshold on the paraphrase set (validation -> test), hit vs miss latency in the service."""
    import subprocess

    started = time.monotonic()
    args = sys.argv[sys.argv.index("cache") + 1:] if "cache" in sys.argv else sys.argv[1:]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    res = {"command": " ".join(["coe bench cache", *args]), "commit": commit,
           "machine": f"{os.cpu_count()} CPU cores, shared with other jobs", "calibration": calibrate(typer.echo)}
    if service:
        res["service"] = in_service(experts_file, bases, max_tokens, timeout_s, ready_timeout_s, typer.echo)
    res["wall_s"] = round(time.monotonic() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "cache.md").write_text(markdown(res))
    typer.echo(markdown(res))
