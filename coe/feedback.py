"""What users say about answers: every routed completion is remembered for a while (what was asked, where it was
sent), and `POST /v1/feedback` attaches an outcome to it: a score in [0, 1] (thumbs up 1, down 0), an optional
comment, and optionally the route or expert that should have answered.

Stored durably where the fleet can see it: Redis when the service runs on Redis (completions as keys with a TTL,
feedback in a capped stream), else an SQLite file beside the trained routers. `coe feedback export` writes it
out as JSONL; with `--training`, only the corrections, as rows `coe train --data` reads (text, label, split).
The online bandit (coe/bandit.py) learns from the same feedback; its statistics live beside it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

SERVED_TTL_S = 7 * 24 * 3600
"""How long a completion can be given feedback."""
MAX_FEEDBACK = 1_000_000
"""Feedback entries kept (the oldest go first)."""
SQLITE_FILE = "feedback.sqlite3"


@dataclass(frozen=True)
class Served:
    """A completion as the router saw it."""

    id: str
    text: str  # the text the router read
    router: str
    category: str | None
    experts: list[str]
    caller: str | None  # the key's identity; only that key may give feedback on it
    created: float
    bandit_route: str | None = None  # the online bandit chose experts[0] on this route (coe/bandit.py); None: it did not


@dataclass(frozen=True)
class Feedback:
    id: str
    score: float
    comment: str | None
    route: str | None  # the route that should have answered
    expert: str | None  # the expert that should have answered
    created: float


class FeedbackStore(Protocol):
    async def remember(self, served: Served) -> None: ...
    async def served(self, completion_id: str) -> Served | None: ...
    async def add(self, feedback: Feedback) -> None: ...
    def export(self) -> AsyncIterator[tuple[Served | None, Feedback]]: ...
    async def close(self) -> None: ...


def _served(raw: str | bytes) -> Served:
    return Served(**json.loads(raw))


def _feedback(raw: str | bytes) -> Feedback:
    return Feedback(**json.loads(raw))


class SQLiteFeedbackStore:
    """One file; each call on a worker thread with its own connection (SQLite connections are per thread)."""

    def __init__(self, path: Path, ttl_s: float = SERVED_TTL_S):
        self.path, self.ttl_s = Path(path), ttl_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS served (id TEXT PRIMARY KEY, created REAL, body TEXT)")
            db.execute("CREATE INDEX IF NOT EXISTS served_created ON served (created)")  # the expiry on every answer
            db.execute("CREATE TABLE IF NOT EXISTS feedback (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, body TEXT)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    async def remember(self, served: Served) -> None:
        def go() -> None:
            with self._connect() as db:
                db.execute("INSERT OR REPLACE INTO served VALUES (?, ?, ?)", (served.id, served.created, json.dumps(asdict(served))))
                db.execute("DELETE FROM served WHERE created < ?", (time.time() - self.ttl_s,))

        await asyncio.to_thread(go)

    async def served(self, completion_id: str) -> Served | None:
        def go() -> Served | None:
            with self._connect() as db:
                row = db.execute("SELECT body, created FROM served WHERE id = ?", (completion_id,)).fetchone()
            return _served(row[0]) if row and row[1] >= time.time() - self.ttl_s else None

        return await asyncio.to_thread(go)

    async def add(self, feedback: Feedback) -> None:
        def go() -> None:
            with self._connect() as db:
                db.execute("INSERT INTO feedback (id, body) VALUES (?, ?)", (feedback.id, json.dumps(asdict(feedback))))
                db.execute("DELETE FROM feedback WHERE n <= (SELECT MAX(n) FROM feedback) - ?", (MAX_FEEDBACK,))

        await asyncio.to_thread(go)

    async def export(self) -> AsyncIterator[tuple[Served | None, Feedback]]:
        def go() -> list[tuple[str | None, str]]:
            with self._connect() as db:
                return db.execute("SELECT s.body, f.body FROM feedback f LEFT JOIN served s ON s.id = f.id "
                                  "ORDER BY f.n").fetchall()

        for served, feedback in await asyncio.to_thread(go):
            yield (_served(served) if served else None), _feedback(feedback)

    async def close(self) -> None:
        return None


class RedisFeedbackStore:
    """Completions as `<prefix>:served:<id>` keys with a TTL; feedback in the capped stream `<prefix>:stream`, each
    entry carrying its completion as it was, so an export outlives the completions' TTL."""

    def __init__(self, url: str, prefix: str = "coe:feedback", ttl_s: float = SERVED_TTL_S):
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
        self.prefix, self.ttl_s = prefix, ttl_s

    async def remember(self, served: Served) -> None:
        await self.redis.set(f"{self.prefix}:served:{served.id}", json.dumps(asdict(served)), ex=int(self.ttl_s))

    async def served(self, completion_id: str) -> Served | None:
        raw = await self.redis.get(f"{self.prefix}:served:{completion_id}")
        return _served(raw) if raw else None

    async def add(self, feedback: Feedback) -> None:
        served = await self.served(feedback.id)
        fields = {"feedback": json.dumps(asdict(feedback)), "served": json.dumps(asdict(served)) if served else ""}
        await self.redis.xadd(f"{self.prefix}:stream", fields, maxlen=MAX_FEEDBACK, approximate=True)

    async def export(self) -> AsyncIterator[tuple[Served | None, Feedback]]:
        start = "-"
        while True:
            entries = await self.redis.xrange(f"{self.prefix}:stream", min=start, count=500)
            for entry_id, fields in entries:
                served = fields.get(b"served")
                yield (_served(served) if served else None), _feedback(fields[b"feedback"])
            if len(entries) < 500:
                return
            start = "(" + entries[-1][0].decode()

    async def close(self) -> None:
        await self.redis.aclose()


