"""Deadlines, a full queue, and graceful shutdown, each against a server started for it.

- a request past COE_REQUEST_TIMEOUT_S is 504; a full queue (COE_MAX_QUEUE_DEPTH) is 503 with Retry-After;
- SIGTERM in the embedded mode: new requests get 503, requests in flight finish, then the process exits;
- SIGTERM with Redis: queued jobs stay in Redis for other workers; the rate limit is counted in Redis.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import shutil
import signal
import time

import httpx
import pytest
import redis

from tests.conftest import ROOT, start_server, stop_server
from tests.test_errors import assert_openai_error

REDIS_DB = 13  # a database of its own: the test clears it


def chat(server, model="generalist", max_tokens=4, content="Hi!", key=None, **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{server.v1}/chat/completions", json=body, headers=headers, timeout=120)


def cancellations(server) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    return sum(float(v) for v in re.findall(r'^coe_jobs_cancelled_total{stage="\w+"} (\S+)$', text, re.M))


async def announce(url: str, device: str, worker: str) -> None:
    from workers.queue_redis import RedisQueue

    queue = RedisQueue(url)
    try:
        await queue.announce(device, worker, ttl_s=120)
    finally:
        await queue.close()


def copy_experts(tmp, test_experts_file):
    path = tmp / "experts.yaml"
    shutil.copy(test_experts_file, path)
    return path


def test_deadline_is_504_and_a_full_queue_is_503(tmp_path, test_experts_file):
    srv = start_server(tmp_path, copy_experts(tmp_path, test_experts_file),
                       env={"COE_REQUEST_TIMEOUT_S": "1", "COE_MAX_QUEUE_DEPTH": "2"})
    try:
        started = time.monotonic()
        error = assert_openai_error(chat(srv, max_tokens=60, content="Tell me a long story."), 504)
        assert error["code"] == "timeout" and time.monotonic() - started < 20
        deadline = time.time() + 10  # the job of the request that ran out of time is cancelled, not left to run
        while not cancellations(srv):
            assert time.time() < deadline, httpx.get(f"{srv.base_url}/metrics").text
            time.sleep(0.3)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: chat(srv, max_tokens=40, content=f"Story {i}"), range(6)))
        full = [a for a in answers if a.status_code == 503]
        assert full, [a.status_code for a in answers]
        assert assert_openai_error(full[0], 503)["code"] == "unavailable" and "capacity" in full[0].json()["error"]["message"]
        assert full[0].headers["retry-after"]
        assert {a.status_code for a in answers} <= {200, 503, 504}
        assert srv.proc.poll() is None
    finally:
        stop_server(srv)


def test_sigterm_refuses_new_requests_and_finishes_those_in_flight(tmp_path):
    experts = tmp_path / "experts.yaml"
    shutil.copy(ROOT / "tests" / "fixtures" / "working-experts.yaml", experts)  # working experts only, so any traceback in the log is ours
    srv = start_server(tmp_path, experts, env={"COE_SHUTDOWN_GRACE_S": "240"})  # slack for busy CI machines
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        in_flight = [pool.submit(chat, srv, "generalist", 24, f"Tell me a story about the number {i}.") for i in range(3)]
        time.sleep(1.0)
        assert not any(f.done() for f in in_flight), "the requests should still be running"
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = chat(srv)
        ready = httpx.get(f"{srv.base_url}/readyz")
        answers = [f.result() for f in in_flight]
    assert assert_openai_error(refused, 503)["code"] == "shutting_down"
    assert refused.headers["retry-after"]
    assert ready.status_code == 503
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert all(a.json()["choices"][0]["message"]["content"] for a in answers)
    srv.proc.wait(timeout=30)
    assert srv.proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log()


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


def test_sigterm_with_redis_leaves_queued_jobs_for_other_workers(tmp_path, test_experts_file, redis_db):
    srv = start_server(tmp_path, copy_experts(tmp_path, test_experts_file), env={
        "COE_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}", "COE_API_KEYS": "k-limited,k-other",
        "COE_RATE_LIMIT_REQUESTS": "2", "COE_RATE_LIMIT_WINDOW_S": "3600", "COE_SHUTDOWN_GRACE_S": "1"})
    try:
        # the rate limit is counted in Redis, per key
        statuses = [httpx.get(f"{srv.v1}/models", headers={"Authorization": "Bearer k-limited"}).status_code
                    for _ in range(5)]
        assert 429 in statuses and statuses[0] == 200, statuses
        assert redis_db.keys("coe:rl:key-*"), "rate-limit counters live in Redis"
        # a worker has announced itself for `cpu` but serves nothing yet (still loading): the job waits in Redis;
        # the request is in flight when SIGTERM comes
        asyncio.run(announce(f"redis://127.0.0.1:6379/{REDIS_DB}", "cpu", "still-loading"))
        body = {"model": "generalist", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
        with httpx.stream("POST", f"{srv.v1}/chat/completions", json=body, timeout=60,
                          headers={"Authorization": "Bearer k-other"}) as stream:
            assert stream.status_code == 200  # routed and submitted
            assert redis_db.xlen("coe:jobs:generalist") == 1
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            refused = chat(srv, key="k-other")
            assert assert_openai_error(refused, 503)["code"] == "shutting_down"
            try:
                for _ in stream.iter_lines():
                    pass
            except httpx.HTTPError:
                pass  # the server closed the stream when its grace ran out
        srv.proc.wait(timeout=30)
        assert redis_db.xlen("coe:jobs:generalist") == 1, "the queued job stays for another worker"
    finally:
        if srv.proc.poll() is None:
            stop_server(srv)
