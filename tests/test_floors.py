"""The floors of the house, read from the code's own imports (docs/architecture.md draws them).

coe/core at the bottom imports nothing of the project; coe/data only the core; routers/ and workers/
only the core (never each other); the service (the rest of coe/) everything below it; the benchmarks
(evals/, installed as coe_evals) sit on top and nothing of the product imports them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.import_graph import ROOT, cycles, floor_of, graph, modules, upward_imports

MAX_LINES = 400


def test_every_module_has_a_floor():
    assert {floor_of(m) for m in modules()} == {"core", "data", "routers", "workers", "service", "evals"}


def test_no_floor_imports_a_higher_or_a_sibling_floor():
    assert upward_imports(graph()) == []


def test_the_guard_catches_an_upward_import(tmp_path, monkeypatch):
    g = graph()
    g["coe.core.registry"] = g["coe.core.registry"] | {"coe.pipeline"}
    g["workers.worker"] = g["workers.worker"] | {"routers.base"}
    assert upward_imports(g) == ["coe.core.registry (core) imports coe.pipeline (service)",
                                 "workers.worker (workers) imports routers.base (routers)"]


def test_no_import_circles():
    assert cycles(graph()) == []


def test_no_module_is_a_warehouse():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these into modules with one job each: {long}"


def test_the_product_runs_without_the_benchmarks():
    """Importing the product never loads coe_evals: only the CLI mounts it, through an entry point."""
    product = [m for m in modules() if floor_of(m) != "evals" and m != "coe.cli"]
    code = ("import importlib, sys\n"
            f"for m in {product!r}: importlib.import_module(m)\n"
            "assert not any(n == 'coe_evals' or n.startswith('coe_evals.') for n in sys.modules), 'evals loaded'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "tests")


def test_coe_bench_is_mounted_through_the_entry_point():
    out = subprocess.run([str(Path(sys.executable).parent / "coe"), "bench", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert all(cmd in out for cmd in ("routing", "serving", "recruit", "load"))
