"""The best a router that knows each item's domain could do, from a stored quality run's per-item answers.

For every assignment of one expert per domain (MMLU, HumanEval), quality and compute (active parameters x tokens)
over the run's held-out items, against the best single expert. It bounds what any query-level router can reach
on that workload when each expert is uniform within a domain, as the small ones are on MMLU (near chance):
if no assignment reaches a goal, routing cannot reach it without knowing which answers will be right.

    python -m coe_evals.quality_domain_split evals/results/quality-gpu-large.json
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import typer


def domain_split(run: dict) -> list[dict]:
    """Each per-domain assignment's quality and compute, as shares of the best single expert's; best first."""
    params = {name: float(e["params_b"]) for name, e in run["experts"].items()}
    records = run["test_records"]
    domains = sorted({r["domain"] for r in records})

    def totals(pick: dict[str, str]) -> tuple[float, float]:
        right = cost = 0.0
        for r in records:
            expert = pick[r["domain"]]
            answer = r["answers"][expert]
            right += bool(answer["correct"])
            cost += params[expert] * (answer["prompt_tokens"] + answer["completion_tokens"])
        return right / len(records), cost / len(records)

    singles = {e: totals({d: e for d in domains}) for e in params}
    best = max(singles, key=lambda e: singles[e][0])
    q_best, c_best = singles[best]
    rows = []
    for experts in itertools.product(params, repeat=len(domains)):
        pick = dict(zip(domains, experts))
        q, c = totals(pick)
        rows.append({"assignment": pick, "quality": round(q, 4), "compute": round(c, 1),
                     "quality_share": round(q / q_best, 4), "compute_share": round(c / c_best, 4), "best_single": best})
    return sorted(rows, key=lambda r: (-r["quality"], r["compute"]))


def main(run: Path = typer.Argument(..., help="a quality JSON written by coe bench quality"),
         quality_share: float = typer.Option(0.95, help="the goal's share of the best single expert's quality"),
         compute_share: float = typer.Option(0.70, help="the goal's share of its compute")) -> None:
    """Print every assignment, and whether any meets the goal."""
    rows = domain_split(json.loads(run.read_text()))
    for r in rows:
        typer.echo(f"{json.dumps(r['assignment'])}: quality {r['quality']:.3f} ({r['quality_share']:.1%}), "
                   f"compute {r['compute']:.0f} ({r['compute_share']:.1%})")
    met = [r for r in rows if r["quality_share"] >= quality_share and r["compute_share"] <= compute_share]
    typer.echo(f"assignments with >= {quality_share:.0%} of {rows[0]['best_single']}'s quality at <= {compute_share:.0%} "
               f"of its compute: {len(met)}")


if __name__ == "__main__":
    typer.run(main)
