"""`coe bench recruit`: skill-based recruiting judged in SIMULATION, the plumbing judged on a real profile run.

Simulation (evals/sim_recruit.py): accuracy of skills k=1/3/5 (+ simulated aggregation)
against two-stage (simulated policy), single best, random and the oracles, as the
validation set grows, in two synthetic worlds: specialists aligned with categories
(two-stage's home ground) and a mixed one where some specialists' strengths cut across
categories. Real: a `coe profile` run on the default experts (time, tokens, accuracy and
unparsed answers per expert; aggregator scores), read from its profile file or run here.
Writes evals/results/recruit.json, recruit.md, recruit.png and docs/recruit.md.
"""

from __future__ import annotations

import asyncio
import json
import platform
from collections import Counter
import time
from pathlib import Path

import typer

from coe_evals.sim_recruit import WorldConfig, simulate

WORLDS = {
    "category-aligned": WorldConfig(cross_specialists=0),
    "mixed (3 of 6 specialists cut across categories)": WorldConfig(cross_specialists=3),
}
SHOWN = ["random", "single best", "two-stage (sim)", "skills k=1 top", "skills k=1 top, local only",
         "skills k=3 majority", "skills k=5 majority", "skills k=5 best-profiled",
         "oracle-1 (best true expert)", "oracle-any (upper bound)"]
DEFAULT_PROFILE = Path("evals/results/profile-mmlu-validation.json")


def run_real_profile(out: Path, limit: int, max_seconds: float | None, agg_limit: int, log) -> dict:
    from coe.core.settings import get_settings
    from coe.profiling import Runner, measure_aggregators, profile_experts, select_questions
    from routers.skills_profile import save_profile

    settings = get_settings()
    questions = select_questions("mmlu", "validation", limit, settings.cache_dir)

    async def go() -> dict:
        runner = Runner(settings, batch=16)
        await runner.start()
        try:
            experts = runner.registry.names
            prof = await profile_experts(runner, questions, experts, max_tokens=8, max_seconds=max_seconds,
                                         meta={"data": "mmlu", "split": "validation", "limit": limit})
            if agg_limit:
                prof["aggregators"] = await measure_aggregators(runner, prof, questions, runner.router.experts,
                                                                experts, limit=agg_limit)
            return prof
        finally:
            await runner.stop()

    log(f"running coe profile on {len(questions)} questions (budget {max_seconds}s)")
    prof = asyncio.run(go())
    save_profile(prof, out)
    return prof


def real_summary(prof: dict, path: Path) -> dict:
    experts = {n: {k: e.get(k) for k in ("accuracy", "correct", "total", "unparsed", "prompt_tokens",
                                         "completion_tokens", "time_s", "tokens_per_s")}
               for n, e in prof["experts"].items()}
    agg = prof.get("aggregators") or {}
    letters = Counter(str(a) for r in prof.get("records", []) for a in r["answers"].values())
    gold = Counter(r["gold"] for r in prof.get("records", []))
    return {"profile": str(path), "limit": prof.get("limit"),
            "answer_letters": dict(sorted(letters.items())), "gold_letters": dict(sorted(gold.items())), "questions": prof.get("n_questions"),
            "max_seconds": prof.get("max_seconds"), "max_tokens": prof.get("max_tokens"), "wall_s": prof.get("wall_s"),
            "experts": experts,
            "aggregators": {"k": agg.get("k"), "questions": agg.get("n_questions"), "best": agg.get("best"),
                            "majority_of_candidates": agg.get("majority_of_candidates"), "wall_s": agg.get("wall_s"),
                            "scores": {n: {k: s.get(k) for k in ("accuracy", "correct", "total", "unparsed", "time_s")}
                                       for n, s in (agg.get("scores") or {}).items()}} if agg else None}


