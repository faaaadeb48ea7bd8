"""Changing the expert registry while the service runs: add an expert, remove one, reload the file.

Every change is checked the way `coe experts validate` checks the file: the would-be file text goes
through `coe.core.registry.parse_registry`, and the router is rebuilt for the new registry, before anything
is stored or swapped. A rejected change leaves the stored registry and the running service as they were
and says why (`RegistryChangeRejected.problems`, the registry's own problem lines).

An accepted change is stored (coe/registry_store.py: written back to experts.yaml atomically with a .bak
without Redis; with Redis, the next version of the copy every process shares, the file untouched), then
swapped in with one assignment: a new Pipeline over the new registry. Each request holds the Pipeline it
started with, so requests in flight finish on the registry they started with. The embedded worker takes
up the new registry at its next turn, and keeps serving an expert that left until its queued jobs are done.
With Redis, a change made first by another replica is noticed when storing (compare-and-set on the
version): this one is then made again on top of it, so neither is lost. Other replicas' changes are taken
up by `take_up`, called by the store's follower.

An expert registered here may only name an api_key_env and an api_base host the operator allowed
(COE_REGISTRATION_KEY_ENVS, COE_REGISTRATION_HOSTS): otherwise whoever holds the admin key could have
any variable of the service's environment (the admin key, the Redis password) sent to a server of theirs.
experts.yaml itself is the operator's and is not limited.

Comments in experts.yaml survive an add (the new entry is appended as text) and a removal (the
entry's lines are cut out) whenever the result parses to exactly the intended content; otherwise
the file is rewritten from its parsed content, and the .bak keeps the old text.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from coe.pipeline import Pipeline
from coe.pipeline_types import Unavailable
from coe.core.registry import Registry, RegistryError, parse_registry
from workers.queue import QueueUnavailable
from workers.registry_feed import Snapshot

log = logging.getLogger("coe.registry")

ATTEMPTS = 10
"""How often a change is redone on top of other replicas' changes before the caller is asked to retry (409)."""


class RegistryChangeRejected(Exception):
    def __init__(self, message: str, problems: list[str], status: int = 422):
        super().__init__(message)
        self.message, self.problems, self.status = message, problems, status


@dataclass
class Change:
    registry: Registry
    router: str
    version: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    backup: Path | None = None


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


def registration_problems(entry: dict, key_envs: list[str], hosts: list[str]) -> list[str]:
    """Why an expert registered at run time may not use its api_key_env or api_base (empty: it may)."""
    problems = []
    env = entry.get("api_key_env")
    if env and not any(env == allowed or (allowed.endswith("*") and fnmatch.fnmatchcase(env, allowed))
                       for allowed in key_envs):
        problems.append(f"field 'api_key_env': {env} is not one the operator allows for registered experts "
                        f"(COE_REGISTRATION_KEY_ENVS: {', '.join(key_envs) or 'none'})")
    base = entry.get("api_base")
    if base:
        url = urlsplit(base)
        host = (url.hostname or "").lower()
        where = {host, f"{host}:{url.port}"} if url.port else {host}
        if url.scheme not in ("http", "https") or not host or not where & {h.lower() for h in hosts}:
            problems.append(f"field 'api_base': {base} is not on a host the operator allows for registered "
                            f"experts (COE_REGISTRATION_HOSTS: {', '.join(hosts) or 'none'})")
    return problems


def _names(raw: dict) -> list[str]:
    return [e.get("name") for e in raw["experts"] if isinstance(e, dict)]


