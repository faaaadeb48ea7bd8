"""Coalesce concurrent embedding calls into one encoder batch, and remember recent queries.

Requests arriving within a few milliseconds of each other are embedded
together, off the event loop: one forward pass instead of many. A query seen
recently (exact text; greetings, retries, the same prompt from many users)
is answered from an LRU cache without the encoder. The cache is keyed by a
hash of the text, not the text (a 200,000-character prompt costs 16 bytes of
key), and bounded by the bytes it holds. A request reads what it needs from the
cache before it waits for the encoder, so an entry another request evicts
meanwhile is never looked up again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

import numpy as np

from coe import metrics
from coe.embedder import Embedder

KEY_BYTES = 16
"""A blake2b digest of the text: 128 bits, no collision in any cache's lifetime."""
CACHE_BYTES = 8 * 2**20
"""About 5,000 vectors of 384 floats."""


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


class EmbedBatcher:
    def __init__(self, embedder: Embedder, max_batch: int = 64, window_s: float = 0.002,
                 cache_bytes: int = CACHE_BYTES):
        self.embedder = embedder
        self.max_batch = max_batch
        self.window_s = window_s
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._pending: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self._flusher: asyncio.Task | None = None

    async def encode(self, texts: list[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        for key in keys:
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
        missing = {k: t for k, t in zip(keys, texts) if k not in found}
        hits = sum(k in found for k in keys)
        metrics.EMBED_CACHE.labels("hit").inc(hits)
        metrics.EMBED_CACHE.labels("miss").inc(len(keys) - hits)
        if missing:
            vectors = await self._encode(list(missing.values()))
            for key, vec in zip(missing, vectors):
                found[key] = vec
                self._remember(key, vec)
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

    def _remember(self, key: bytes, vec: np.ndarray) -> None:
        if key in self._cache:  # another request embedded the same text meanwhile
            return
        self._cache[key] = vec
        self.cached_bytes += KEY_BYTES + vec.nbytes
        while self.cached_bytes > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self.cached_bytes -= KEY_BYTES + old.nbytes

    async def _encode(self, texts: list[str]) -> np.ndarray:
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, fut))
        if sum(len(t) for t, _ in self._pending) >= self.max_batch:
            self._flush_now()
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())
        return await fut

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window_s)
        self._flusher = None
        self._flush_now()

    def _flush_now(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            asyncio.create_task(self._run(batch))

    async def _run(self, batch: list[tuple[list[str], asyncio.Future[np.ndarray]]]) -> None:
        texts = [t for ts, _ in batch for t in ts]
        try:
            vectors = await asyncio.to_thread(self.embedder.encode, texts)
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        start = 0
        for ts, fut in batch:
            if not fut.done():
                fut.set_result(vectors[start : start + len(ts)])
            start += len(ts)
