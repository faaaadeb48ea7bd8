"""The served encoder (int8 ONNX, as `coe serve` builds it): a text's vector does not depend on what it is
embedded with, so a query routes the same alone, in a micro-batch of concurrent requests and in a benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from coe.core.settings import Settings
from coe.data.embedding_cache import ENCODING, embedder_key
from coe.embedder import make_embedder

TEXTS = [
    "hi",
    "Write a haiku about autumn rain.",
    "My landlord kept my whole deposit for 'cleaning' even though I left the flat spotless. Can he do that?",
    "Which of the following best describes the function of the mitochondria in eukaryotic cells during respiration?",
    "asdf qwer zxcv",
]


@pytest.fixture(scope="module")
def served():
    embedder = make_embedder(Settings())
    assert embedder.runtime == "onnx-int8"
    return embedder


def test_a_text_gets_the_same_vector_alone_and_in_a_batch(served):
    batch = served.encode(TEXTS)
    alone = np.vstack([served.encode([t]) for t in TEXTS])
    np.testing.assert_array_equal(batch, alone)
    shuffled = served.encode(TEXTS[::-1])[::-1]
    np.testing.assert_array_equal(batch, shuffled)


def test_the_vectors_are_unit_length_and_tell_texts_apart(served):
    vecs = served.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    similarity = vecs @ vecs.T
    assert (similarity[~np.eye(len(TEXTS), dtype=bool)] < 0.9).all()


def test_cached_embeddings_are_keyed_by_the_encoding_procedure(served):
    assert embedder_key(served).endswith(f"onnx-int8-L32-{ENCODING}")