class RegistryEditor:
    """Serialises this process's changes to the registry, and its taking up of other processes' changes."""

    def __init__(self, service):
        self.service = service
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self.service.settings.experts_file

    @property
    def store(self):
        return self.service.store

    def _raw(self, text: str) -> dict:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RegistryChangeRejected(f"{self.path} cannot be read as it is now: {exc}", [str(exc)]) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("experts"), list):
            problem = f"{self.path}: must be a mapping with an 'experts' list"
            raise RegistryChangeRejected(problem, [problem])
        return raw

    def _parse(self, text: str, invalid: str) -> Registry:
        try:
            return parse_registry(text, self.path)
        except RegistryError as exc:
            raise RegistryChangeRejected(invalid, exc.problems) from None

    async def _stored(self, awaitable, writing: bool = False):
        try:
            return await awaitable
        except OSError as exc:
            if writing:  # e.g. a read-only mount without Redis: a server-side problem, not the request's
                problem = (f"{self.path} cannot be written: {exc}; a read-only experts file needs COE_REDIS_URL "
                           "(the registry then lives in Redis)")
                raise RegistryChangeRejected(problem, [problem], status=500) from None
            raise RegistryChangeRejected(f"{self.path} cannot be read as it is now: {exc}", [str(exc)]) from None
        except QueueUnavailable as exc:
            raise Unavailable(f"the registry cannot be changed now: {exc}") from None

    async def _pipeline_for(self, registry: Registry) -> Pipeline:
        """A pipeline over `registry` with the running router rebuilt for it (routers read the registry)."""
        old: Pipeline = self.service.pipeline
        try:
            return await Pipeline.create(registry, old.embedder, self.service.queue, self.service.settings,
                                         old.default_router, old.stores)  # they outlive a registry change
        except Exception as exc:  # a router that cannot serve this registry rejects the change
            problem = f"router '{old.default_router}' cannot be built for the new registry: {type(exc).__name__}: {exc}"
            raise RegistryChangeRejected(problem, [problem]) from None

    def _swap(self, registry: Registry, pipeline: Pipeline, snapshot: Snapshot) -> None:
        # one assignment each, no await between them: a request sees the old pipeline or the new one
        self.service.registry = registry
        self.service.pipeline = pipeline
        self.store.held = snapshot
        self.service.refresh_workers(registry)

    async def _edit(self, new_text: Callable[[Snapshot], str], invalid: str, reload: bool = False) -> Change:
        """Make `new_text(base)` the registry, where base is the stored registry, redone on top of another
        process's change that came first. The change lists what it added and removed against base (a reload:
        the file, against what this process ran)."""
        async with self._lock:
            for _ in range(ATTEMPTS):
                base = await self._stored(self.store.current())
                text = new_text(base)
                registry = self._parse(text, invalid)
                pipeline = await self._pipeline_for(registry)
                before = self.service.registry.names if reload else _names(self._raw(base.text))
                committed = await self._stored(self.store.commit(text, base, from_file=reload), writing=True)
                if committed is None:
                    continue
                snapshot, backup = committed
                self._swap(registry, pipeline, snapshot)
                return Change(registry, pipeline.default_router, snapshot.version,
                              added=[n for n in registry.names if n not in before],
                              removed=[n for n in before if n not in registry.experts], backup=backup)
        problem = f"the registry changed {ATTEMPTS} times while this change was being made; retry it"
        raise RegistryChangeRejected(problem, [problem], status=409)

    async def add(self, entry: dict) -> Change:
        settings = self.service.settings
        problems = registration_problems(entry, settings.registration_key_envs, settings.registration_hosts)
        if problems:
            raise RegistryChangeRejected("the expert names a key or a server the operator does not allow", problems)

        def new_text(base: Snapshot) -> str:
            return _with_entry(base.text, self._raw(base.text), entry)

        return await self._edit(new_text, f"the change would make {self.path} invalid")

    async def remove(self, name: str) -> Change:
        def new_text(base: Snapshot) -> str:
            raw = self._raw(base.text)
            index = next((i for i, e in enumerate(raw["experts"]) if isinstance(e, dict) and e.get("name") == name), None)
            if index is None:
                problem = f"{self.path}: no expert named '{name}'"
                raise RegistryChangeRejected(problem, [problem], status=404)
            return _without_entry(base.text, raw, index)

        return await self._edit(new_text, f"the change would make {self.path} invalid")

    async def reload(self) -> Change:
        """Take up the file as it is on disk now (after an edit by hand); with Redis, every process takes it up."""
        def new_text(_base: Snapshot) -> str:
            try:
                return self.path.read_text()
            except OSError as exc:
                problem = f"{self.path}: cannot read: {exc.strerror}"
                raise RegistryChangeRejected(problem, [problem]) from None

        return await self._edit(new_text, f"{self.path} is invalid; the running registry is unchanged",
                                reload=True)

    async def take_up(self) -> None:
        """Run the version the store holds now, if it is another than this process runs (another replica's change)."""
        async with self._lock:
            snapshot = await self.store.current()
            if snapshot.version == self.store.held.version:
                return
            try:
                registry = self.store.parse(snapshot)  # what this host lacks is reported, not a reason to stay behind
                pipeline = await self._pipeline_for(registry)
            except (RegistryError, RegistryChangeRejected) as exc:
                raise RuntimeError("; ".join(exc.problems)) from None
            old = self.store.held.version
            self._swap(registry, pipeline, snapshot)
            log.info("registry version %d taken up (was %d): %s", snapshot.version, old, ", ".join(registry.names))
