"""The semantic cache in the running service: our own redis-server, one `coe worker`, two `coe serve` replicas over
it, talked to with the real `openai` client. Two client keys: `k-plain` (the default: no cache unless a request asks)
and `k-cached` (listed in COE_CACHE_KEYS: cached unless a request says off)."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from coe.core.settings import get_settings
from tests.conftest import start_server, stop_server
from tests.redis_server import RedisServer, needs_redis_server
from tests.test_faults import WorkerProc

pytestmark = needs_redis_server
SEMANTIC = {"x-coe-cache": "semantic"}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, test_experts_file):
    tmp = tmp_path_factory.mktemp("cache")
    rds = RedisServer(tmp)
    rds.start()
    worker = WorkerProc(tmp, "w1", test_experts_file, rds.url)
    env = {"COE_REDIS_URL": rds.url, "COE_API_KEYS": "k-plain,k-cached", "COE_CACHE_KEYS": "k-cached"}
    apis = []
    try:
        apis = [start_server(tmp, test_experts_file, env=env) for _ in range(2)]
        worker.wait_ready()
        yield apis
    finally:
        for api in apis:
            stop_server(api)
        worker.end()
        rds.stop()


def client(api, key: str = "k-plain") -> openai.OpenAI:
    return openai.OpenAI(base_url=api.v1, api_key=key, max_retries=0, timeout=150)


def ask(api, text: str, key: str = "k-plain", headers: dict | None = None, temperature: float = 0, **extra):
    return client(api, key).chat.completions.create(
        model="coe", messages=[{"role": "user", "content": text}], max_tokens=8, temperature=temperature,
        extra_headers=headers or {}, **extra)


def cache_of(completion) -> dict | None:
    return completion.model_extra["coe"]["cache"]


def lookups(api, result: str) -> float:
    text = httpx.get(f"{api.base_url}/metrics").text
    found = re.search(rf'^coe_cache_lookups_total{{result="{result}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_the_cache_is_off_by_default(replicas):
    first, second = (ask(replicas[0], "What is the boiling point of water at sea level?") for _ in range(2))
    assert cache_of(first) is None and cache_of(second) is None
    assert lookups(replicas[0], "hit") == lookups(replicas[0], "miss") == 0


def test_a_paraphrase_is_answered_by_the_other_replica_from_the_cache(replicas):
    a, b = replicas
    hits_before = lookups(b, "hit")
    stored = ask(a, "Who discovered penicillin?", headers=SEMANTIC)
    hit = ask(b, "Which scientist discovered penicillin?", headers=SEMANTIC)
    assert cache_of(stored) == {"hit": False, "similarity": None, "age_s": None, "stored": True, "note": ""}
    assert cache_of(hit)["hit"] is True
    assert cache_of(hit)["similarity"] >= get_settings().cache_threshold and cache_of(hit)["age_s"] >= 0
    assert hit.choices[0].message.content == stored.choices[0].message.content
    assert hit.model_extra["coe"]["experts"] == stored.model_extra["coe"]["experts"]
    assert "cache" in hit.model_extra["coe"]["timings"]
    assert lookups(b, "hit") == hits_before + 1


def test_a_changed_number_is_not_a_hit(replicas):
    a, b = replicas
    stored = ask(a, "Solve 3x + 5 = 20.", headers=SEMANTIC)
    near_miss = ask(b, "Solve 3x + 5 = 23.", headers=SEMANTIC)
    assert near_miss.model_extra["coe"]["category"] == stored.model_extra["coe"]["category"]  # one bucket: the guard
    assert cache_of(near_miss)["hit"] is False and cache_of(near_miss)["stored"] is True


def test_an_answer_at_temperature_above_zero_is_never_cached(replicas):
    a, b = replicas
    skipped_before = lookups(a, "skipped")
    sampled = [ask(api, "Why is the sky blue?", headers=SEMANTIC, temperature=0.7, seed=1) for api in (a, b)]
    for completion in sampled:
        assert cache_of(completion)["hit"] is False and cache_of(completion)["stored"] is False
        assert "temperature 0.7" in cache_of(completion)["note"]
    assert lookups(a, "skipped") == skipped_before + 1


def test_a_listed_key_is_cached_by_default_and_may_say_off(replicas):
    a, b = replicas
    first = ask(a, "Why do cats purr?", key="k-cached")
    again = ask(b, "What makes cats purr?", key="k-cached")
    off = ask(b, "What makes cats purr?", key="k-cached", headers={"x-coe-cache": "off"})
    other_key = ask(b, "What makes cats purr?", headers=SEMANTIC)
    assert cache_of(first)["stored"] is True and cache_of(again)["hit"] is True
    assert cache_of(off) is None
    assert cache_of(other_key)["hit"] is False  # each key has its own cached answers


def test_a_streamed_hit_sends_the_cached_answer_in_one_delta(replicas):
    a, b = replicas
    stored = ask(a, "What is the chemical symbol for gold?", headers=SEMANTIC)
    chunks = list(client(b).chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "What is the chemical symbol for gold?"}],
        max_tokens=8, temperature=0, stream=True, extra_headers=SEMANTIC))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == [stored.choices[0].message.content]
    assert chunks[-1].model_extra["coe"]["cache"]["hit"] is True


def test_a_cache_mode_the_service_does_not_know_is_a_400(replicas):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(replicas[0], "Who discovered penicillin?", headers={"x-coe-cache": "maybe"})
    assert caught.value.body["param"] == "x-coe-cache"
