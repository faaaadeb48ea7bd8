"""Expert profiles (Symbolic-MoE): per-question correctness turned into per-category and per-skill counts.

A profile file is written by `coe profile` and read by the skills router (per-skill
counts) and by the two-stage router (per-category counts, its score table S[e][c]).
Shape, with the agreed core first and our fields beside it:

    {"version": 1, "data": "mmlu", "split": "validation", "n_questions": 200, ...,
     "experts": {name: {"categories": {subcategory: {"correct": int, "total": int}},
                        "groups": {mmlu_category: {...}}, "subjects": {subject: {...}},
                        "skills": {skill: {"correct": int, "total": int}},
                        "correct": int, "total": int, "unparsed": int, "accuracy": float,
                        "prompt_tokens": int, "completion_tokens": int, "time_s": float, ...}},
     "aggregators": {"k": 3, "scores": {name: {"correct", "total", "unparsed", "accuracy"}}, "best": name},
     "records": [{"id", "subject", "subcategory", "category", "skills", "gold", "answers": {expert: letter|null}}]}

A record's unparseable answer (letter null) counts as wrong and also as `unparsed`.
Skill profile values follow the paper: +1 per (question, skill) answered correctly,
-1 otherwise, i.e. 2 * correct - total.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

PROFILE_VERSION = 1
PROFILE_FILE = "profile.json"


def _bump(table: dict, key: str, correct: bool) -> None:
    cell = table.setdefault(key, {"correct": 0, "total": 0})
    cell["total"] += 1
    cell["correct"] += int(correct)


def build_profile(records: Iterable[dict], experts: list[str], meta: dict | None = None) -> dict:
    """Count, per expert, correct/total per category, MMLU group, subject and skill, and overall."""
    out: dict[str, dict] = {
        name: {"categories": {}, "groups": {}, "subjects": {}, "skills": {},
               "correct": 0, "total": 0, "unparsed": 0, "accuracy": 0.0}
        for name in experts
    }
    records = list(records)
    for rec in records:
        for name in experts:
            if name not in rec["answers"]:
                continue
            letter = rec["answers"][name]
            ok = letter is not None and letter == rec["gold"]
            e = out[name]
            e["total"] += 1
            e["correct"] += int(ok)
            e["unparsed"] += int(letter is None)
            if rec.get("subcategory"):
                _bump(e["categories"], rec["subcategory"], ok)
            if rec.get("category"):
                _bump(e["groups"], rec["category"], ok)
            if rec.get("subject"):
                _bump(e["subjects"], rec["subject"], ok)
            for skill in rec.get("skills", []):
                _bump(e["skills"], skill, ok)
    for e in out.values():
        e["accuracy"] = round(e["correct"] / e["total"], 6) if e["total"] else 0.0
    return {"version": PROFILE_VERSION, **(meta or {}), "n_questions": len(records), "experts": out,
            "records": records}


def skill_values(expert_profile: dict) -> dict[str, int]:
    """The paper's profile: per skill, +1 per correct and -1 per wrong answer."""
    return {s: 2 * c["correct"] - c["total"] for s, c in expert_profile.get("skills", {}).items()}


def skill_matrix(profile: dict, experts: list[str], skills: list[str]) -> np.ndarray:
    """[experts x skills] profile values; a skill an expert never met is 0."""
    index = {s: j for j, s in enumerate(skills)}
    m = np.zeros((len(experts), len(skills)), dtype=np.float64)
    for i, name in enumerate(experts):
        for s, v in skill_values(profile["experts"].get(name, {})).items():
            if s in index:
                m[i, index[s]] = v
    return m


def save_profile(profile: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(profile, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load_profile(path: Path) -> dict:
    profile = json.loads(Path(path).read_text())
    if not isinstance(profile, dict) or not isinstance(profile.get("experts"), dict):
        raise ValueError(f"{path}: not a profile file (no 'experts' mapping)")
    if profile.get("version", PROFILE_VERSION) != PROFILE_VERSION:
        raise ValueError(f"{path}: profile version {profile.get('version')} is not {PROFILE_VERSION}")
    return profile
