"""SIMULATION of skill-based recruiting: synthetic experts, synthetic questions, random draws.

Real tiny models are near chance on MMLU, so the recruiting logic is judged here, on a
world where the truth is known:
  - skills fall in categories; each synthetic expert has a known accuracy per skill
    (specialists strong on one or two categories, a generalist, a weak model);
  - a question has 1-3 skills (mostly from one category); an expert answers it correctly
    with the mean of its accuracies on those skills, else picks a wrong letter (half the
    time the question's one "tempting" distractor, so wrong answers agree as they do);
  - the router sees each skill through noise (replaced by a random skill with prob
    `skill_noise`), as embedding-based skill tagging would.
Validation sets of growing size give profiles through the project's own code
(routers.skills_profile.build_profile / skill_matrix) and recruit through routers.skills
(global_weights, recruit_weights, choose, prune_batch). Compared on one test set:
random expert, single best (by validation accuracy), two-stage (SIMULATED policy: a
classifier right with prob `classifier_acc`, then the best validation expert of the
category), skills k=1/3/5 with a simulated aggregator (majority vote, ties to the
best-profiled answer; or simply the best-profiled answer), and two oracles: the expert
with the highest true accuracy on the question (oracle-1, the best any k=1 router can
do in expectation) and "any expert right" (an upper bound no aggregator reaches).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from routers.skills import choose, global_weights, local_scores, prune_batch, recruit_weights
from routers.skills_profile import build_profile, skill_matrix

LETTERS = "ABCD"


@dataclass
class WorldConfig:
    n_categories: int = 8
    skills_per_category: int = 6
    n_specialists: int = 6
    cross_specialists: int = 0  # of the specialists, how many are strong on a skill set spanning categories
    cross_skills: int = 10
    specialist_acc: float = 0.82
    off_acc: float = 0.38
    generalist_acc: float = 0.58
    weak_acc: float = 0.33
    skill_jitter: float = 0.08
    skill_noise: float = 0.25
    classifier_acc: float = 0.8
    distractor_share: float = 0.5


@dataclass
class World:
    cfg: WorldConfig
    acc: np.ndarray  # [experts x skills] true accuracy
    skill_category: np.ndarray
    names: list[str]
    skill_names: list[str]

    @classmethod
    def make(cls, cfg: WorldConfig, rng: np.random.Generator) -> "World":
        n_skills = cfg.n_categories * cfg.skills_per_category
        skill_category = np.repeat(np.arange(cfg.n_categories), cfg.skills_per_category)
        rows, names = [], []
        for i in range(cfg.n_specialists):
            if i < cfg.cross_specialists:
                picked = rng.choice(n_skills, cfg.cross_skills, replace=False)
                rows.append(np.where(np.isin(np.arange(n_skills), picked), cfg.specialist_acc, cfg.off_acc))
                names.append(f"spec{i}-cross")
                continue
            strong = {i % cfg.n_categories, (i + cfg.n_specialists) % cfg.n_categories}
            if rng.random() < 0.5:
                strong = {i % cfg.n_categories}
            base = np.where(np.isin(skill_category, list(strong)), cfg.specialist_acc, cfg.off_acc)
            rows.append(base)
            names.append(f"spec{i}-" + "+".join(f"c{c}" for c in sorted(strong)))
        rows.append(np.full(n_skills, cfg.generalist_acc))
        names.append("generalist")
        rows.append(np.full(n_skills, cfg.weak_acc))
        names.append("weak")
        acc = np.clip(np.stack(rows) + rng.normal(0, cfg.skill_jitter, (len(rows), n_skills)), 0.26, 0.97)
        return cls(cfg, acc, skill_category, names, [f"s{j}" for j in range(n_skills)])

    def questions(self, n: int, rng: np.random.Generator) -> list[dict]:
        cfg, out = self.cfg, []
        n_skills = len(self.skill_names)
        for _ in range(n):
            cat = int(rng.integers(cfg.n_categories))
            own = np.flatnonzero(self.skill_category == cat)
            skills = [int(rng.choice(own))]
            for _ in range(int(rng.integers(0, 3))):
                s = int(rng.choice(own)) if rng.random() < 0.7 else int(rng.integers(n_skills))
                if s not in skills:
                    skills.append(s)
            seen = [s if rng.random() >= cfg.skill_noise else int(rng.integers(n_skills)) for s in skills]
            gold = int(rng.integers(4))
            distractor = int(rng.choice([x for x in range(4) if x != gold]))
            p = self.acc[:, skills].mean(axis=1)
            out.append({"category": cat, "skills": skills, "seen": sorted(set(seen)), "gold": gold,
                        "distractor": distractor, "p": p})
        return out

    def answer(self, q: dict, expert: int, rng: np.random.Generator) -> int:
        if rng.random() < q["p"][expert]:
            return q["gold"]
        if rng.random() < self.cfg.distractor_share:
            return q["distractor"]
        return int(rng.choice([x for x in range(4) if x != q["gold"]]))


def profile_from(world: World, val: list[dict], rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """One answer per expert per validation question -> the project's profile -> per-category accuracy."""
    records = []
    for i, q in enumerate(val):
        answers = {name: LETTERS[world.answer(q, e, rng)] for e, name in enumerate(world.names)}
        records.append({"id": str(i), "subcategory": f"c{q['category']}", "skills": [world.skill_names[s] for s in q["seen"]],
                        "gold": LETTERS[q["gold"]], "answers": answers})
    profile = build_profile(records, world.names)
    cats = world.cfg.n_categories
    cat_acc = np.full((len(world.names), cats), np.nan)
    for e, name in enumerate(world.names):
        for c, cell in profile["experts"][name]["categories"].items():
            cat_acc[e, int(c[1:])] = cell["correct"] / cell["total"]
    return profile, cat_acc


