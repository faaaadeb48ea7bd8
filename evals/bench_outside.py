"""The service's router on prompts the project did not write, for `coe bench routing`: Arena-Hard v2.0's real user
prompts (coe/data/arena_hard.py, scored through the label -> routes file evals/data/arena_hard_routes.yaml) and the
maths word problems of coe/data/maths.py, each sent to a maths route or not.

Both are reported on validation and test; nothing trains on either, and routes.yaml may only be judged on validation.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

ARENA_ROUTES = Path(__file__).resolve().parent / "data" / "arena_hard_routes.yaml"
MATHS_ROUTES = ("math", "math_word_problems")


def arena_routes(path: Path = ARENA_ROUTES) -> dict[str, list[str]]:
    import yaml

    return {label: list(routes) for label, routes in yaml.safe_load(path.read_text()).items()}


def _routed(router, embed, texts: list[str]) -> list[str]:
    return [d.category for d in router.route(texts, embed(texts))]


def arena_metrics(router, embed, cache_dir: Path, mapping: dict[str, list[str]] | None = None) -> dict:
    """Per split: accuracy over all prompts and over the English ones, per label, and where the misses went."""
    from coe.data.arena_hard import load_arena_hard

    mapping = mapping or arena_routes()
    out = {}
    for split in ("validation", "test"):
        prompts = load_arena_hard(cache_dir, split)
        pred = _routed(router, embed, [p.text for p in prompts])
        right = np.array([r in mapping[p.label] for p, r in zip(prompts, pred)])
        english = np.array([p.english for p in prompts])
        labels = sorted({p.label for p in prompts})
        out[split] = {
            "n": len(prompts), "accuracy": round(float(right.mean()), 4),
            "n_english": int(english.sum()), "accuracy_english": round(float(right[english].mean()), 4),
            "per_label": {lab: round(float(right[[p.label == lab for p in prompts]].mean()), 4) for lab in labels},
            "missed_as": {lab: dict(Counter(r for p, r, ok in zip(prompts, pred, right) if p.label == lab and not ok)
                                    .most_common(5)) for lab in labels},
        }
    return out


def maths_metrics(router, embed, n: int) -> dict:
    """Per split: the share of the first `n` generated maths word problems sent to a maths route, and where the rest went."""
    from coe.data.maths import load_maths

    out = {}
    for split in ("validation", "test"):
        problems = load_maths(split, n)
        pred = _routed(router, embed, [p.question for p in problems])
        right = [r in MATHS_ROUTES for r in pred]
        out[split] = {"n": n, "to_maths_route": round(float(np.mean(right)), 4),
                      "missed_as": dict(Counter(r for r, ok in zip(pred, right) if not ok).most_common(5))}
    return out
