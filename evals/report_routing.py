"""routing.json -> routing.md (a table) and routing.png (accuracy vs latency)."""

from __future__ import annotations

import json
from pathlib import Path


def _f(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(res: dict) -> str:
    d, m = res["data"], res["machine"]
    lines = [
        "# Routing benchmark",
        "",
        f"`{res['command']}` - {res['created']} - {m['cpus']} CPUs ({m['platform']}), load average at start "
        f"{_f(m['load_avg_at_start'][0], 1) if m.get('load_avg_at_start') else '-'}, at end "
        f"{_f(m['load_avg_at_end'][0], 1) if m.get('load_avg_at_end') else '-'}.",
        f"MMLU test set ({d['name']}), split {d['n_train']}/{d['n_validation']}/{d['n_test']} train/validation/test "
        f"(hash {d['hash']}); query text: {d['text']}. Encoder {res['encoder']['id']}; tau target `{res['tau_target']}`.",
        f"Out-of-domain set: {res['ood']['n']} queries ({', '.join(f'{v} {k}' for k, v in res['ood']['kinds'].items())}).",
        "",
        "| router | encoder runtime | acc 17 | macro-F1 17 | acc 4 | macro-F1 4 | fallback | acc routed | OOD to fallback "
        "| user-style | outside | maths WP | p50 ms | p99 ms | q/s @64 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["results"]:
        lines.append(
            f"| {r['router']} | {r['encoder']} | {_f(r['accuracy_17'])} | {_f(r['macro_f1_17'])} | {_f(r['accuracy_4'])} | "
            f"{_f(r['macro_f1_4'])} | {_f(r['fallback_rate'])} | {_f(r['accuracy_routed'])} | {_f(r.get('ood_fallback_rate'))} | "
            f"{_f(r.get('user_style'))} | {_f(r.get('outside'))} | {_f(r.get('maths_to_maths_route'))} | "
            f"{_f(r.get('p50_ms'), 1)} | {_f(r.get('p99_ms'), 1)} | {_f(r.get('throughput_qps'), 1)} |")
    lines += ["", "Latency: one query at a time, embedding + routing; throughput: batches of 64, embedding + routing. "
              "user-style: the shipped user requests' test split; outside: Arena-Hard v2.0's test part, prompts the project "
              "did not write; maths WP: the generated maths word problems' test split sent to a maths route (both below). "
              "Routers that only know MMLU's subjects have no task routes, so those three are not theirs to score.", ""]
    for r in res["results"]:
        extra = []
        if r.get("train_seconds") is not None:
            extra.append(f"trained in {r['train_seconds']} s")
        if r.get("tau") is not None:
            extra.append(f"tau {r['tau']}")
        if r.get("index_build"):
            b = r["index_build"]
            extra.append(f"index build {b['seconds_measured']} s for {b['utterances_measured']} utterances "
                         f"(~{b['seconds_extrapolated']} s for all {b['utterances_total']})")
        if r.get("ood_by_kind"):
            extra.append("OOD to fallback by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ood_by_kind"].items()))
        lines.append(f"- **{r['router']}**: {r['notes']}" + (f" ({'; '.join(extra)})" if extra else ""))
    from coe_evals.bench_conversations import markdown_section

    return "\n".join(lines + user_section(res) + markdown_section(res)) + "\n"


