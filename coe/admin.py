"""Changing the expert registry while the service runs: add an expert, remove one, reload the file.

Every change is checked the way `coe experts validate` checks the file: the would-be file text goes
through `coe.core.registry.parse_registry`, and the router is rebuilt for the new registry, before anything
is written or swapped. A rejected change leaves the file and the running service as they were and
says why (`RegistryChangeRejected.problems`, the registry's own problem lines).

An accepted change is written atomically (a temporary file in the same folder, fsync, rename) after
copying the old file to `<file>.bak`, then swapped in with one assignment: a new Pipeline over the new
registry. Each request holds the Pipeline it started with, so requests in flight finish on the
registry they started with. The embedded worker takes up the new registry at its next turn, and
keeps serving an expert that left until its queued jobs are done.

Comments in experts.yaml survive an add (the new entry is appended as text) and a removal (the
entry's lines are cut out) whenever the result parses to exactly the intended content; otherwise
the file is rewritten from its parsed content, and the .bak keeps the old text.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from coe.pipeline import Pipeline
from coe.core.registry import Registry, RegistryError, load_registry, parse_registry


class RegistryChangeRejected(Exception):
    def __init__(self, message: str, problems: list[str], status: int = 422):
        super().__init__(message)
        self.message, self.problems, self.status = message, problems, status


@dataclass
class Change:
    registry: Registry
    router: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    backup: Path | None = None


def write_atomically(path: Path, text: str) -> Path | None:
    """Replace `path` with `text` in one rename, keeping the old file as `<path>.bak`; returns the backup."""
    backup = None
    if path.exists():
        backup = path.with_name(path.name + ".bak")
        shutil.copy2(path, backup)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if backup is not None:
            shutil.copymode(backup, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return backup


def _entry_indent(text: str) -> str | None:
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if stripped.startswith("- name:"):
            return line[: len(line) - len(stripped)]
    return None


def _with_entry(text: str, raw: dict, entry: dict) -> str:
    """The file text with `entry` appended to its experts list, keeping comments when possible."""
    wanted = {**raw, "experts": [*raw["experts"], entry]}
    indent = _entry_indent(text)
    if indent is not None:
        block = yaml.safe_dump([entry], sort_keys=False, allow_unicode=True)
        candidate = text.rstrip("\n") + "\n" + "".join(indent + line + "\n" for line in block.splitlines())
        try:
            if yaml.safe_load(candidate) == wanted:
                return candidate
        except yaml.YAMLError:
            pass
    return yaml.safe_dump(wanted, sort_keys=False, allow_unicode=True)


def _without_entry(text: str, raw: dict, index: int) -> str:
    """The file text with experts[index] cut out, keeping comments when possible."""
    wanted = {**raw, "experts": [e for i, e in enumerate(raw["experts"]) if i != index]}
    try:
        root = yaml.compose(text)
        seq = next(v for k, v in root.value if k.value == "experts")
        node = seq.value[index]
        lines = text.splitlines(keepends=True)
        start = node.start_mark.line
        if index + 1 < len(seq.value):
            end = seq.value[index + 1].start_mark.line
        else:
            end = node.end_mark.line + (1 if node.end_mark.column > 0 else 0)
        candidate = "".join(lines[:start] + lines[end:])
        if yaml.safe_load(candidate) == wanted:
            return candidate
    except (yaml.YAMLError, StopIteration, AttributeError, IndexError, TypeError):
        pass
    return yaml.safe_dump(wanted, sort_keys=False, allow_unicode=True)


class RegistryEditor:
    """Serialises the changes to one service's registry."""

    def __init__(self, service):
        self.service = service
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self.service.settings.experts_file

    def _current(self) -> tuple[str, dict]:
        try:
            text = self.path.read_text()
            raw = yaml.safe_load(text)
        except (OSError, yaml.YAMLError) as exc:
            raise RegistryChangeRejected(f"{self.path} cannot be read as it is now: {exc}", [str(exc)]) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("experts"), list):
            problem = f"{self.path}: must be a mapping with an 'experts' list"
            raise RegistryChangeRejected(problem, [problem])
        return text, raw

    def _parse(self, text: str) -> Registry:
        try:
            return parse_registry(text, self.path)
        except RegistryError as exc:
            raise RegistryChangeRejected(f"the change would make {self.path} invalid", exc.problems) from None

    async def _pipeline_for(self, registry: Registry) -> Pipeline:
        """A pipeline over `registry` with the running router rebuilt for it (routers read the registry)."""
        old: Pipeline = self.service.pipeline
        try:
            return await Pipeline.create(registry, old.embedder, self.service.queue, self.service.settings,
                                         old.default_router)
        except Exception as exc:  # a router that cannot serve this registry rejects the change
            problem = f"router '{old.default_router}' cannot be built for the new registry: {type(exc).__name__}: {exc}"
            raise RegistryChangeRejected(problem, [problem]) from None

    def _swap(self, registry: Registry, pipeline: Pipeline) -> None:
        # one assignment each, no await between them: a request sees the old pipeline or the new one
        self.service.registry = registry
        self.service.pipeline = pipeline
        self.service.refresh_workers(registry)

    def _change(self, old: Registry, new: Registry, pipeline: Pipeline, backup: Path | None) -> Change:
        return Change(new, pipeline.default_router, added=[n for n in new.names if n not in old.experts],
                      removed=[n for n in old.names if n not in new.experts], backup=backup)

    async def _apply(self, text: str | None, registry: Registry) -> Change:
        pipeline = await self._pipeline_for(registry)
        backup = await asyncio.to_thread(write_atomically, self.path, text) if text is not None else None
        old = self.service.registry
        self._swap(registry, pipeline)
        return self._change(old, registry, pipeline, backup)

    async def add(self, entry: dict) -> Change:
        async with self._lock:
            text, raw = self._current()
            new_text = _with_entry(text, raw, entry)
            return await self._apply(new_text, self._parse(new_text))

    async def remove(self, name: str) -> Change:
        async with self._lock:
            text, raw = self._current()
            index = next((i for i, e in enumerate(raw["experts"]) if isinstance(e, dict) and e.get("name") == name), None)
            if index is None:
                problem = f"{self.path}: no expert named '{name}'"
                raise RegistryChangeRejected(problem, [problem], status=404)
            new_text = _without_entry(text, raw, index)
            return await self._apply(new_text, self._parse(new_text))

    async def reload(self) -> Change:
        """Take up the file as it is on disk now (after an edit by hand)."""
        async with self._lock:
            try:
                registry = await asyncio.to_thread(load_registry, self.path)
            except RegistryError as exc:
                raise RegistryChangeRejected(f"{self.path} is invalid; the running registry is unchanged",
                                             exc.problems) from None
            return await self._apply(None, registry)
