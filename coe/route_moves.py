"""Which validation items a newly trained router sends to another route than the previous artifact did.

Adding or rewording a route must not quietly take questions that belonged to an older one (a maths word problem
that reaches `law`, say). Each artifact keeps its held-out validation decisions (routers/two_stage/artifact.py:
MMLU's validation split and the out-of-fold requests a data file marks tune/validation, each decided by a model
that did not train on it; never a test row). `coe train` compares the new ones with those of the artifact it
replaces, item by item (by text), and reports per route of the previous artifact how many items now go elsewhere
and where; a route that loses more than a threshold share is warned about. Decisions are top routes, before the
fallback threshold.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

WARN_SHARE = 0.05
WARN_MIN_ITEMS = 3  # fewer moved items than this is noise on a small route, whatever the share


@dataclass(frozen=True)
class RouteMoves:
    """The items the previous artifact sent to `route`, and those of them the new router sends elsewhere."""

    route: str
    held: int
    moved_to: dict[str, int] = field(default_factory=dict)
    right_before: int = 0  # moved items whose label was `route` (the old decision was right)
    right_after: int = 0  # moved items the new decision gets right

    @property
    def moved(self) -> int:
        return sum(self.moved_to.values())

    @property
    def share(self) -> float:
        return self.moved / self.held if self.held else 0.0

    def as_json(self) -> dict:
        return {"held": self.held, "moved": self.moved, "share": round(self.share, 4), "moved_to": self.moved_to,
                "right_before": self.right_before, "right_after": self.right_after}


def previous_decisions(artifacts_dir: Path) -> tuple[dict[str, str] | None, str]:
    """The previous artifact's held-out validation decisions (text_key -> route), or None and why there are none."""
    from routers.two_stage.artifact import ArtifactError, resolve_version, validation_routes

    try:
        path = resolve_version(artifacts_dir)
    except ArtifactError as exc:
        return None, f"no previous artifact to compare with ({exc})"
    decisions = validation_routes(path)
    if decisions is None:
        return None, f"{path.name} kept no validation decisions (trained before they were kept)"
    return decisions, path.name


def matched(previous: dict[str, str], texts: list[str], routes: list[str], labels: list[str]):
    """(before, after, labels) over the items both artifacts decided."""
    from routers.two_stage.artifact import text_key

    keys = [text_key(t) for t in texts]
    both = [i for i, k in enumerate(keys) if k in previous]
    return [previous[keys[i]] for i in both], [routes[i] for i in both], [labels[i] for i in both]


def compare(before: list[str], after: list[str], labels: list[str]) -> list[RouteMoves]:
    """Per route of `before`, the items `after` routes elsewhere; routes that lost most come first."""
    held = Counter(before)
    moved: dict[str, Counter] = {route: Counter() for route in held}
    right_before, right_after = Counter(), Counter()
    for old, new, truth in zip(before, after, labels):
        if old != new:
            moved[old][new] += 1
            right_before[old] += old == truth
            right_after[old] += new == truth
    out = [RouteMoves(route, held[route], dict(moved[route].most_common()), right_before[route], right_after[route])
           for route in held]
    return sorted(out, key=lambda m: (-m.share, m.route))


def warnings(moves: list[RouteMoves], share: float = WARN_SHARE, min_items: int = WARN_MIN_ITEMS) -> list[str]:
    """One line per route that lost more than `share` of its items (and at least `min_items`)."""
    return [f"route '{m.route}': {m.moved} of its {m.held} validation items ({m.share:.0%}) now go to "
            + ", ".join(f"{to} ({n})" for to, n in m.moved_to.items())
            + f"; {m.right_before} of them were right before, {m.right_after} are right now"
            for m in moves if m.share > share and m.moved >= min_items]
