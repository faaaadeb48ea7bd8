"""The embedded mode serves every device its experts are placed on, and a request for an expert that no
worker serves is refused at once (503), never left to wait for its deadline.

A real `coe serve` without Redis whose experts are on `remote` (an OpenAI-compatible server that is not
running) and on `gpu:0` (vLLM on an empty model folder; this machine has neither the package nor a GPU): both get an
embedded worker, so both answer at once with their engine's error. With Redis, an expert whose device no
`coe worker` serves is 503.
"""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from tests.conftest import start_server, stop_server
from tests.test_errors import assert_openai_error

EXPERTS = """version: 1
experts:
  - name: remote-one
    engine: openai
    model: openai/some-model
    api_base: http://127.0.0.1:9/v1
    device: remote
    params_b: 8
    description: everyday questions
    categories: [other]
    fallback: true
  - name: gpu-one
    engine: vllm
    model: MODEL_DIR
    device: gpu:0
    params_b: 7
    description: mathematics
    categories: [math]
"""
REDIS_DB = 12  # a database of its own: the test clears it


def chat(srv, model: str) -> httpx.Response:
    return httpx.post(f"{srv.v1}/chat/completions", timeout=120,
                      json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})


@pytest.fixture
def experts(tmp_path):
    (tmp_path / "model").mkdir()
    path = tmp_path / "experts.yaml"
    path.write_text(EXPERTS.replace("MODEL_DIR", str(tmp_path / "model")))
    return path


def test_embedded_mode_serves_remote_and_gpu_experts_too(tmp_path, experts):
    srv = start_server(tmp_path, experts, env={"COE_REQUEST_TIMEOUT_S": "40", "COE_OPENAI_RETRIES": "0",
                                               "COE_OPENAI_TIMEOUT_S": "5"})
    try:
        for model, words in (("remote-one", "remote-one"), ("gpu-one", "could not be loaded")):
            started = time.monotonic()
            error = assert_openai_error(chat(srv, model), 502)
            assert words in error["message"] and time.monotonic() - started < 30
    finally:
        stop_server(srv)


@pytest.fixture
def redis_db():
    r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        r.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


def test_with_redis_an_expert_no_worker_serves_is_503(tmp_path, experts, redis_db):
    srv = start_server(tmp_path, experts, env={"COE_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
                                               "COE_REQUEST_TIMEOUT_S": "40"})
    try:
        started = time.monotonic()
        error = assert_openai_error(chat(srv, "remote-one"), 503)
        assert "no worker" in error["message"] and "remote" in error["message"]
        assert time.monotonic() - started < 10
        assert redis_db.xlen("coe:jobs:remote-one") == 0, "nothing is queued for nobody"
    finally:
        stop_server(srv)
