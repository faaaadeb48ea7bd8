"""Stage 2's score table fitted on a profile's answers: cells grouped by what stage 1 predicts, small cells shrunk.

A profile (`coe profile`, `coe bench quality`) keeps one record per validation item: its gold label
(`subcategory`), its group (`category`: the domain, mmlu / humaneval, or MMLU's STEM / humanities ...),
every expert's answer against `gold`, and, when a two-stage artifact existed at profiling time, the label
its stage 1 predicted for the item (`predicted`). Stage 2 is asked "stage 1 said X: which expert?", so a
cell holds the items stage 1 *called* X: HumanEval requests that stage 1 calls `computer science` count
for `computer science`, not for the `coding` label they were written under.

Cells hold a few items each, so each is shrunk toward its parent (empirical Bayes; prior strengths m for
the cells, k for the groups):

    overall[e]    = (C[e] + 1) / (N + 2)
    group[e, g]   = (C[e, g] + k * overall[e]) / (N[g] + k)
    prior[e, c]   = sum over g of (N[c, g] / N[c]) * group[e, g]      (the cell's own mix of groups)
    S[e, c]       = (C[e, c] + m * prior[e, c]) / (N[c] + m)

m and k are chosen on the records themselves: the pair of PRIOR_GRID values with the highest
leave-one-out log-likelihood of every expert's right/wrong on every item (ties: the larger, the more
cautious). A profile of counts only (no records) is shrunk toward each expert's overall accuracy with
m = DEFAULT_PRIOR_STRENGTH. A cell with no items is left to the declared scores (stage2.declared_scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PRIOR_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
DEFAULT_PRIOR_STRENGTH = 8.0


@dataclass
class Fit:
    """Measured scores [expert, label] (NaN: not measured there) and how they were made."""

    experts: list[str]  # the measured experts, rows of `scores`
    scores: np.ndarray
    items: np.ndarray  # items per label (cell size)
    grouping: str  # "predicted" | "gold"
    prior_strength: float  # m, toward the cell's groups (or the expert's overall accuracy)
    group_strength: float | None  # k, groups toward the overall accuracy (None: no groups)
    chosen_by: str
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        how = "stage-1 predicted categories" if self.grouping == "predicted" else "gold labels"
        k = f", k={self.group_strength:g}" if self.group_strength is not None else ""
        return f"cells by {how}, shrinkage m={self.prior_strength:g}{k} ({self.chosen_by})"


@dataclass
class Counts:
    """Sufficient statistics of records: right answers per expert overall, per group and per cell."""

    n: float
    right: np.ndarray  # [E]
    n_group: np.ndarray  # [G]
    right_group: np.ndarray  # [G, E]
    n_cell_group: np.ndarray  # [L + 1, G]; row L: items in no label of the table
    right_cell: np.ndarray  # [L + 1, E]

    @classmethod
    def of(cls, y: np.ndarray, cell: np.ndarray, group: np.ndarray, n_labels: int, n_groups: int) -> "Counts":
        ncg = np.zeros((n_labels + 1, n_groups))
        np.add.at(ncg, (cell, group), 1)
        rg = np.zeros((n_groups, y.shape[1]))
        np.add.at(rg, group, y)
        rc = np.zeros((n_labels + 1, y.shape[1]))
        np.add.at(rc, cell, y)
        return cls(float(len(y)), y.sum(0).astype(float), ncg.sum(0), rg, ncg, rc)

    def cell_scores(self, m: float, k: float, cells: np.ndarray | slice | int = slice(None)) -> np.ndarray:
        """S[cells, expert] by the formula above; NaN for a cell without items."""
        overall = (self.right + 1) / (self.n + 2)
        group = (self.right_group + k * overall) / (self.n_group[:, None] + k)
        n_cg = self.n_cell_group[cells]
        n_c = n_cg.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            prior = (n_cg / n_c[..., None]) @ group
            return (self.right_cell[cells] + m * prior) / (n_c[..., None] + m)


def loo_log_likelihood(counts: Counts, y: np.ndarray, cell: np.ndarray, group: np.ndarray, m: float, k: float,
                       n_labels: int) -> float:
    """Sum over items in a label (with another item beside them) and over experts of log P(right/wrong),
    each item scored by the formula with itself left out of every count: all items at once."""
    keep = (cell < n_labels) & (counts.n_cell_group[cell].sum(-1) > 1)
    y, cell, group = y[keep], cell[keep], group[keep]
    if len(y) == 0:
        return 0.0
    rows = np.arange(len(y))
    overall = (counts.right - y + 1) / (counts.n - 1 + 2)  # [R, E]
    right_g = np.broadcast_to(counts.right_group, (len(y), *counts.right_group.shape)).copy()  # [R, G, E]
    right_g[rows, group] -= y
    n_g = np.broadcast_to(counts.n_group, (len(y), len(counts.n_group))).copy()  # [R, G]
    n_g[rows, group] -= 1
    grp = (right_g + k * overall[:, None, :]) / (n_g[..., None] + k)
    n_cg = counts.n_cell_group[cell].copy()  # [R, G]
    n_cg[rows, group] -= 1
    n_c = n_cg.sum(-1)
    prior = np.einsum("rg,rge->re", n_cg, grp) / n_c[:, None]
    s = (counts.right_cell[cell] - y + m * prior) / (n_c[:, None] + m)
    return float(np.sum(y * np.log(s) + (1 - y) * np.log1p(-s)))


def choose_strengths(y: np.ndarray, cell: np.ndarray, group: np.ndarray, n_labels: int,
                     n_groups: int) -> tuple[float, float]:
    """(m, k) of PRIOR_GRID x PRIOR_GRID with the highest leave-one-out log-likelihood."""
    counts = Counts.of(y, cell, group, n_labels, n_groups)
    grid = [(m, k) for m in PRIOR_GRID for k in (PRIOR_GRID if n_groups > 1 else PRIOR_GRID[-1:])]
    ll = {mk: loo_log_likelihood(counts, y, cell, group, *mk, n_labels) for mk in grid}
    return max(grid, key=lambda mk: (round(ll[mk], 9), mk))


def is_right(record: dict, expert: str) -> bool:
    """As routers/skills_profile.build_profile counts: an answer equal to gold (None is wrong)."""
    answer = record["answers"].get(expert)
    return answer is not None and answer == record["gold"]


def _grouping(profile: dict, records: list[dict], artifact_version: str | None) -> tuple[str, list[str]]:
    """'predicted' when the profile was grouped by the serving artifact's stage 1, else 'gold' and why not."""
    info = profile.get("stage2") or {}
    if info.get("grouping") != "predicted" or not all(r.get("predicted") for r in records):
        why = info.get("reason") or "the profile has no stage-1 predictions"
        return "gold", [f"stage 2 cells by gold labels: {why}"]
    if artifact_version is None:
        return "gold", ["stage 2 cells by gold labels: this router's stage 1 is not the one the profile was grouped by"]
    if info.get("artifact") != artifact_version:
        return "gold", [f"stage 2 cells by gold labels: the profile was grouped by the predictions of artifact "
                        f"{info.get('artifact')}, this router serves {artifact_version}; rerun coe profile"]
    return "predicted", []


