"""Imports from this checkout for the GPU scripts, which run as plain `python evals/gpu/X.py` on the device.

Nothing is installed there, so the scripts put the repository root on the path and load evals/ as
`coe_evals` themselves (the name it is installed under here).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def use_this_checkout() -> None:
    """Import coe, workers and the benchmarks (as coe_evals) from this checkout."""
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("coe_evals", ROOT / "evals" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "evals")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["coe_evals"] = module
    spec.loader.exec_module(module)
