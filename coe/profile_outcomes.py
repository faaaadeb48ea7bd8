"""Stage 2's profile from measured answers: `coe profile --data outcomes`, run by `make serve`'s set-up.

`coe bench quality` (on a GPU, vLLM) graded every expert on the validation items and kept each answer in
outcomes.json beside experts.yaml. Measuring the experts again on a 2-core machine would take hours, so
set-up turns those measurements into the profile the two-stage and skills routers read, grouped by what this
machine's own stage 1 predicts for each item's text: stage 2 serves measured accuracy per category, not the
categories experts.yaml declares. A profile a user measured (`coe profile --data ...`) is never replaced.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from routers.skills_profile import build_profile

SOURCE = "outcomes"


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def profile_from_outcomes(path: Path, experts: list[str]) -> tuple[dict, list[str]]:
    """The profile of the registered `experts` that the outcomes file measured, and the item texts in record
    order (for stage 1); pass/fail per answer, as the quality benchmark graded it."""
    data = json.loads(Path(path).read_text())
    measured = [e for e in experts if e in data.get("experts", {})]
    if not measured:
        raise ValueError(f"{path}: measures none of the registered experts ({', '.join(experts)})")
    records, texts = [], []
    for r in data["records"]:
        records.append({"id": r["id"], "subcategory": r.get("label") or r["domain"], "category": r["domain"],
                        "skills": r.get("skills", []), "gold": "pass",
                        "answers": {e: "pass" if r["answers"][e]["correct"] else "fail"
                                    for e in measured if e in r["answers"]}})
        texts.append(r["text"])
    meta = {"data": SOURCE, "outcomes": str(path), "outcomes_sha256": file_digest(path),
            "measured_by": data.get("source", "")}
    profile = build_profile(records, measured, meta)
    for e in measured:
        answers = [r["answers"][e] for r in data["records"] if e in r["answers"]]
        profile["experts"][e]["prompt_tokens"] = sum(a["prompt_tokens"] for a in answers)
        profile["experts"][e]["completion_tokens"] = sum(a["completion_tokens"] for a in answers)
    return profile, texts


def is_current(profile_path: Path, outcomes_path: Path, artifact_version: str | None) -> bool:
    """True when the profile need not be rebuilt: a user's own measured profile, or one built from these
    outcomes and grouped by the serving artifact's stage 1."""
    try:
        profile = json.loads(Path(profile_path).read_text())
    except (OSError, ValueError):
        return False
    if profile.get("data") != SOURCE:
        return True
    return (profile.get("outcomes_sha256") == file_digest(outcomes_path)
            and (profile.get("stage2") or {}).get("artifact") == artifact_version)