def aggregate(letters: list[int], weights: list[float], how: str) -> int:
    """Simulated aggregator: 'majority' (ties to the best-profiled answer) or 'best' (the best-profiled answer)."""
    best = letters[int(np.argmax(weights))]
    if how == "best":
        return best
    counts = Counter(letters)
    top = max(counts.values())
    tied = [x for x, c in counts.items() if c == top]
    return best if best in tied else tied[0]


METHODS = ["random", "single best", "two-stage (sim)", "skills k=1 top", "skills k=1 top, local only", "skills k=1 sample",
           "skills k=3 majority", "skills k=3 best-profiled", "skills k=3 majority + pruning",
           "skills k=5 majority", "skills k=5 best-profiled", "oracle-1 (best true expert)", "oracle-any (upper bound)"]


def evaluate(world: World, profile: dict, cat_acc: np.ndarray, test: list[dict], rng: np.random.Generator,
             batch: int = 100) -> tuple[dict[str, float], dict[str, float]]:
    names = world.names
    m = skill_matrix(profile, names, world.skill_names)
    g = global_weights(m.sum(axis=1))
    flat = np.ones(len(names)) / len(names)  # global competence left out (T -> infinity)
    totals = np.array([profile["experts"][n]["accuracy"] for n in names])
    single = int(np.argmax(totals))
    hits = Counter()
    distinct = {"skills k=3 majority": [], "skills k=3 majority + pruning": []}
    for start in range(0, len(test), batch):
        chunk = test[start:start + batch]
        ws = [recruit_weights(local_scores(m, q["seen"]), g) for q in chunk]
        k3 = [choose(w, 3, "sample", rng) for w in ws]
        k3p = prune_batch(k3, ws, rng)
        distinct["skills k=3 majority"].append(len({i for r in k3 for i in r}))
        distinct["skills k=3 majority + pruning"].append(len({i for r in k3p for i in r}))
        for q, w, r3, r3p in zip(chunk, ws, k3, k3p):
            gold = q["gold"]

            def ok(e: int) -> bool:
                return world.answer(q, e, rng) == gold

            def group(row: list[int], how: str) -> bool:
                letters = [world.answer(q, e, rng) for e in row]
                return aggregate(letters, [w[e] for e in row], how) == gold

            hits["random"] += ok(int(rng.integers(len(names))))
            hits["single best"] += ok(single)
            cat = q["category"] if rng.random() < world.cfg.classifier_acc else int(rng.integers(world.cfg.n_categories))
            col = cat_acc[:, cat]
            hits["two-stage (sim)"] += ok(int(np.nanargmax(col)) if not np.isnan(col).all() else single)
            hits["skills k=1 top"] += ok(choose(w, 1, "top", rng)[0])
            hits["skills k=1 top, local only"] += ok(choose(recruit_weights(local_scores(m, q["seen"]), flat), 1, "top", rng)[0])
            hits["skills k=1 sample"] += ok(choose(w, 1, "sample", rng)[0])
            hits["skills k=3 majority"] += group(r3, "majority")
            hits["skills k=3 best-profiled"] += group(r3, "best")
            hits["skills k=3 majority + pruning"] += group(r3p, "majority")
            r5 = choose(w, 5, "sample", rng)
            hits["skills k=5 majority"] += group(r5, "majority")
            hits["skills k=5 best-profiled"] += group(r5, "best")
            hits["oracle-1 (best true expert)"] += ok(int(np.argmax(q["p"])))
            hits["oracle-any (upper bound)"] += any(ok(e) for e in range(len(names)))
    acc = {k: hits[k] / len(test) for k in METHODS}
    experts_per_batch = {k: float(np.mean(v)) for k, v in distinct.items()}
    return acc, experts_per_batch


def simulate(val_sizes: list[int], repeats: int = 5, n_test: int = 1000, seed: int = 0,
             cfg: WorldConfig | None = None) -> dict:
    """Accuracy of every method per validation size, mean and std over `repeats` worlds."""
    cfg = cfg or WorldConfig()
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in val_sizes}
    loads: dict[int, list[dict[str, float]]] = {n: [] for n in val_sizes}
    expected = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        world = World.make(cfg, rng)
        test = world.questions(n_test, rng)
        pool = world.questions(max(val_sizes), rng)
        expected.append({"oracle-1": float(np.mean([q["p"].max() for q in test])),
                         "best single (true)": float(np.max(np.mean([q["p"] for q in test], axis=0)))})
        for n in val_sizes:
            prof_rng = np.random.default_rng([seed, r, n, 1])
            profile, cat_acc = profile_from(world, pool[:n], prof_rng)
            acc, per_batch = evaluate(world, profile, cat_acc, test, np.random.default_rng([seed, r, n, 2]))
            runs[n].append(acc)
            loads[n].append(per_batch)
    table = {}
    for n in val_sizes:
        table[str(n)] = {k: {"mean": round(float(np.mean([a[k] for a in runs[n]])), 4),
                             "std": round(float(np.std([a[k] for a in runs[n]])), 4)} for k in METHODS}
        table[str(n)]["_experts_per_batch_of_100"] = {
            k: round(float(np.mean([x[k] for x in loads[n]])), 2) for k in loads[n][0]}
    return {"kind": "simulation", "config": cfg.__dict__, "val_sizes": val_sizes, "repeats": repeats,
            "n_test": n_test, "seed": seed, "n_experts": cfg.n_specialists + 2,
            "expected": {k: round(float(np.mean([e[k] for e in expected])), 4) for k in expected[0]},
            "accuracy": table}
