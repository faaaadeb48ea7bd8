"""Would more validation data make the per-query router better? Its learning curve, from a stored quality run.

The per-query `quality` router (routers/outcomes.py) is fitted on random fractions of the run's validation
answers (several seeds a fraction) and judged on the run's test answers, at each cost weight. A curve still
rising at the full validation set says a larger validation run is worth its GPU time; a flat one says the
predictor, not the data, is the limit. No model runs; the queries are embedded with the service's encoder.

    python -m coe_evals.quality_learning_curve evals/results/composition-gpu/quality.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import typer

from routers.outcomes import Outcomes, QualityPredictor, choose, outcomes_from_records

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
WEIGHTS = (0.0, 0.05, 0.2)


def _take(out: Outcomes, rows: np.ndarray) -> Outcomes:
    return Outcomes([out.texts[i] for i in rows], [out.domains[i] for i in rows], out.experts, out.correct[rows],
                    out.compute[rows], out.confidence[rows])


def learning_curve(val: Outcomes, val_x: np.ndarray, test: Outcomes, test_x: np.ndarray,
                   fractions: tuple[float, ...] = FRACTIONS, seeds: int = 5,
                   weights: tuple[float, ...] = WEIGHTS) -> list[dict]:
    """Per fraction and cost weight: the test quality and compute (mean and spread over seeds) of the router
    fitted on that fraction of the validation items (the whole set once: it has no randomness)."""
    rows = []
    for fraction in fractions:
        size = max(2, round(fraction * len(val.texts)))
        runs = {w: [] for w in weights}
        for seed in range(1 if size == len(val.texts) else seeds):
            pick = np.sort(np.random.default_rng(seed).permutation(len(val.texts))[:size])
            predictor = QualityPredictor("logistic").fit(val_x[pick], _take(val, pick))
            quality, compute = predictor.quality(test_x), predictor.compute(test_x)
            for w in weights:
                chosen = choose(quality, compute, w, predictor.reference_compute)
                at = np.arange(len(chosen))
                runs[w].append((float(test.correct[at, chosen].mean()), float(test.compute[at, chosen].mean())))
        for w, got in runs.items():
            qs = [q for q, _ in got]
            rows.append({"fraction": fraction, "validation_items": size, "cost_weight": w, "seeds": len(got),
                         "quality": round(statistics.mean(qs), 4), "quality_min": round(min(qs), 4),
                         "quality_max": round(max(qs), 4), "compute": round(statistics.mean(c for _, c in got), 1)})
    return rows


def main(run: Path = typer.Argument(..., help="a quality JSON written by coe bench quality (with val_records)"),
         seeds: int = typer.Option(5, help="random subsets per fraction")) -> None:
    from coe.core.settings import get_settings
    from coe.embedder import make_embedder

    data = json.loads(run.read_text())
    params = {name: float(e["params_b"]) for name, e in data["experts"].items()}
    val, test = outcomes_from_records(data["val_records"], params), outcomes_from_records(data["test_records"], params)
    embedder = make_embedder(get_settings())
    val_x, test_x = np.asarray(embedder.encode(val.texts)), np.asarray(embedder.encode(test.texts))
    best = int(np.argmax(test.correct.mean(axis=0)))
    typer.echo(f"best single {test.experts[best]}: {test.correct[:, best].mean():.3f} at "
               f"{test.compute[:, best].mean():.0f} B·tok on {len(test.texts)} test items")
    for row in learning_curve(val, val_x, test, test_x, seeds=seeds):
        typer.echo(f"{row['validation_items']:>5} validation items, w={row['cost_weight']:g}: {row['quality']:.3f} "
                   f"({row['quality_min']:.3f}-{row['quality_max']:.3f}, {row['seeds']} seeds) at {row['compute']:.0f}")


if __name__ == "__main__":
    typer.run(main)
