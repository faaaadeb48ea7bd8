"""Coalesce concurrent embedding calls into one encoder batch, and remember recent queries.

Requests arriving within a few milliseconds of each other are embedded
together, off the event loop: one forward pass instead of many. A query seen
recently (exact text; greetings, retries, the same prompt from many users)
is answered from an LRU cache without the encoder.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from coe.embedder import Embedder


class EmbedBatcher:
    def __init__(self, embedder: Embedder, max_batch: int = 64, window_s: float = 0.002, cache_size: int = 4096):
        self.embedder = embedder
        self.max_batch = max_batch
        self.window_s = window_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self._flusher: asyncio.Task | None = None

    async def encode(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = await self._encode(missing)
            for text, vec in zip(missing, vectors):
                self._cache[text] = vec
        for text in texts:
            self._cache.move_to_end(text)
        found = [self._cache[t] for t in texts]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return np.stack(found) if found else np.zeros((0, 0), dtype=np.float32)

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
