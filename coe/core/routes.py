"""The routes file (routes.yaml, beside experts.yaml): what a request can be about, declared by the user.

A route is a label the router emits. `task` routes (what the user wants done: coding, writing, ...) are
learned from their examples; `subject` routes (what a request is about: MMLU's 17 subcategories) are
learned from MMLU and from their examples. Experts name the routes they serve in `categories`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coe.core.file_problems import FileProblems, describe

ROUTE_NAME_PATTERN = r"^[a-z0-9][a-z0-9 _-]{0,47}$"
MIN_TASK_EXAMPLES = 3
MAX_EXAMPLE_CHARS = 2000
MAX_EXAMPLES = 500


class RouteConfig(BaseModel):
    """One route as a user declares it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ROUTE_NAME_PATTERN, description="lowercase letters, digits, spaces, '_' or '-'")
    kind: Literal["task", "subject"]
    description: str = ""
    examples: list[str] = Field(default_factory=list, max_length=MAX_EXAMPLES)

    @field_validator("examples")
    @classmethod
    def _examples_are_requests(cls, v: list[str]) -> list[str]:
        out, seen = [], set()
        for i, text in enumerate(v):
            text = text.strip()
            if not text:
                raise ValueError(f"example {i} is empty")
            if len(text) > MAX_EXAMPLE_CHARS:
                raise ValueError(f"example {i} has {len(text)} characters; at most {MAX_EXAMPLE_CHARS}")
            if text in seen:
                raise ValueError(f"example {i} is a duplicate: {text[:60]!r}")
            seen.add(text)
            out.append(text)
        return out

    @model_validator(mode="after")
    def _task_routes_need_examples(self) -> "RouteConfig":
        if self.kind == "task" and len(self.examples) < MIN_TASK_EXAMPLES:
            raise ValueError(f"a task route is learned from its examples: give at least {MIN_TASK_EXAMPLES} "
                             f"(10 or more work best), found {len(self.examples)}")
        return self


class RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    routes: list[RouteConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _file_rules(self) -> "RoutesFile":
        owner: dict[str, str] = {}
        seen: set[str] = set()
        for r in self.routes:
            if r.name in seen:
                raise ValueError(f"route '{r.name}': duplicate name")
            seen.add(r.name)
            for text in r.examples:
                other = owner.setdefault(text, r.name)
                if other != r.name:
                    raise ValueError(f"route '{r.name}': example {text[:60]!r} is also an example of route '{other}'")
        return self


class RoutesError(FileProblems):
    """An invalid routes file; `problems` holds one human-readable line per problem."""


def _describe(path: Path, raw: dict, err: dict) -> str:
    return describe(path, raw, err, "routes", "route")


class Routes:
    """The validated routes."""

    def __init__(self, spec: RoutesFile, path: Path):
        self.spec = spec
        self.path = path
        self.routes: dict[str, RouteConfig] = {r.name: r for r in spec.routes}

    @property
    def names(self) -> list[str]:
        return list(self.routes)

    def of_kind(self, kind: str) -> list[str]:
        return [r.name for r in self.spec.routes if r.kind == kind]

    def examples(self) -> list[tuple[str, str]]:
        """(text, route) for every example."""
        return [(text, r.name) for r in self.spec.routes for text in r.examples]

    def fingerprint(self) -> str:
        """Identity of what a router learns from this file: names, kinds and examples (not descriptions)."""
        body = sorted((r.name, r.kind, sorted(r.examples)) for r in self.spec.routes)
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


def parse_routes(text: str, path: Path) -> Routes:
    """Validate routes-file text; raise RoutesError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutesError(path, [f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise RoutesError(path, [f"{path}: must be a mapping with a 'routes' list"])
    try:
        spec = RoutesFile.model_validate(raw)
    except ValidationError as exc:
        raise RoutesError(path, [_describe(path, raw, e) for e in exc.errors()]) from None
    return Routes(spec, path)


def load_routes(path: Path) -> Routes:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RoutesError(path, [f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_routes(text, Path(path))


def load_routes_if_present(path: Path) -> Routes | None:
    """The routes, or None when there is no routes file (routers then use their trained labels as they are)."""
    return load_routes(path) if Path(path).exists() else None