def fit_records(profile: dict, experts: list[str], labels: list[str], parents: dict | None,
                artifact_version: str | None, prior_strength: float | None) -> Fit:
    records = profile["records"]
    measured = [e for e in experts if e in profile["experts"] and all(e in r["answers"] for r in records)]
    grouping, notes = _grouping(profile, records, artifact_version)
    index = {lab: j for j, lab in enumerate(labels)}
    index.update({m: index[p] for p, members in (parents or {}).items() if p in index for m in members if m not in index})
    key = "predicted" if grouping == "predicted" else "subcategory"
    cell = np.array([index.get(r.get(key) or "", len(labels)) for r in records], dtype=int)
    groups = sorted({str(r.get("category") or "") for r in records})
    group = np.array([groups.index(str(r.get("category") or "")) for r in records], dtype=int)
    y = np.array([[is_right(r, e) for e in measured] for r in records], dtype=float).reshape(len(records), len(measured))
    m, k = choose_strengths(y, cell, group, len(labels), len(groups))
    chosen_by = "chosen by leave-one-out likelihood"
    if prior_strength is not None:
        m, chosen_by = float(prior_strength), "m set by option, k chosen by leave-one-out likelihood"
    counts = Counts.of(y, cell, group, len(labels), len(groups))
    scores = counts.cell_scores(m, k)[: len(labels)].T
    return Fit(measured, scores, counts.n_cell_group.sum(1)[: len(labels)], grouping, m,
               k if len(groups) > 1 else None, chosen_by, notes)


def fit_counts(profile: dict, experts: list[str], labels: list[str], parents: dict | None,
               prior_strength: float | None) -> Fit:
    """A profile of per-category counts only: each expert's cells shrunk toward its own overall accuracy."""
    m = DEFAULT_PRIOR_STRENGTH if prior_strength is None else float(prior_strength)
    measured = [e for e in experts if (profile["experts"].get(e) or {}).get("categories")]
    scores = np.full((len(measured), len(labels)), np.nan)
    items = np.zeros(len(labels))
    for i, name in enumerate(measured):
        cats = profile["experts"][name]["categories"]
        right = sum(int(c["correct"]) for c in cats.values())
        total = sum(int(c["total"]) for c in cats.values())
        overall = (right + 1) / (total + 2)
        for j, label in enumerate(labels):
            keys = [label] + list((parents or {}).get(label, []))
            c = sum(int(cats[k]["correct"]) for k in keys if k in cats)
            n = sum(int(cats[k]["total"]) for k in keys if k in cats)
            if n > 0:
                scores[i, j] = (c + m * overall) / (n + m)
                items[j] = max(items[j], n)
    chosen_by = "default; no per-item records to choose it on" if prior_strength is None else "set by option"
    return Fit(measured, scores, items, "gold", m, None, chosen_by,
               ["stage 2 cells by gold labels: the profile has counts only"])


def fit_profile(profile: dict, experts: list[str], labels: list[str], parents: dict | None = None,
                artifact_version: str | None = None, prior_strength: float | None = None) -> Fit:
    """The measured part of the score table. `artifact_version`: the two-stage artifact whose stage 1 asks
    (None for another stage 1: the gold labels are used)."""
    if profile.get("records"):
        return fit_records(profile, experts, labels, parents, artifact_version, prior_strength)
    return fit_counts(profile, experts, labels, parents, prior_strength)