def _sim_table(sim: dict) -> list[str]:
    lines = ["| validation questions | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
    for n, row in sim["accuracy"].items():
        lines.append(f"| {n} | " + " | ".join(f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in SHOWN) + " |")
    return lines


def _real_table(real: dict) -> list[str]:
    lines = ["| expert | accuracy | correct/total | unparsed | prompt tokens | completion tokens | time (s) | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for n, e in real["experts"].items():
        lines.append(f"| {n} | {e['accuracy']:.3f} | {e['correct']}/{e['total']} | {e['unparsed']} | {e['prompt_tokens']} "
                     f"| {e['completion_tokens']} | {e['time_s']:.1f} | {e['tokens_per_s']:.1f} |")
    agg = real.get("aggregators")
    if agg:
        lines += ["", f"Aggregator measurement: {agg['questions']} questions, k={agg['k']} candidates recruited by the "
                  f"skills arithmetic on this profile; majority vote of the candidates: {agg['majority_of_candidates']:.3f}.",
                  "", "| aggregator | accuracy | correct/total | unparsed |", "|---|---|---|---|"]
        for n, s in agg["scores"].items():
            lines.append(f"| {n}{' (chosen)' if n == agg['best'] else ''} | {s['accuracy']:.3f} | "
                         f"{s['correct']}/{s['total']} | {s['unparsed']} |")
    return lines


def write_markdown(res: dict, out_dir: Path) -> str:
    lines = ["# Recruiting benchmark (`coe bench recruit`)", "",
             f"Machine: {res['machine']}. Generated {res['created']} in {res['seconds']} s.", "",
             "## Simulation (synthetic experts with known per-skill accuracy; answers are random draws)", "",
             f"{res['simulation_note']}", ""]
    for world, sim in res["simulation"].items():
        lines += [f"### World: {world}", "",
                  f"Expected accuracy from the true skill accuracies: oracle-1 {sim['expected']['oracle-1']:.3f}, "
                  f"best single expert {sim['expected']['best single (true)']:.3f}. "
                  f"{sim['repeats']} worlds x {sim['n_test']} test questions per size; mean ± std over worlds.", ""]
        lines += _sim_table(sim)
        last = sim["accuracy"][str(sim["val_sizes"][-1])]
        lines += ["", f"Experts loaded per batch of 100 queries at {sim['val_sizes'][-1]} validation questions, k=3: "
                  f"{last['_experts_per_batch_of_100']['skills k=3 majority']:.2f} without pruning, "
                  f"{last['_experts_per_batch_of_100']['skills k=3 majority + pruning']:.2f} with batch-aware pruning "
                  f"(accuracy {last['skills k=3 majority']['mean']:.3f} -> {last['skills k=3 majority + pruning']['mean']:.3f}).", ""]
    real = res.get("real")
    lines += ["## Real run: `coe profile` on the default experts (SmolLM2-135M, CPU)", ""]
    if real:
        lines += [f"Profile file: `{real['profile']}`; {real['questions']} MMLU validation questions answered "
                  f"(asked for {real['limit']}, time budget {real['max_seconds']} s), max_tokens {real['max_tokens']}; "
                  f"wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in (real["wall_s"] or {}).items()) + ". "
                  f"Letters answered (None = unparseable): {real['answer_letters']}; gold letters: {real['gold_letters']}.", ""]
        lines += _real_table(real)
    else:
        lines.append("No profile file was found; run `coe profile --limit 200 --aggregators` first.")
    text = "\n".join(lines) + "\n"
    (out_dir / "recruit.md").write_text(text)
    return text


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = list(res["simulation"])
    fig, axes = plt.subplots(1, len(worlds), figsize=(7 * len(worlds), 5.6), sharey=True)
    for ax, world in zip(axes if len(worlds) > 1 else [axes], worlds):
        sim = res["simulation"][world]
        xs = sim["val_sizes"]
        for m in SHOWN:
            ys = [sim["accuracy"][str(n)][m]["mean"] for n in xs]
            style = "--" if m.startswith("oracle") else ":" if m in ("random", "single best") else "-"
            ax.plot(xs, ys, style, marker="o", ms=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("validation questions (profile size)")
        ax.set_title(f"SIMULATION: {world}", fontsize=10)
        ax.grid(alpha=0.3)
    (axes[0] if len(worlds) > 1 else axes).set_ylabel("test accuracy")
    handles, labels = (axes[0] if len(worlds) > 1 else axes).get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_docs(res: dict, path: Path) -> None:
    big = {w: s["accuracy"][str(s["val_sizes"][-1])] for w, s in res["simulation"].items()}
    n_big = next(iter(res["simulation"].values()))["val_sizes"][-1]
    cols = ["single best", "two-stage (sim)", "skills k=1 top", "skills k=3 majority", "skills k=5 majority",
            "oracle-1 (best true expert)"]
    lines = ["## Skill-based recruiting (Symbolic-MoE) and expert profiles", "",
             "The `skills` router tags a query with the top-3 skills of a shipped 124-skill vocabulary "
             "(`routers/skills_vocab.yaml`, by embedding similarity; or keywords from an LLM), scores each expert by its "
             "profile on those skills (local) times its overall profile (global, temperature 0.5), and recruits k experts "
             "(seeded sampling or top-k). With k > 1 every expert's answer and the aggregator's final answer come back "
             "in the response's `coe` object. Profiles come from real evaluation runs:", "",
             "```bash",
             "coe profile --limit 200 --aggregators        # every expert on MMLU validation -> artifacts/profile.json",
             "coe bench recruit                            # simulation + real-run summary -> evals/results/recruit.*",
             "```", "",
             "```python",
             "client.chat.completions.create(model=\"coe\", messages=[...],",
             "                               extra_body={\"coe\": {\"k\": 3, \"router\": \"skills\"}})  # k capped by COE_MAX_K",
             "```", "",
             f"Simulated accuracy with {n_big} validation questions (synthetic experts; see evals/results/recruit.md "
             "for every size and the plot):", "",
             "| world | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for w, row in big.items():
        lines.append(f"| {w} | " + " | ".join(f"{row[c]['mean']:.3f}" for c in cols) + " |")
    lines += ["", "Read with care: this is a simulation. In it, k=5 recruiting with a majority-vote aggregator beats "
              "the oracle single expert (oracle-1) from about 512-1024 validation questions on; k=1 with the paper's "
              "local x global weight trails the (simulated) two-stage policy, because the global term "
              "(temperature 0.5) pulls towards the broad generalist; leaving it out ('local only', the router's "
              "`global_temperature` option set high) does better with enough data."]
    for w, row in big.items():
        per = row["_experts_per_batch_of_100"]
        lines.append(f"Batch-aware pruning ({w}, k=3): {per['skills k=3 majority']:.2f} -> "
                     f"{per['skills k=3 majority + pruning']:.2f} experts loaded per batch of 100 queries, accuracy "
                     f"{row['skills k=3 majority']['mean']:.3f} -> {row['skills k=3 majority + pruning']['mean']:.3f}.")
    real = res.get("real")
    if real:
        lines += ["", f"Real run (`coe profile`, default experts, {real['questions']} MMLU validation questions on a "
                  f"shared 2-core CPU; tiny models, near or below chance: letters answered {real['answer_letters']} against gold "
                  f"{real['gold_letters']}; this run judges the plumbing, not the recruiting):", ""]
        lines += _real_table(real)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def bench_recruit(out_dir: Path, val_sizes: list[int], repeats: int, n_test: int, seed: int,
                  profile_path: Path | None, run_profile: bool, limit: int, max_seconds: float | None,
                  agg_limit: int, docs: Path, log=print, reuse_sim: bool = False) -> dict:
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (shared)",
                 "simulation_note": ("SIMULATION. Two-stage is a simulated policy (category classifier right 80% of the "
                                     "time, then the category's best expert on validation), not routers/two_stage. "
                                     "Skills use routers.skills and routers.skills_profile unchanged; the query's skills "
                                     "are seen through 25% noise. Aggregation is simulated: majority vote (ties to the "
                                     "best-profiled answer) or the best-profiled answer."),
                 "simulation": {}}
    previous = out_dir / "recruit.json"
    if reuse_sim and previous.is_file():
        old = json.loads(previous.read_text())["simulation"]
        same = all(w in old and old[w]["val_sizes"] == val_sizes and old[w]["repeats"] == repeats
                   and old[w]["n_test"] == n_test and old[w]["seed"] == seed for w in WORLDS)
        if same:
            log(f"reusing the simulation in {previous}")
            res["simulation"] = old
            res["simulation_note"] += " (Simulation reused from an earlier run with the same settings.)"
    for name, cfg in WORLDS.items():
        if name not in res["simulation"]:
            log(f"simulating world '{name}'")
            res["simulation"][name] = simulate(val_sizes, repeats=repeats, n_test=n_test, seed=seed, cfg=cfg)
    profile_path = profile_path or DEFAULT_PROFILE
    if run_profile:
        run_real_profile(profile_path, limit, max_seconds, agg_limit, log)
    if profile_path.is_file():
        res["real"] = real_summary(json.loads(profile_path.read_text()), profile_path)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / "recruit.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(res, out_dir)
    plot(res, out_dir / "recruit.png")
    write_docs(res, docs)
    return res


def recruit(
    out: Path = typer.Option(Path("evals/results"), help="where recruit.json/.md/.png go"),
    sizes: str = typer.Option("16,32,64,128,256,512,1024,2048", help="validation sizes of the simulation"),
    repeats: int = typer.Option(4, help="synthetic worlds per size"),
    n_test: int = typer.Option(600, help="test questions per world"),
    seed: int = typer.Option(0),
    profile: Path = typer.Option(None, help=f"real profile file to summarise (default {DEFAULT_PROFILE})"),
    run_profile: bool = typer.Option(False, "--run-profile", help="run `coe profile` now (slow on a CPU)"),
    limit: int = typer.Option(200, help="questions for --run-profile"),
    max_seconds: float = typer.Option(900, help="time budget of --run-profile's answers"),
    agg_limit: int = typer.Option(20, help="questions for --run-profile's aggregator measurement (0 = skip)"),
    docs: Path = typer.Option(Path("docs/recruit.md"), help="the README section"),
    reuse_sim: bool = typer.Option(False, "--reuse-sim", help="keep the simulation of an existing recruit.json with the same settings"),
) -> None:
    """Skill-based recruiting vs two-stage, single best, random and oracle (simulation), plus the real profile run."""
    res = bench_recruit(out, [int(x) for x in sizes.split(",")], repeats, n_test, seed, profile, run_profile, limit,
                        max_seconds, agg_limit, docs, log=typer.echo, reuse_sim=reuse_sim)
    typer.echo(f"wrote {out}/recruit.json, recruit.md, recruit.png and {docs} in {res['seconds']} s")
