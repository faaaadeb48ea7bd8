"""evals/gpu/pack.py: files cut into chunks that fit one device call each, joined and checked on the other side."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from coe_evals.gpu.pack import MANIFEST, pack, unpack


def arrive(packed: Path, landing: Path, folders: list[str]) -> None:
    """What the device calls do: each folder's files copied into one landing folder."""
    landing.mkdir(exist_ok=True)
    for name in folders:
        for f in (packed / name).iterdir():
            shutil.copy(f, landing / f.name)


@pytest.fixture
def files(tmp_path) -> dict[str, bytes]:
    data = {"big.whl": os.urandom(2500), "small.whl": os.urandom(300), "last.whl": os.urandom(1200)}
    for name, blob in data.items():
        (tmp_path / name).write_bytes(blob)
    return data


def test_files_are_chunked_into_folders_of_at_most_the_bin_size_in_order(tmp_path, files) -> None:
    n = pack(tmp_path / "out", [f"cache:{tmp_path / name}" for name in files], bin_bytes=1000)
    assert n == 4  # 4,000 bytes in bins of 1,000
    sizes = [sum(f.stat().st_size for f in (tmp_path / "out" / f"{i:02d}").iterdir() if f.name != MANIFEST)
             for i in range(n)]
    assert sizes == [1000, 1000, 1000, 1000]
    manifest = json.loads((tmp_path / "out" / "00" / MANIFEST).read_text())
    assert [e["name"] for e in manifest] == list(files) and [len(e["chunks"]) for e in manifest] == [3, 1, 2]


def test_partial_unpack_takes_what_has_arrived_and_a_later_one_the_rest(tmp_path, files, capsys) -> None:
    packed, landing, cache = tmp_path / "out", tmp_path / "landing", tmp_path / "cache"
    pack(packed, [f"cache:{tmp_path / name}" for name in files], bin_bytes=1000)
    arrive(packed, landing, ["00", "01", "02"])  # big.whl and small.whl are in; last.whl's second chunk is not
    unpack(landing, tmp_path / "site", cache, partial=True)
    assert (cache / "wheels" / "big.whl").read_bytes() == files["big.whl"]
    assert not (cache / "wheels" / "last.whl").exists()
    assert "not carried yet: last.whl" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # without --partial a missing file is an error
        unpack(landing, tmp_path / "site", cache)
    arrive(packed, landing, ["03"])
    unpack(landing, tmp_path / "site", cache)
    assert {f.name: f.read_bytes() for f in (cache / "wheels").iterdir()} == files


def test_a_corrupted_chunk_is_refused(tmp_path, files) -> None:
    packed, landing = tmp_path / "out", tmp_path / "landing"
    pack(packed, [f"cache:{tmp_path / name}" for name in files], bin_bytes=1000)
    arrive(packed, landing, ["00", "01", "02", "03"])
    chunk = landing / "small.whl.000"
    chunk.write_bytes(b"x" + chunk.read_bytes()[1:])
    with pytest.raises(SystemExit, match="small.whl: SHA-256 mismatch"):
        unpack(landing, tmp_path / "site", tmp_path / "cache", partial=True)
