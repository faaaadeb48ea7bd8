"""What a router that recognises each item's group could do, from a stored quality run's per-item answers.

A group is the finest label a router could hope to read off a query: the MMLU category, the maths problem's
template, HumanEval as one. Two routers pick one (model, strategy) pair per group, at each cost weight
(quality minus weight x compute relative to the best single pair's):
  validation  the pair that did best on the group's validation items: what perfect group recognition buys
              without knowing the test answers (a group with no validation items gets the best single pair);
  hindsight   the pair that did best on the group's own test items: an upper bound for any router that sees
              groups only, since it chooses with the answers it is judged on.
If the hindsight router misses a goal, no group-level router can meet it; where validation falls short of
the per-query router, the gap that remains is within groups (which item of a template a model gets right).

    python -m coe_evals.quality_group_bound evals/results/composition-gpu/quality.json
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import typer

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)


def group_of(record: dict) -> str:
    if record["domain"] == "maths":
        return "maths:" + record["id"].split(":")[1]
    if record["domain"] == "mmlu":
        return "mmlu:" + record["label"]
    return record["domain"]


def group_bound(run: dict, weights: tuple[float, ...] = WEIGHTS) -> dict:
    """Per weight, the validation-chosen and the hindsight group router's test quality and compute, with the
    best single pair's, all over the run's test items."""
    params = {name: float(e["params_b"]) for name, e in run["experts"].items()}
    pairs = [e for e in params if all(e in r["answers"] for r in run["test_records"] + run["val_records"])]

    def cost(r: dict, e: str) -> float:
        a = r["answers"][e]
        return params[e] * (a["prompt_tokens"] + a["completion_tokens"])

    test, val = defaultdict(list), defaultdict(list)
    for r in run["test_records"]:
        test[group_of(r)].append(r)
    for r in run["val_records"]:
        val[group_of(r)].append(r)
    n = len(run["test_records"])
    singles = {e: (sum(r["answers"][e]["correct"] for r in run["test_records"]) / n,
                   sum(cost(r, e) for r in run["test_records"]) / n) for e in pairs}
    best = max(singles, key=lambda e: (singles[e][0], -singles[e][1]))
    val_singles = {e: sum(r["answers"][e]["correct"] for r in run["val_records"]) for e in pairs}
    fallback = max(pairs, key=lambda e: val_singles[e])
    reference = singles[best][1]

    def pick(records: list[dict], w: float) -> str:
        return max(pairs, key=lambda e: (sum(r["answers"][e]["correct"] for r in records)
                                         - w * sum(cost(r, e) for r in records) / reference, -params[e]))

    rows = []
    for w in weights:
        row = {"cost_weight": w}
        for kind in ("validation", "hindsight"):
            right = spent = 0.0
            for g, records in test.items():
                source = records if kind == "hindsight" else val.get(g)
                e = pick(source, w) if source else fallback
                right += sum(r["answers"][e]["correct"] for r in records)
                spent += sum(cost(r, e) for r in records)
            row[kind] = {"quality": round(right / n, 4), "compute": round(spent / n, 1)}
        rows.append(row)
    return {"groups": len(test), "best_single": {"expert": best, "quality": round(singles[best][0], 4),
                                                 "compute": round(reference, 1)}, "rows": rows}


def main(run: Path = typer.Argument(..., help="a quality JSON written by coe bench quality (with val_records)")) -> None:
    out = group_bound(json.loads(run.read_text()))
    b = out["best_single"]
    typer.echo(f"{out['groups']} groups; best single {b['expert']}: {b['quality']:.3f} at {b['compute']:.0f} B·tok")
    for row in out["rows"]:
        v, h = row["validation"], row["hindsight"]
        typer.echo(f"w={row['cost_weight']:g}: validation-chosen {v['quality']:.3f} at {v['compute']:.0f}; "
                   f"hindsight {h['quality']:.3f} at {h['compute']:.0f}")


if __name__ == "__main__":
    typer.run(main)
