"""Summaries of the quality benchmark: quality per domain with 95% intervals, compute, expert shares,
the goals stated as met or missed, and the markdown table and the quality-against-compute plot."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from coe_evals.quality_policies import PolicyRun

Z95 = 1.959964


def wilson(correct: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return 0.0, 0.0
    p = correct / total
    denom = 1 + Z95**2 / total
    centre = (p + Z95**2 / (2 * total)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / denom
    return round(centre - half, 4), round(centre + half, 4)


def _quality(flags: list[bool]) -> dict:
    n, c = len(flags), sum(flags)
    return {"score": round(c / n, 4) if n else None, "correct": c, "n": n, "ci95": wilson(c, n)}


def summarise(run: PolicyRun, domains: list[str]) -> dict:
    """Quality per domain and overall (the mean over all items), compute and engine time per query, shares."""
    out = {"policy": run.name, "kind": run.kind, "setting": run.setting,
           "overall": _quality([c.correct for c in run.choices])}
    for d in sorted(set(domains)):
        out[d] = _quality([c.correct for c, dom in zip(run.choices, domains) if dom == d])
    n = max(1, len(run.choices))
    out["compute_per_query"] = round(sum(c.compute for c in run.choices) / n, 2)
    out["engine_s_per_query"] = round(sum(c.engine_s for c in run.choices) / n, 4)
    calls = Counter(e for c in run.choices for e in c.experts)
    total = sum(calls.values()) or 1
    out["share"] = {e: round(k / total, 4) for e, k in sorted(calls.items())}
    return out


def _dominated_by(p: dict, singles: list[dict]) -> list[str]:
    """Single experts with higher quality at equal or lower compute than p."""
    q, c = p["overall"]["score"], p["compute_per_query"]
    return [s["policy"] for s in singles if s["overall"]["score"] > q and s["compute_per_query"] <= c]


def goals(summaries: list[dict], default_cost_weight: float) -> list[dict]:
    singles = [s for s in summaries if s["kind"] == "single"]
    best = max(singles, key=lambda s: (s["overall"]["score"], -s["compute_per_query"]))
    sweep = [s for s in summaries if s["kind"] == "two_stage"]
    default = next((s for s in sweep if s["setting"].get("cost_weight") == default_cost_weight), sweep[0] if sweep else None)
    out = []
    if sweep:
        beaten = {s["policy"]: _dominated_by(s, singles) for s in sweep}
        on_frontier = [p for p, b in beaten.items() if not b]
        out.append({"goal": "the routed composition lies on or above the single experts' frontier (cost weight swept)",
                    "met": bool(on_frontier), "detail": {"not dominated": on_frontier,
                                                         "dominated": {p: b for p, b in beaten.items() if b}}})
    if default:
        q_ratio = default["overall"]["score"] / best["overall"]["score"] if best["overall"]["score"] else 0.0
        c_ratio = default["compute_per_query"] / best["compute_per_query"] if best["compute_per_query"] else math.inf
        out.append({"goal": f">= 95% of the best single expert's quality ({best['policy']}) at <= 70% of its compute",
                    "met": q_ratio >= 0.95 and c_ratio <= 0.70,
                    "detail": {"policy": default["policy"], "quality_ratio": round(q_ratio, 3),
                               "compute_ratio": round(c_ratio, 3)}})
        for dom, rule in (("humaneval", "within 2 points of the best single expert on HumanEval"),
                          ("mmlu", "no worse than the best single expert's interval on MMLU")):
            if dom not in default:
                continue
            best_dom = max(singles, key=lambda s: s[dom]["score"])
            mine = default[dom]["score"]
            met = mine >= best_dom[dom]["score"] - 0.02 if dom == "humaneval" else mine >= best_dom[dom]["ci95"][0]
            out.append({"goal": rule, "met": met,
                        "detail": {"policy": default["policy"], "score": mine, "best": best_dom["policy"],
                                   "best_score": best_dom[dom]["score"], "best_ci95": best_dom[dom]["ci95"]}})
    out += composition_goals(summaries, best)
    k1 = next((s for s in summaries if s["policy"] == "skills k=1"), None)
    k3 = next((s for s in summaries if s["policy"].startswith("skills k=3")), None)
    if k1 and k3:
        out.append({"goal": "report: does skills k=3 with the aggregator beat k=1 at its compute (no target)",
                    "met": None, "detail": {"k1": k1["overall"], "k3": k3["overall"],
                                            "k1_compute": k1["compute_per_query"], "k3_compute": k3["compute_per_query"]}})
    return out


ROUTED_KINDS = ("two_stage", "skills", "per_query", "cascade")
CATEGORY_POLICY = "two-stage w=0"


def gap_share(summaries: list[dict]) -> dict[str, float]:
    """Per policy, the share of the gap from category routing (two-stage, w=0) to the oracle it closes."""
    by_name = {s["policy"]: s["overall"]["score"] for s in summaries}
    base, top = by_name.get(CATEGORY_POLICY), by_name.get("oracle")
    if base is None or top is None or top <= base:
        return {}
    return {name: round((q - base) / (top - base), 3) for name, q in by_name.items()}


def composition_goals(summaries: list[dict], best: dict) -> list[dict]:
    """Issue 22's goals on the test items: (a) +5 points over the best single pair at <= its compute; (b) >= 95% of
    its quality at <= 0.6x its compute; (c) the per-query router closes >= 30% of category routing's gap to the oracle."""
    routed = [s for s in summaries if s["kind"] in ROUTED_KINDS]
    q0, c0 = best["overall"]["score"], best["compute_per_query"]

    def top(cands: list[dict]) -> dict | None:
        return max(cands, key=lambda s: (s["overall"]["score"], -s["compute_per_query"])) if cands else None

    a = top([s for s in routed if s["compute_per_query"] <= c0])
    b = min((s for s in routed if s["overall"]["score"] >= 0.95 * q0), key=lambda s: s["compute_per_query"], default=None)
    gaps = gap_share(summaries)
    c = max((s for s in summaries if s["kind"] == "per_query"), key=lambda s: gaps.get(s["policy"], -9), default=None)
    out = [{"goal": f"(a) a routed policy beats the best single pair ({best['policy']}, {q0:.3f}) by >= 5 points at "
                    f"<= its compute", "met": bool(a and a["overall"]["score"] >= q0 + 0.05),
            "detail": a and {"policy": a["policy"], "score": a["overall"]["score"], "points": round(100 * (a["overall"]["score"] - q0), 1),
                             "compute_ratio": round(a["compute_per_query"] / c0, 3)}},
           {"goal": "(b) a routed policy reaches >= 95% of the best single pair's quality at <= 0.6x its compute",
            "met": bool(b and b["compute_per_query"] <= 0.6 * c0),
            "detail": b and {"policy": b["policy"], "quality_ratio": round(b["overall"]["score"] / q0, 3),
                             "compute_ratio": round(b["compute_per_query"] / c0, 3)}}]
    if gaps and c is not None:
        out.append({"goal": "(c) the per-query router closes >= 30% of the gap from category routing to the oracle",
                    "met": gaps[c["policy"]] >= 0.30, "detail": {"policy": c["policy"], "share": gaps[c["policy"]]}})
    return out


