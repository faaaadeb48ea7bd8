"""One registry across processes: two `coe serve` replicas and a `coe worker` on our own redis-server, the experts
file read-only (as compose mounts it). A change made through one replica is live on the other and on the worker
within 2 s; concurrent changes through both replicas all land; Redis that lost its copy gets it back.

The feed's own rules (seed once, compare-and-set, a later process runs Redis's copy) are checked first, without
servers, on the shared Redis with a key prefix of their own.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coe.registry_store import FeedStore
from tests.conftest import FIXTURES, RunningServer, read_only, start_server, stop_server, writable
from tests.queue_helpers import REDIS_URL, redis_up
from tests.redis_server import RedisServer, running_redis
from tests.test_faults import WorkerProc
from tests.test_security import ADMIN, POET, bearer
from workers.registry_feed import RegistryFeed, Snapshot

PROPAGATION_S = 2.0
needs_redis = pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")


# --- the feed and the store, without servers ----------------------------------------------------
def feed_scenario(scenario) -> None:
    async def main():
        feed = RegistryFeed(REDIS_URL, prefix=f"coetest:{uuid.uuid4().hex[:12]}")
        try:
            await scenario(feed)
        finally:
            await feed.redis.delete(feed.key)
            await feed.close()

    asyncio.run(main())


@needs_redis
def test_the_file_seeds_once_and_a_change_on_a_stale_version_is_refused():
    async def scenario(feed: RegistryFeed):
        assert await feed.snapshot() is None
        assert await feed.join("file") == (Snapshot(1, "file"), "seeded")
        assert await feed.join("file") == (Snapshot(1, "file"), "kept")
        assert await feed.change("mine", based_on=1) == Snapshot(2, "mine")
        assert await feed.change("theirs", based_on=1) is None  # made on version 1: would lose "mine"
        assert await feed.version() == 2 and (await feed.snapshot()).text == "mine"
        assert await feed.join("file") == (Snapshot(2, "mine"), "kept")  # a restart keeps the admin change
        assert await feed.join("edited") == (Snapshot(2, "mine"), "file differs")  # and so does an edited file
        assert await feed.change("reloaded", based_on=2, from_file=True) == Snapshot(3, "reloaded")  # published
        assert await feed.join("reloaded") == (Snapshot(3, "reloaded"), "kept")
        await feed.redis.delete(feed.key)  # Redis lost its data
        assert await feed.change("after the loss", based_on=3) is None  # nothing to build on: re-read first
        assert await feed.seed(Snapshot(3, "running"), "reloaded") == Snapshot(3, "running")
        assert await feed.seed(Snapshot(1, "another"), "reloaded") == Snapshot(3, "running")
        assert await feed.join("reloaded") == (Snapshot(3, "running"), "kept")

    feed_scenario(scenario)


@needs_redis
def test_a_process_started_later_runs_redis_copy_even_if_its_file_was_edited(tmp_path, caplog):
    """Once set, the shared registry is the source of truth: a process restarting with an edited (or stale) file
    runs the fleet's copy and says so; publishing the file is an explicit admin action (a reload)."""
    experts = tmp_path / "experts.yaml"
    shutil.copy(FIXTURES / "working-experts.yaml", experts)
    entry = f"  - {{name: poet, engine: local, model: '{POET['model']}', params_b: 0.135}}\n"

    async def scenario(feed: RegistryFeed):
        await feed.join(experts.read_text())
        await feed.change(experts.read_text() + entry, based_on=1)  # an admin change
        store = FeedStore(feed, experts)
        registry = await store.open(None)
        assert "poet" in registry.names and store.held.version == 2
        assert "poet" not in experts.read_text()
        experts.write_text(experts.read_text() + "# edited by hand\n")
        edited = FeedStore(feed, experts)
        assert "poet" in (await edited.open(None)).names and edited.held.version == 2
        assert await feed.version() == 2 and "poet" in (await feed.snapshot()).text  # the fleet's copy untouched
        assert "POST /v1/experts/reload publishes the file" in caplog.text

    feed_scenario(scenario)


