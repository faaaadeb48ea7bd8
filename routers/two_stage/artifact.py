"""The trained two-stage router on disk: a versioned folder per training run.

    <artifacts>/two_stage/<version>/manifest.json   encoder, labels, tau, map, data hash, metrics
    <artifacts>/two_stage/<version>/stage1.joblib   the fitted stage-1 model
    <artifacts>/two_stage/<version>/neighbors.npz   training embeddings + labels (kNN baseline)
    <artifacts>/two_stage/<version>/validation_routes.json   held-out validation decisions (sha256 of text -> route)
    <artifacts>/two_stage/LATEST                    the version the service loads
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 2  # 2: RouteMixture's exam model also knows the task routes (from their examples)
ROUTER_DIR = "two_stage"
VALIDATION_ROUTES = "validation_routes.json"


class ArtifactError(RuntimeError):
    """No usable artifact, or one built for another encoder or label set."""


@dataclass
class Artifact:
    path: Path
    manifest: dict
    stage1: object

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def tau(self) -> float:
        return float(self.manifest["tau"])

    def neighbors(self) -> tuple[np.ndarray, np.ndarray]:
        data = np.load(self.path / "neighbors.npz")
        return data["embeddings"].astype(np.float32), data["labels"]


def router_root(artifacts_dir: Path) -> Path:
    return Path(artifacts_dir) / ROUTER_DIR


def new_version(level: str, classifier: str, data_hash: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{level}-{classifier}-{data_hash[:8]}"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def save_artifact(artifacts_dir: Path, version: str, manifest: dict, stage1, embeddings: np.ndarray,
                  label_idx: np.ndarray, make_latest: bool = True, validation_routes: dict[str, str] | None = None) -> Path:
    """`validation_routes` (text -> route) is kept keyed by text_key, so a later training can say what moved."""
    import joblib

    root = router_root(artifacts_dir)
    final = root / version
    tmp = root / f".{version}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    joblib.dump(stage1, tmp / "stage1.joblib", compress=3)
    np.savez_compressed(tmp / "neighbors.npz", embeddings=embeddings.astype(np.float16), labels=label_idx.astype(np.int16))
    if validation_routes is not None:
        (tmp / VALIDATION_ROUTES).write_text(json.dumps({text_key(t): r for t, r in validation_routes.items()}))
    (tmp / "manifest.json").write_text(json.dumps({"format": FORMAT, "version": version, **manifest}, indent=2))
    os.replace(tmp, final)
    if make_latest:
        pointer = root / "LATEST"
        pointer.with_suffix(".tmp").write_text(version + "\n")
        os.replace(pointer.with_suffix(".tmp"), pointer)
    return final


def validation_routes(path: Path) -> dict[str, str] | None:
    """The held-out validation decisions saved with the artifact at `path` (text_key -> route), if any."""
    try:
        return json.loads((path / VALIDATION_ROUTES).read_text())
    except (OSError, ValueError):
        return None


def resolve_version(artifacts_dir: Path, version: str | None = None) -> Path:
    """A named version, else the LATEST pointer, else the newest version folder."""
    root = router_root(artifacts_dir)
    if version:
        path = Path(version) if Path(version).is_dir() else root / version
        if not (path / "manifest.json").exists():
            raise ArtifactError(f"no two_stage artifact at {path}")
        return path
    pointer = root / "LATEST"
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / "manifest.json").exists():
            return path
    versions = sorted(p for p in root.glob("*") if (p / "manifest.json").exists()) if root.is_dir() else []
    if not versions:
        raise ArtifactError(f"no trained two_stage artifact under {root}; run: coe train --router two_stage --data mmlu")
    return versions[-1]


def _stage1(file: Path):
    """The fitted stage 1, loaded once per file version: a registry change rebuilds the router (stage 2 reads
    the registry) but not stage 1, whose loading is most of a rebuild (about 2 s of 2.5 on 2 cores)."""
    try:
        stat = file.stat()
    except OSError as exc:
        raise ArtifactError(f"{file}: unreadable ({exc})") from None
    return _load_stage1(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_stage1(file: str, mtime_ns: int, size: int):
    """Keyed by modification time and size too, so a file replaced in place is read again."""
    import joblib

    return joblib.load(file)


def read_manifest(path: Path) -> dict:
    """The manifest of the artifact at `path`, refusing one this version cannot read."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}/manifest.json: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: artifact format {manifest.get('format')} is not {FORMAT}; retrain with coe train")
    return manifest


def load_artifact(artifacts_dir: Path, version: str | None = None, encoder_id: str | None = None,
                  labels: list[str] | None = None, level: str | None = None) -> Artifact:
    """Load an artifact, refusing one built with another encoder or label set."""
    path = resolve_version(artifacts_dir, version)
    manifest = read_manifest(path)
    trained_with = manifest.get("encoder", {}).get("id")
    if encoder_id is not None and trained_with != encoder_id:
        raise ArtifactError(
            f"{path}: trained with encoder '{trained_with}' but the service uses '{encoder_id}'; "
            f"embeddings from different encoders are not comparable. Retrain: coe train --router two_stage --data mmlu")
    if level is not None and manifest.get("level") != level:
        raise ArtifactError(f"{path}: trained for level '{manifest.get('level')}', asked for '{level}'")
    if labels is not None and sorted(labels) != sorted(manifest["labels"]):
        missing = sorted(set(labels) - set(manifest["labels"]))
        extra = sorted(set(manifest["labels"]) - set(labels))
        raise ArtifactError(f"{path}: label set differs from the expected one (missing {missing}, unexpected {extra})")
    stage1 = _stage1(path / "stage1.joblib")
    if list(stage1.labels) != list(manifest["labels"]):
        raise ArtifactError(f"{path}: stage1.joblib labels do not match manifest.json; the artifact is corrupt")
    return Artifact(path, manifest, stage1)
