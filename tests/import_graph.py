"""The project's imports, read from the source (every import statement, wherever it stands), and its floors.

`python -m tests.import_graph` prints the floor-to-floor graph as Mermaid (docs/architecture.md holds it).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = {"coe": ROOT / "coe", "routers": ROOT / "routers", "workers": ROOT / "workers", "coe_evals": ROOT / "evals"}
"""import name -> folder (the benchmarks in evals/ install as coe_evals)."""

FLOORS = ["core", "data", "routers", "workers", "service", "evals"]
"""From the bottom up."""

MAY_IMPORT = {
    "core": {"core"},
    "data": {"core", "data"},
    "routers": {"core", "routers"},
    "workers": {"core", "workers"},
    "service": {"core", "data", "routers", "workers", "service"},
    "evals": set(FLOORS),
}
"""What each floor may import. Nothing imports evals but evals; routers and workers never see each other."""


def modules() -> dict[str, Path]:
    """Every project module by dotted name."""
    out = {}
    for name, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


def floor_of(module: str) -> str:
    top, _, rest = module.partition(".")
    if top == "coe":
        sub = rest.split(".", 1)[0]
        return sub if sub in ("core", "data") else "service"
    return {"routers": "routers", "workers": "workers", "coe_evals": "evals"}[top]


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `module` imports (the most specific known name of each import)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    """Each import that goes to a floor its module may not use."""
    bad = []
    for mod, targets in sorted(g.items()):
        for t in sorted(targets):
            if floor_of(t) not in MAY_IMPORT[floor_of(mod)]:
                bad.append(f"{mod} ({floor_of(mod)}) imports {t} ({floor_of(t)})")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules (a package's __init__ re-exporting its own modules is not one)."""
    def edges(m: str) -> set[str]:
        return {t for t in g.get(m, ()) if not m.startswith(t + ".") and not t.startswith(m + ".")}

    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def floor_edges(g: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for mod, targets in g.items():
        for t in targets:
            if floor_of(t) != floor_of(mod):
                out[floor_of(mod)].add(floor_of(t))
    return out


def mermaid(g: dict[str, set[str]]) -> str:
    labels = {"core": "coe/core", "data": "coe/data", "routers": "routers/", "workers": "workers/",
              "service": "coe/ (api, pipeline, service, cli)", "evals": "evals/ (coe_evals)"}
    lines = ["flowchart BT"]
    lines += [f'  {f}["{labels[f]}"]' for f in FLOORS]
    for src in FLOORS:
        for dst in FLOORS:
            if dst in floor_edges(g).get(src, ()):
                lines.append(f"  {src} --> {dst}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid(graph()))