def user_section(res: dict) -> list[str]:
    """The service's router on held-out user requests, per route, and a route declared with 10 examples."""
    user = res.get("user") or {}
    if not user:
        return []
    r = res.get("routes") or {}
    lines = ["", "## User requests (the service's router, trained as `coe train` does)", "",
             f"Routes: {len(r.get('names', []))} from `{r.get('file')}` ({len(r.get('task', []))} task routes); "
             f"trained on {' + '.join(r.get('sources', []))} + the routes' examples; test rows never trained on.", ""]
    for name, m in user.items():
        if name in ("new_route", "outside", "maths_word_problems"):
            continue
        lines += [f"**{name}** test split: top-1 route accuracy {_f(m['accuracy'])} on {m['n']} requests "
                  f"(task routes {_f(m['accuracy_task_routes'])}, subject routes {_f(m['accuracy_subject_routes'])}), "
                  f"macro-F1 {_f(m['macro_f1'])}, fallback {_f(m['fallback_rate'])}, accuracy routed {_f(m['accuracy_routed'])}; "
                  f"lowest route {m['min_route'][0]} {_f(m['min_route'][1])}.", "",
                  "| route | accuracy |", "|---|---|"]
        lines += [f"| {lab} | {_f(acc)} |" for lab, acc in m["per_route"].items()]
        lines += ["", "Most frequent confusions (truth -> predicted): "
                  + ", ".join(f"{k} ({v})" for k, v in m["top_confusions"].items()), ""]
        if m.get("errors_by_kind"):
            lines += ["Errors by route kind (truth -> predicted): "
                      + ", ".join(f"{k} {v}" for k, v in m["errors_by_kind"].items()), ""]
    lines += outside_lines(user)
    if "new_route" in user:
        n = user["new_route"]
        lines += [f"**New route** `{n['route']}` declared with {n['n_examples']} examples, retrained with no other "
                  f"change: recall {_f(n['recall'])} on {n['n_test']} requests written separately (routed, not to the "
                  f"fallback: {_f(n['routed_recall'])}); missed as {', '.join(n['missed_as']) or '-'}; user-request accuracy "
                  f"after adding it {_f(n.get('user_accuracy_after'))}.", ""]
    ts = next((x for x in res["results"] if x["router"] == "two_stage"), {})
    if ts.get("user_requests_timing"):
        t = ts["user_requests_timing"]
        lines += [f"Timing on user requests (shorter than MMLU questions): p50 {_f(t['p50_ms'], 1)} ms, p99 "
                  f"{_f(t['p99_ms'], 1)} ms, {_f(t['throughput_qps'], 1)} q/s at batch {t['batch']}.", ""]
    return lines


def outside_lines(user: dict) -> list[str]:
    """Arena-Hard (evals/data/arena_hard_routes.yaml says which routes count for each label) and the maths problems."""
    lines = []
    if "outside" in user:
        lines += ["**Outside set** (Arena-Hard v2.0, real user prompts; labels mapped to routes by "
                  "evals/data/arena_hard_routes.yaml; nothing trained on it):", "",
                  "| split | n | accuracy | English only (n) | per label | misses went to |", "|---|---|---|---|---|---|"]
        for split, m in user["outside"].items():
            lines.append(f"| {split} | {m['n']} | {_f(m['accuracy'])} | {_f(m['accuracy_english'])} ({m['n_english']}) | "
                         + ", ".join(f"{k} {_f(v)}" for k, v in m["per_label"].items()) + " | "
                         + "; ".join(f"{k}: " + ", ".join(f"{r} {n}" for r, n in v.items()) for k, v in m["missed_as"].items())
                         + " |")
        lines.append("")
    if "maths_word_problems" in user:
        lines += ["**Maths word problems** (coe/data/maths.py) sent to a maths route (math or math_word_problems): "
                  + "; ".join(f"{split} {_f(m['to_maths_route'])} of {m['n']} (others: "
                              + (", ".join(f"{r} {n}" for r, n in m["missed_as"].items()) or "none") + ")"
                              for split, m in user["maths_word_problems"].items()) + ".", ""]
    return lines


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in res["results"]:
        if r.get("p50_ms") is None:
            continue
        ax.scatter(r["p50_ms"], r["accuracy_17"], s=40)
        ax.annotate(r["router"], (r["p50_ms"], r["accuracy_17"]), textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("single-query latency p50, ms (embedding included, log scale)")
    ax.set_ylabel("top-1 accuracy, 17 MMLU subcategories (test)")
    ax.set_title(f"Routing: accuracy vs latency ({res['machine']['cpus']} CPUs)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "routing.json").write_text(json.dumps(res, indent=2))
    (out_dir / "routing.md").write_text(markdown(res))
    plot(res, out_dir / "routing.png")
