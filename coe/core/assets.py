"""Where offline weights live: model references resolve to local files, never to a hub.

A reference is one of
  package:<module>[/<file>]   a file or folder shipped inside an installed Python package
  parts:<name>                a GGUF split over several packages, assembled once into the cache
                              (coe.core.model_parts names the parts)
  /abs/path or rel/path       a local file or folder (relative to the experts file)
  org/name                    a hub-style id, passed through untouched (vllm/openai engines only)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from coe.core.model_parts import PARTS_PREFIX, PartsError, assemble, locate_parts, model_for

PACKAGE_PREFIX = "package:"


class AssetError(ValueError):
    """A model reference that points at nothing on this machine."""


def package_root(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package '{module}' is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_package_ref(ref: str) -> Path:
    module, _, inner = ref[len(PACKAGE_PREFIX):].partition("/")
    root = package_root(module)
    if inner:
        path = root / inner
    elif (root / "model").is_dir():
        path = root / "model"
    else:
        ggufs = sorted(root.glob("*.gguf"))
        path = ggufs[0] if ggufs else root
    if not path.exists():
        raise AssetError(f"'{inner}' not found in package '{module}' ({root})")
    return path


def is_local_ref(ref: str) -> bool:
    return ref.startswith((PACKAGE_PREFIX, PARTS_PREFIX)) or ref.startswith((".", "/", "~")) or ref.endswith(".gguf")


def resolve_model_path(ref: str, base_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Turn a local model reference into an existing path, or raise AssetError.

    A `parts:` reference is assembled into `cache_dir` on first use (seconds for a GB), so it needs one.
    """
    if ref.startswith(PARTS_PREFIX):
        if cache_dir is None:
            raise AssetError(f"'{ref}' is assembled from its part packages into a cache folder, and none was given")
        try:
            return assemble(ref, cache_dir)
        except PartsError as exc:
            raise AssetError(str(exc)) from exc
    if ref.startswith(PACKAGE_PREFIX):
        return resolve_package_ref(ref)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise AssetError(f"no file or folder at '{path}'")
    return path.resolve()


def check_model_ref(ref: str, base_dir: Path | None = None) -> None:
    """Raise AssetError unless `ref` can be resolved here; cheap and writes nothing (split models: parts installed, sizes right)."""
    if ref.startswith(PARTS_PREFIX):
        try:
            locate_parts(model_for(ref))
        except PartsError as exc:
            raise AssetError(str(exc)) from exc
        return
    resolve_model_path(ref, base_dir)