def make_feedback_store(settings) -> FeedbackStore:
    if settings.redis_url:
        return RedisFeedbackStore(settings.redis_url)
    return SQLiteFeedbackStore(settings.artifacts_dir / SQLITE_FILE)


def export_rows(pairs: list[tuple[Served | None, Feedback]]) -> list[dict]:
    """Every feedback entry with what it was about."""
    return [{**asdict(f), "served": asdict(s) if s else None} for s, f in pairs]


def training_rows(pairs: list[tuple[Served | None, Feedback]], routes: list[str] | None,
                  expert_routes: dict[str, list[str]]) -> tuple[list[dict], list[str]]:
    """The corrections as the labelled rows `coe train --data` reads (split `tune`: trained on and calibrated out of
    fold), and a note for each kind of correction left out. A completion's latest correction counts; its label is
    the route it names, else the one route of `routes` that the expert it names serves (`expert_routes`: each
    expert's declared categories). A label that is not one of `routes` now (None: no routes file to check against)
    is left out, as `coe train` would refuse the whole file for it."""
    latest: dict[str, tuple[str, str]] = {}
    left_out: dict[str, int] = {}

    def leave(why: str) -> None:
        left_out[why] = left_out.get(why, 0) + 1

    for served, fb in pairs:
        if not (fb.route or fb.expert):
            continue
        if served is None or not served.text.strip():
            leave("the completion's text is no longer kept")
            continue
        label = fb.route
        if label is None:
            served_routes = [c for c in expert_routes.get(fb.expert, []) if routes is None or c in routes]
            if len(served_routes) != 1:
                leave(f"expert '{fb.expert}' serves {len(served_routes)} routes, not one: name the route instead")
                continue
            label = served_routes[0]
        if routes is not None and label not in routes:
            leave(f"route '{label}' is not a route of the routes file now")
            continue
        latest[fb.id] = (served.text, label)
    rows = [{"text": text, "label": label, "split": "tune"} for text, label in latest.values()]
    return rows, [f"{n} left out: {why}" for why, n in left_out.items()]
