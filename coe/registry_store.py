"""Where the running registry is kept: the experts file (one process), or a copy in Redis shared by every process.

Both stores answer the same four questions, so the admin editor (coe/admin.py) makes a change the same way
in both modes: `open` (the registry this process starts with), `current` (the registry as stored now,
a Snapshot: version + experts-file text), `commit` (store a change made on top of a snapshot; None when
another process changed it first) and `held` (the snapshot this process runs).

Without Redis the file is the registry: a change is written back to it atomically (old file kept as
.bak), and the version counts this process's changes from 1. With Redis (COE_REDIS_URL) the file is
only the seed: the first process to find Redis empty puts the file's text there as version 1; later
processes, and every change, use Redis's copy (workers/registry_feed.py), never writing the file (it may
be mounted read-only). A process started with a file edited since it was last published still runs Redis's
copy and says so: the fleet's registry changes only through the admin API (a reload publishes the file).
`FeedStore.follow` keeps a process on the newest version.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from coe.core.registry import Registry, RegistryError, host_problems, load_registry, parse_registry
from coe.core.routes import Routes
from workers.queue import QueueUnavailable
from workers.registry_feed import RegistryFeed, Snapshot

log = logging.getLogger("coe.registry")

POLL_S = 1.0
"""How often a follower looks at Redis's version besides listening for announcements."""


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


class FileStore:
    """The experts file is the registry (no Redis): changes are written back to it."""

    shared = False

    def __init__(self, path: Path):
        self.path = path
        self.held = Snapshot(1, "")
        self.problems: list[str] = []  # the file is checked whole: a problem stops it from being run

    async def open(self, routes: Routes | None) -> Registry:
        registry = await asyncio.to_thread(load_registry, self.path, routes)
        self.held = Snapshot(1, "")
        return registry

    async def current(self) -> Snapshot:
        """The file as it is on disk now (OSError when it cannot be read)."""
        return Snapshot(self.held.version, await asyncio.to_thread(self.path.read_text))

    async def commit(self, text: str, base: Snapshot, from_file: bool = False) -> tuple[Snapshot, Path | None]:
        """Write `text` unless the file already says it (a reload); returns the new snapshot and the backup."""
        backup = await asyncio.to_thread(write_atomically, self.path, text) if text != base.text else None
        return Snapshot(base.version + 1, text), backup

    async def close(self) -> None:
        pass


class FeedStore:
    """The registry lives in Redis, seeded from the file; every process follows its versions."""

    shared = True

    def __init__(self, feed: RegistryFeed, path: Path):
        self.feed = feed
        self.path = path
        self.held = Snapshot(0, "")
        self.file_text = ""
        self.joined = False
        self.problems: list[str] = []  # what this host lacks to serve the version it runs

    async def open(self, routes: Routes | None) -> Registry:
        """Redis's copy, seeded from the file (checked like always, routes included) when Redis had none. With
        Redis unreachable: the file, as version 0, until Redis answers (`follow` then joins). What this host
        lacks to serve the shared copy does not stop the process: it is reported (see `parse`)."""
        try:
            self.file_text = await asyncio.to_thread(self.path.read_text)
        except OSError as exc:
            raise RegistryError(self.path, [f"{self.path}: cannot read: {exc.strerror}"]) from None
        await asyncio.to_thread(parse_registry, self.file_text, self.path, routes, False)  # before it may seed
        try:
            self.held = await self._join()
        except QueueUnavailable as exc:
            log.warning("%s; running %s until Redis answers", exc, self.path)
            self.held = Snapshot(0, self.file_text)
            return await asyncio.to_thread(parse_registry, self.file_text, self.path, routes)
        return self.parse(self.held)

    def parse(self, snapshot: Snapshot) -> Registry:
        """The shared version as this process runs it. Checked as the fleet's registry; what only this host lacks
        (weights not here, an api_key_env not set here) is kept in `problems`, logged and shown by /readyz, and
        the process runs the version all the same, serving what it can, rather than stay on an older one."""
        try:
            registry = parse_registry(snapshot.text, self.path, host=False)
        except RegistryError as exc:
            raise RegistryError(exc.path, [f"registry version {snapshot.version} held in Redis ({self.feed.url}): {p}"
                                           for p in exc.problems]) from None
        if self._report(registry):
            log.error("registry version %d runs here without what this host lacks: %s", snapshot.version,
                      "; ".join(self.problems))
        return registry

    def _report(self, registry: Registry) -> list[str]:
        self.problems = host_problems(registry)
        return self.problems

    async def _join(self) -> Snapshot:
        snapshot, outcome = await self.feed.join(self.file_text)
        self.joined = True
        if outcome == "seeded":
            log.info("Redis had no registry: seeded it from %s as version 1", self.path)
        elif outcome == "file differs":
            log.warning("%s differs from the file the shared registry was last taken from: running the shared "
                        "version %d, not the file (POST /v1/experts/reload publishes the file to every process)",
                        self.path, snapshot.version)
        else:
            log.info("registry version %d from Redis", snapshot.version)
        return snapshot

    async def current(self) -> Snapshot:
        """Redis's copy; if Redis lost it, the one this process runs is put back first."""
        return await self.feed.snapshot() or await self.feed.seed(self._running(), self.file_text)

    def _running(self) -> Snapshot:
        return Snapshot(max(1, self.held.version), self.held.text)

    async def commit(self, text: str, base: Snapshot, from_file: bool = False) -> tuple[Snapshot, None] | None:
        snap = await self.feed.change(text, base.version, from_file)
        return (snap, None) if snap is not None else None

    async def follow(self, take_up: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        """Call `take_up` whenever Redis holds a version other than the one this process runs (told at once
        through Pub/Sub, else seen by the poll within POLL_S). A version this process cannot take up is
        logged once and skipped until the next one; Redis without a copy gets this process's copy back."""
        failed: int | None = None
        while not stop.is_set():
            await self.feed.wait(POLL_S)
            version = None
            try:
                if not self.joined:  # started while Redis was unreachable: join now, take up what it holds below
                    await self._join()
                version = await self.feed.version()
                if version is None:
                    log.warning("Redis holds no registry (its data was lost); putting back version %d",
                                self._running().version)
                    await self.feed.seed(self._running(), self.file_text)
                elif version not in (self.held.version, failed):
                    await take_up()
                    failed = None
            except QueueUnavailable as exc:
                log.debug("registry feed: %s", exc)
            except Exception as exc:
                failed = version
                log.error("cannot take up registry version %s, still running version %d: %s", version,
                          self.held.version, exc)

    async def close(self) -> None:
        await self.feed.close()


def make_store(path: Path, redis_url: str | None) -> FileStore | FeedStore:
    return FeedStore(RegistryFeed(redis_url), path) if redis_url else FileStore(path)
