"""The semantic cache's store, guard and policy: real encoder embeddings, real Redis (keys under a prefix of the
test's own), no server (tests/test_cache_server.py runs the service)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from coe.cache_guard import same_literals
from coe.cache_policy import refusal, wanted
from coe.core.registry import parse_registry
from coe.core.settings import Settings, get_settings
from coe.embedder import make_embedder
from coe.pipeline_types import BadRequest, ChatInput, Plan
from coe.semantic_cache import RedisSemanticCache, SemanticCache, similarities
from routers import RouteDecision

REDIS = "redis://127.0.0.1:6379"
THRESHOLD = get_settings().cache_threshold
ANSWER = {"text": "Alexander Fleming, in 1928."}


@pytest.fixture(scope="module")
def embed():
    encoder = make_embedder(get_settings())
    return lambda *texts: encoder.encode(list(texts))


def one_turn(embed, text: str) -> tuple[list[str], np.ndarray]:
    return [text], embed(text)


@pytest.fixture
def prefix():
    name = f"test-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_a_paraphrase_is_a_hit_and_a_changed_number_or_language_is_not(embed):
    async def go():
        cache = SemanticCache(THRESHOLD, ttl_s=60, max_entries=100, bucket_size=10)
        await cache.store("b", *one_turn(embed, "Who discovered penicillin?"), ANSWER)
        await cache.store("b", *one_turn(embed, "What is 17 times 23?"), {"text": "391"})
        await cache.store("b", *one_turn(embed, "How do I reverse a list in Python?"), {"text": "xs[::-1]"})
        return [await cache.lookup("b", *one_turn(embed, q)) for q in (
            "Which scientist discovered penicillin?", "What is 17 times 24?", "How do I reverse a list in Rust?")]

    paraphrase, number, language = asyncio.run(go())
    assert paraphrase.answer == ANSWER and paraphrase.similarity >= THRESHOLD
    assert number is None and language is None


def test_a_hit_needs_the_same_bucket(embed):
    async def go():
        cache = SemanticCache(THRESHOLD, ttl_s=60, max_entries=100, bucket_size=10)
        await cache.store("stem/max_tokens=64", *one_turn(embed, "Who discovered penicillin?"), ANSWER)
        return await cache.lookup("stem/max_tokens=12", *one_turn(embed, "Who discovered penicillin?"))

    assert asyncio.run(go()) is None


def test_a_conversation_matches_turn_by_turn_at_its_least_similar_turn(embed):
    first, follow_up = embed("How do I sort a list in Python?", "and in reverse?")
    other_first = embed("How do I sort a list in Go?")[0]
    same = similarities(np.stack([first, follow_up]), np.stack([[first, follow_up]]))[0]
    other = similarities(np.stack([other_first, follow_up]), np.stack([[first, follow_up]]))[0]
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other == pytest.approx(float(other_first @ first), abs=1e-5)


def test_an_in_process_entry_expires_after_its_ttl(embed):
    async def go():
        cache = SemanticCache(THRESHOLD, ttl_s=0.3, max_entries=100, bucket_size=10)
        await cache.store("b", *one_turn(embed, "Who discovered penicillin?"), ANSWER)
        fresh = await cache.lookup("b", *one_turn(embed, "Who discovered penicillin?"))
        await asyncio.sleep(0.5)
        return fresh, await cache.lookup("b", *one_turn(embed, "Who discovered penicillin?"))

    fresh, stale = asyncio.run(go())
    assert fresh.answer == ANSWER and stale is None


def test_the_in_process_store_forgets_the_least_recently_used_beyond_its_bound(embed):
    questions = ["Who discovered penicillin?", "What is the capital of Canada?", "Why do cats purr?"]

    async def go():
        cache = SemanticCache(THRESHOLD, ttl_s=60, max_entries=2, bucket_size=10)
        await cache.store("b", *one_turn(embed, questions[0]), {"text": "0"})
        await cache.store("b", *one_turn(embed, questions[1]), {"text": "1"})
        await cache.lookup("b", *one_turn(embed, questions[0]))  # used: the second is now the least recent
        await cache.store("b", *one_turn(embed, questions[2]), {"text": "2"})
        return [await cache.lookup("b", *one_turn(embed, q)) for q in questions]

    kept = [None if hit is None else hit.answer["text"] for hit in asyncio.run(go())]
    assert kept == ["0", None, "2"]


def test_a_replica_finds_what_another_stored_in_redis_until_its_ttl(embed, prefix):
    async def go():
        writer = RedisSemanticCache(REDIS, THRESHOLD, ttl_s=1, max_entries=100, bucket_size=10, prefix=prefix)
        reader = RedisSemanticCache(REDIS, THRESHOLD, ttl_s=1, max_entries=100, bucket_size=10, prefix=prefix)
        await writer.store("b", *one_turn(embed, "Who discovered penicillin?"), ANSWER)
        fresh = await reader.lookup("b", *one_turn(embed, "Which scientist discovered penicillin?"))
        await asyncio.sleep(1.3)
        stale = await reader.lookup("b", *one_turn(embed, "Which scientist discovered penicillin?"))
        await writer.close()
        await reader.close()
        return fresh, stale

    fresh, stale = asyncio.run(go())
    assert fresh.answer == ANSWER and fresh.similarity >= THRESHOLD
    assert stale is None


def test_redis_keeps_at_most_max_entries_and_deletes_what_it_trims(embed, prefix):
    questions = [f"What is {n} times 7?" for n in range(6)]

    async def go():
        cache = RedisSemanticCache(REDIS, THRESHOLD, ttl_s=60, max_entries=4, bucket_size=3, prefix=prefix)
        for i, q in enumerate(questions):
            await cache.store("b1" if i % 2 else "b2", *one_turn(embed, q), {"text": q})
        hits = [await cache.lookup("b1" if i % 2 else "b2", *one_turn(embed, q)) for i, q in enumerate(questions)]
        await cache.close()
        return hits

    hits = asyncio.run(go())
    client = redis.Redis.from_url(REDIS)
    entries = len(list(client.scan_iter(f"{prefix}:cache:e:*")))
    vectors = len(list(client.scan_iter(f"{prefix}:cache:v:*")))
    client.close()
    assert entries == vectors == 4
    assert [h is not None for h in hits] == [False, False, True, True, True, True]


def test_an_unreachable_redis_is_a_miss_not_an_error(embed):
    async def go():
        cache = RedisSemanticCache("redis://127.0.0.1:1", THRESHOLD, ttl_s=60, max_entries=10, bucket_size=10)
        await cache.store("b", *one_turn(embed, "Who discovered penicillin?"), ANSWER)
        hit = await cache.lookup("b", *one_turn(embed, "Who discovered penicillin?"))
        await cache.close()
        return hit

    assert asyncio.run(go()) is None


@pytest.mark.parametrize("a, b", [
    ("What is 17 times 23?", "What is 17 times 24?"),
    ("Who was the first president of the United States?", "Who was the second president of the United States?"),
    ("Which foods should I eat with high cholesterol?", "Which foods should I not eat with high cholesterol?"),
    ("How do I reverse a list in Python?", "How do I reverse a list in Rust?"),
    ("Convert 100 degrees Fahrenheit to Celsius.", "Convert 100 degrees Celsius to Fahrenheit."),
    ("Can dogs eat grapes?", "Can cats eat grapes?"),
])
def test_the_guard_refuses_what_embeddings_blur(a, b):
    assert not same_literals(a, b)


@pytest.mark.parametrize("a, b", [
    ("Who discovered penicillin?", "Which scientist discovered penicillin?"),
    ("How many days are in February in a leap year?", "In a leap year, how many days does February have?"),
    ("What is the minimum wage in the UK?", "How much is the UK minimum wage?"),
])
def test_the_guard_lets_rewordings_through(a, b):
    assert same_literals(a, b)


def test_the_cache_is_off_unless_a_request_a_key_or_the_server_asks_for_it():
    plain, listed_default = Settings(), Settings(cache_default="semantic")
    assert wanted(None, None, key_listed=False, settings=plain) is False
    assert wanted("semantic", None, key_listed=False, settings=plain) is True
    assert wanted(None, "semantic", key_listed=False, settings=plain) is True
    assert wanted(None, None, key_listed=True, settings=plain) is True
    assert wanted(None, None, key_listed=False, settings=listed_default) is True
    assert wanted("off", "semantic", key_listed=True, settings=listed_default) is False  # the header wins
    assert wanted("semantic", None, key_listed=True, settings=Settings(cache_enabled=False)) is False
    with pytest.raises(BadRequest):
        wanted("yes please", None, key_listed=False, settings=plain)


def test_an_expert_that_samples_by_default_is_not_cached_unless_the_request_says_temperature_0():
    expert = "{{name: {}, engine: openai, model: hosted_vllm/m, api_base: 'http://127.0.0.1:9', params_b: 1, " \
             "generation: {{temperature: {}}}}}"
    text = f"version: 1\nexperts:\n  - {expert.format('chat', 0.7)}\n  - {expert.format('exact', 0.0)}\n"
    registry = parse_registry(text, Path("experts.yaml"), host=False)
    plan = Plan(RouteDecision(["chat"], "bypass"), jobs=[], timings={})
    messages = [{"role": "user", "content": "hi"}]
    assert "temperature 0.7" in refusal(plan, ChatInput("chat", messages), registry)
    assert refusal(plan, ChatInput("chat", messages, temperature=0.0), registry) is None
    assert refusal(Plan(RouteDecision(["exact"], "bypass"), [], {}), ChatInput("exact", messages), registry) is None