@needs_redis
def test_a_version_this_host_cannot_fully_serve_is_run_and_reported(tmp_path, caplog, monkeypatch):
    """The shared registry is the source of truth: a process without an expert's api_key_env (or its weights)
    runs the fleet's version all the same, at start and when it follows a change, serves the rest, and says
    what it cannot serve (`problems`: /readyz and coe_registry_problems; an error line) rather than stay
    silently on an older version or refuse to start."""
    experts = tmp_path / "experts.yaml"
    shutil.copy(FIXTURES / "working-experts.yaml", experts)
    monkeypatch.delenv("COE_PROVIDER_ABSENT_KEY", raising=False)
    hosted = "  - {name: hosted, engine: openai, model: m, api_key_env: COE_PROVIDER_ABSENT_KEY, params_b: 1}\n"

    async def scenario(feed: RegistryFeed):
        await feed.join(experts.read_text())
        await feed.change(experts.read_text() + hosted, based_on=1)  # added where the variable is set
        restarted = FeedStore(feed, experts)
        assert "hosted" in (await restarted.open(None)).names and restarted.held.version == 2
        assert [p.split("field ")[1] for p in restarted.problems] == [
            "'api_key_env': environment variable COE_PROVIDER_ABSENT_KEY is not set"]

        follower_store = FeedStore(feed, experts)
        await follower_store.open(None)
        await feed.change(experts.read_text(), based_on=2)  # hosted removed: nothing missing any more
        taken = []

        async def take_up():
            snapshot = await follower_store.current()
            taken.append(follower_store.parse(snapshot).names)
            follower_store.held = snapshot

        stop = asyncio.Event()
        follower = asyncio.create_task(follower_store.follow(take_up, stop))
        try:
            await eventually(lambda: follower_store.held.version == 3, "version 3 taken up")
            assert "hosted" not in taken[-1] and follower_store.problems == []
            await feed.change(experts.read_text() + hosted, based_on=3)
            await eventually(lambda: follower_store.held.version == 4, "version 4 taken up despite the missing key")
            assert "hosted" in taken[-1] and len(follower_store.problems) == 1
            assert "registry version 4 runs here without what this host lacks" in caplog.text
        finally:
            stop.set()
            await follower

    feed_scenario(scenario)


@needs_redis
def test_a_follower_takes_up_each_new_version_and_puts_back_a_lost_copy(tmp_path):
    async def scenario(feed: RegistryFeed):
        store = FeedStore(feed, tmp_path / "experts.yaml")
        store.file_text = "v1"
        store.held, _ = await feed.join("v1")
        seen = []

        async def take_up():
            store.held = await store.current()
            seen.append(store.held)

        stop = asyncio.Event()
        follower = asyncio.create_task(store.follow(take_up, stop))
        try:
            await asyncio.sleep(0.2)
            await feed.change("v2", based_on=1)
            await eventually(lambda: seen == [Snapshot(2, "v2")], "the change taken up")
            await feed.redis.delete(feed.key)  # Redis lost its data
            await eventually(lambda: feed.redis.exists(feed.key), "the copy put back")
            assert await feed.snapshot() == Snapshot(2, "v2") and seen == [Snapshot(2, "v2")]
            assert await feed.join("v1") == (Snapshot(2, "v2"), "kept")
        finally:
            stop.set()
            await follower

    feed_scenario(scenario)


async def eventually(check, what: str) -> None:
    """Wait until `check()` (a value, or an awaitable of one) holds; fails after PROPAGATION_S."""
    deadline = time.monotonic() + PROPAGATION_S
    while True:
        result = check()
        if asyncio.iscoroutine(result) or asyncio.isfuture(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what} not within {PROPAGATION_S}s"
        await asyncio.sleep(0.05)


# --- real processes -----------------------------------------------------------------------------
@dataclass
class Cluster:
    redis: RedisServer
    replicas: list[RunningServer]
    worker: WorkerProc
    experts: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    tmp = tmp_path_factory.mktemp("shared-registry")
    with running_redis(tmp) as rds:
        config = tmp / "config"
        config.mkdir()
        experts = config / "experts.yaml"
        shutil.copy(FIXTURES / "working-experts.yaml", experts)
        read_only(experts, config)
        env = {"COE_REDIS_URL": rds.url, "COE_ADMIN_KEY": ADMIN, "COE_MAX_TOKENS_CAP": "4", "COE_LOG_LEVEL": "info"}
        worker = WorkerProc(tmp, "w1", experts, rds.url)
        replicas = []
        try:
            with ThreadPoolExecutor(2) as pool:  # all three start at once: one of them seeds Redis from the file
                starting = [pool.submit(start_server, tmp, experts, env) for _ in range(2)]
            replicas = [f.result() for f in starting if f.exception() is None]
            for f in starting:
                if f.exception() is not None:
                    raise f.exception()
            worker.wait_ready()
            yield Cluster(rds, replicas, worker, experts)
        finally:
            for srv in replicas:
                stop_server(srv)
            worker.end()
            writable(experts, config)