def markdown(res: dict) -> str:
    doms = [d for d in ("mmlu", "humaneval", "maths") if any(d in s for s in res["policies"])]
    head = "| policy | overall (95% CI) | " + " | ".join(doms) + " | compute / query (B·tok) | engine s / query | shares |"
    lines = [f"# Quality benchmark ({res['mode']})", "", f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']}; load average before/after: {res['load_avg']}", "",
             f"Held-out test items: {res['n_test']} ({res['n_test_by_domain']}); profiles fitted on "
             f"{res['n_validation']} validation items.", ""]
    if res.get("stage2"):
        lines += [f"Two-stage router's stage 2: {res['stage2']['table']}.", ""]
    lines += [head, "|" + "---|" * (5 + len(doms))]
    for s in res["policies"]:
        o = s["overall"]
        cells = [f"{s[d]['score']:.3f} ({s[d]['correct']}/{s[d]['n']})" for d in doms]
        share = ", ".join(f"{e} {v:.0%}" for e, v in s["share"].items())
        lines.append(f"| {s['policy']} | {o['score']:.3f} ({o['ci95'][0]:.3f}-{o['ci95'][1]:.3f}) | "
                     + " | ".join(cells) + f" | {s['compute_per_query']:,.0f} | {s['engine_s_per_query']:.3f} | {share} |")
    gaps = gap_share(res["policies"])
    if gaps:
        lines += ["", f"Share of the gap from category routing ({CATEGORY_POLICY}) to the oracle closed: "
                  + ", ".join(f"{p} {g:+.2f}" for p, g in gaps.items() if p.startswith(("per-query", "cascade", "skills")))]
    stage2 = res.get("stage2") or {}
    if stage2.get("predictors"):
        lines += ["", "Per-query predictors on the test items (AUC / Brier / base rate of a right answer):", "",
                  "| pair | " + " | ".join(stage2["predictors"]) + " |", "|---|" + "---|" * len(stage2["predictors"])]
        for e in next(iter(stage2["predictors"].values())):
            cells = [f"{v[e]['auc']} / {v[e]['brier']} / {v[e]['base_rate']}" for v in stage2["predictors"].values()]
            lines.append(f"| {e} | " + " | ".join(cells) + " |")
    if stage2.get("default_policy"):
        d = stage2["default_policy"]
        lines += ["", f"Default policy chosen on validation: `{d['chosen']}` (best single on validation: {d['best_single']})."]
    lines += ["", "## Goals", ""]
    for g in res["goals"]:
        mark = "report" if g["met"] is None else ("met" if g["met"] else "missed")
        lines.append(f"- **{mark}**: {g['goal']} — `{g['detail']}`")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"single": ("o", "tab:blue"), "random": ("x", "tab:gray"), "oracle": ("*", "tab:green"),
              "skills": ("s", "tab:purple")}
    lines = {"two_stage": ("-^", "tab:red", "two-stage by category (cost weight swept)"),
             "per_query": ("-D", "tab:orange", "per-query router (cost weight swept)"),
             "cascade": ("-v", "tab:cyan", "cascade (target swept)")}
    for kind, (fmt, colour, label) in lines.items():
        groups: dict[str, list[dict]] = {}
        for s in res["policies"]:
            if s["kind"] == kind:
                groups.setdefault(s["setting"].get("predictor", ""), []).append(s)
        for sub, sweep in groups.items():
            sweep.sort(key=lambda s: s["compute_per_query"])
            ax.plot([s["compute_per_query"] for s in sweep], [s["overall"]["score"] for s in sweep], fmt,
                    color=colour, alpha=1.0 if sub in ("", "logistic") else 0.5, label=f"{label} {sub}".strip())
    for s in res["policies"]:
        if s["kind"] in lines:
            continue
        marker, colour = styles.get(s["kind"], ("o", "black"))
        ax.scatter(s["compute_per_query"], s["overall"]["score"], marker=marker, color=colour, s=60)
        ax.annotate(s["policy"], (s["compute_per_query"], s["overall"]["score"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("compute per query: active parameters (B) x tokens, log scale")
    ax.set_ylabel("quality on held-out mixed workload")
    ax.set_title("coe: quality against compute (MMLU + HumanEval + maths test items)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
