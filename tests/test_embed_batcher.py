"""The encoder's micro-batcher and its cache of recent queries, on the served encoder (int8 ONNX)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from coe.core.settings import Settings
from coe.embed_batcher import EmbedBatcher
from coe.embedder import make_embedder


@pytest.fixture(scope="module")
def served():
    return make_embedder(Settings())


def test_concurrent_requests_get_the_vectors_the_encoder_gives_alone(served):
    async def main():
        batcher = EmbedBatcher(served)
        return await asyncio.gather(batcher.encode(["hi", "Why is the sky blue?"]), batcher.encode(["hi"]))

    both, one = asyncio.run(main())
    np.testing.assert_array_equal(both, served.encode(["hi", "Why is the sky blue?"]))
    np.testing.assert_array_equal(one, served.encode(["hi"]))


def test_a_cached_text_evicted_while_its_request_awaited_the_encoder_is_still_answered(served):
    """Request 2 finds 'a' cached and waits for 'b'; request 1, answered first in the same encoder batch, fills the
    two-entry cache with its own texts and so evicts 'a' before request 2 resumes."""
    async def main():
        batcher = EmbedBatcher(served)
        await batcher.encode(["a"])
        batcher.cache_bytes = 2 * batcher.cached_bytes  # room for two entries
        return await asyncio.gather(batcher.encode(["c", "d", "e"]), batcher.encode(["a", "b"]))

    _, second = asyncio.run(main())
    np.testing.assert_array_equal(second, served.encode(["a", "b"]))


def test_the_cache_is_bounded_by_bytes_whatever_the_texts_length(served):
    async def main():
        batcher = EmbedBatcher(served, cache_bytes=16_000)
        texts = [f"{i} " + "a long prompt " * 14_000 for i in range(12)]  # ~200,000 characters each
        vectors = [await batcher.encode([t]) for t in texts]
        return batcher, texts, vectors

    batcher, texts, vectors = asyncio.run(main())
    assert 0 < batcher.cached_bytes <= 16_000  # hashes and vectors only: a handful of the 12 (each ~1.5 kB)
    np.testing.assert_array_equal(vectors[-1], served.encode(texts[-1:]))