def admin(server, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{server.v1}/experts{path}", headers=bearer(ADMIN), timeout=60, **kwargs)


def listing(server) -> dict:
    return httpx.get(f"{server.v1}/models", timeout=10).json()


def ids(server) -> set[str]:
    return {m["id"] for m in listing(server)["data"]}


def ready_version(server) -> int:
    ready = httpx.get(f"{server.base_url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    return ready.json()["registry_version"]


def within(check, what: str, limit: float = PROPAGATION_S) -> float:
    """Seconds until `check()` held; fails if that took longer than `limit`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit, f"{what} not within {limit}s"
        time.sleep(0.05)
    return time.monotonic() - started


def chat(server, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "A line about the sea."}], "max_tokens": 4}
    return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120)


def test_every_process_runs_the_seeded_version(cluster):
    one, two = cluster.replicas
    assert ready_version(one) == ready_version(two) == int(cluster.redis.client().hget("coe:registry", "version"))
    assert listing(one)["registry_version"] == ready_version(one)
    assert "registry version" in cluster.worker.log()


def test_a_change_through_one_replica_reaches_the_other_and_the_worker(cluster):
    one, two = cluster.replicas
    before = ready_version(one)
    added = admin(one, "POST", "", json=POET)
    assert added.status_code == 201, added.text
    assert added.json()["registry_version"] == before + 1 and added.json()["backup"] is None
    within(lambda: "poet" in ids(two), "replica 2 listing poet")
    assert ready_version(one) == ready_version(two) == before + 1
    within(lambda: f"registry version {before + 1} taken up" in cluster.worker.log(), "the worker taking it up")
    answer = chat(two, "poet")  # replica 2 runs no model: the worker answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["coe"]["experts"] == ["poet"] and answer.json()["choices"][0]["message"]["content"]

    removed = admin(two, "DELETE", "/poet")
    assert removed.status_code == 200 and removed.json()["removed"] == ["poet"]
    within(lambda: "poet" not in ids(one), "poet gone from replica 1")
    assert chat(one, "poet").status_code == 404
    assert ready_version(one) == ready_version(two) == before + 2
    within(lambda: f"registry version {before + 2} taken up" in cluster.worker.log(), "the worker taking it up")


def test_concurrent_changes_through_both_replicas_all_land(cluster):
    one, two = cluster.replicas
    before = ready_version(one)
    names = [f"poet{i}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        added = list(pool.map(lambda i: admin((one, two)[i % 2], "POST", "", json={**POET, "name": names[i]}),
                              range(6)))
    assert [r.status_code for r in added] == [201] * 6, [r.text for r in added]
    assert sorted(r.json()["registry_version"] for r in added) == list(range(before + 1, before + 7))
    assert all(r.json()["added"] == [n] for r, n in zip(added, names))
    for server in (one, two):
        within(lambda: set(names) <= ids(server), "every added expert on both replicas")
    with ThreadPoolExecutor(6) as pool:
        removed = list(pool.map(lambda i: admin((two, one)[i % 2], "DELETE", f"/{names[i]}"), range(6)))
    assert [r.status_code for r in removed] == [200] * 6, [r.text for r in removed]
    for server in (one, two):
        within(lambda: not set(names) & ids(server), "every removed expert gone from both replicas")
    assert ready_version(one) == ready_version(two) == before + 12


def test_the_read_only_file_is_only_the_seed_and_reload_publishes_it(cluster):
    one, two = cluster.replicas
    seed, stat = cluster.experts.read_text(), cluster.experts.stat()
    assert admin(one, "POST", "", json=POET).status_code == 201
    assert cluster.experts.read_text() == seed and cluster.experts.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in cluster.experts.parent.iterdir()) == ["experts.yaml"]  # no .bak, no temp file
    assert "name: poet" in cluster.redis.client().hget("coe:registry", "text")
    within(lambda: "poet" in ids(two), "replica 2 listing poet")
    reloaded = admin(two, "POST", "/reload")  # the file, as it is, for everyone
    assert reloaded.status_code == 200 and reloaded.json()["removed"] == ["poet"]
    within(lambda: "poet" not in ids(one), "the reload reaching replica 1")
    assert ready_version(one) == ready_version(two) == reloaded.json()["registry_version"]


def test_an_invalid_change_is_refused_and_publishes_nothing(cluster):
    one, _ = cluster.replicas
    r = cluster.redis.client()
    before = r.hgetall("coe:registry")
    refused = admin(one, "POST", "", json={**POET, "name": "stem"})
    assert refused.status_code == 422 and "duplicate name" in str(refused.json()["error"]["problems"])
    assert r.hgetall("coe:registry") == before


def test_redis_that_lost_the_registry_gets_the_running_copy_back(cluster):
    one, two = cluster.replicas
    r = cluster.redis.client()
    before = r.hgetall("coe:registry")
    r.delete("coe:registry")
    within(lambda: r.exists("coe:registry"), "the copy put back")
    assert r.hgetall("coe:registry") == before
    added = admin(two, "POST", "", json=POET)
    assert added.status_code == 201 and added.json()["registry_version"] == int(before["version"]) + 1
    within(lambda: "poet" in ids(one), "replica 1 listing poet")
    assert admin(one, "DELETE", "/poet").status_code == 200
