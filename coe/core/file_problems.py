"""Problems of a YAML file users edit (experts.yaml, routes.yaml), each said with file, entry and field."""

from __future__ import annotations

from pathlib import Path


class FileProblems(ValueError):
    """An invalid file; `problems` holds one human-readable line per problem."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def describe(path: Path, raw: dict, err: dict, entries_key: str, noun: str) -> str:
    """One pydantic error as '<file>, <noun> '<name>' (<key>[i]), field '<f>': <reason>'."""
    loc = list(err["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == entries_key and isinstance(loc[1], int):
        idx = loc[1]
        entries = raw.get(entries_key) or []
        name = entries[idx].get("name", "?") if idx < len(entries) and isinstance(entries[idx], dict) else "?"
        where = f"{noun} '{name}' ({entries_key}[{idx}])"
        loc = loc[2:]
    field = ".".join(str(p) for p in loc)
    reason = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        reason = "unknown field"
    parts = [str(path)] + ([where] if where else []) + ([f"field '{field}'"] if field else [])
    return ", ".join(parts) + f": {reason}"
