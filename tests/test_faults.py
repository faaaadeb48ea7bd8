"""Faults with real processes: our own redis-server, a `coe serve` over Redis, and two `coe worker` processes.

In file order: a broken expert, a worker SIGKILLed in the middle of a batch, Redis stopped and restarted
(append-only: the jobs it had accepted are answered after it, by a worker started only then), a
graceful SIGTERM, and a worker SIGKILLed in the middle of a stream (the client gets an error event, no
fallback). The processes are started once for the module (one model load per worker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.conftest import ROOT, start_server, stop_server
from tests.redis_server import needs_redis_server, running_redis

RECLAIM_IDLE_S = 4
pytestmark = needs_redis_server


class WorkerProc:
    def __init__(self, tmp: Path, name: str, experts: Path, redis_url: str):
        self.name = name
        self.log_path = tmp / f"{name}.log"
        env = {**os.environ, "COE_REDIS_URL": redis_url, "COE_EXPERTS_FILE": str(experts), "COE_LOG_LEVEL": "info",
               "COE_TORCH_THREADS": "1"}
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coe.cli", "worker", "--device", "cpu", "--name", name,
                 "--reclaim-idle-s", str(RECLAIM_IDLE_S)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if f"worker {self.name} ready" in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.3)
        raise RuntimeError(f"worker {self.name} not ready after {timeout}s:\n{self.log()}")

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, test_experts_file):
    tmp = tmp_path_factory.mktemp("faults")
    with running_redis(tmp) as rds:
        workers = {n: WorkerProc(tmp, n, test_experts_file, rds.url) for n in ("w1", "w2")}
        api = None
        try:
            api = start_server(tmp, test_experts_file, env={"COE_REDIS_URL": rds.url, "COE_MAX_TOKENS_CAP": "400",
                                                             "COE_REQUEST_TIMEOUT_S": "150"})
            for w in workers.values():
                w.wait_ready()
            yield rds, api, workers
        finally:
            if api is not None:
                stop_server(api)
            for w in workers.values():
                w.end()


def chat(api, model: str, text: str, max_tokens: int = 8, timeout: float = 150) -> httpx.Response:
    return httpx.post(f"{api.v1}/chat/completions", timeout=timeout,
                      json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens})


def test_a_broken_expert_fails_clearly_and_others_keep_working(cluster):
    _, api, _ = cluster
    direct = chat(api, "astrologer", "What does Leo's horoscope say this week?")
    assert direct.status_code == 502
    assert "astrologer" in direct.json()["error"]["message"] and "could not be loaded" in direct.json()["error"]["message"]
    routed = chat(api, "coe", "What does my zodiac sign and horoscope say? Astrology reading for Leo please.")
    assert routed.status_code == 200, routed.text
    info = routed.json()["coe"]
    assert info["fallback_after_error"] == "astrologer" and info["answers"][0]["expert"] == "generalist"
    fine = chat(api, "stem", "What is 2+2?")
    assert fine.status_code == 200 and fine.json()["choices"][0]["message"]["content"].strip()


def held_by(r: redis.Redis, consumer: str, experts: set[str]) -> list[str]:
    """Ids of the jobs `consumer` has claimed and not acknowledged."""
    ids = []
    for expert in experts:
        for entry in r.xpending_range(f"coe:jobs:{expert}", "workers", "-", "+", 100, consumername=consumer):
            [(_, fields)] = r.xrange(f"coe:jobs:{expert}", entry["message_id"], entry["message_id"])
            ids.append(json.loads(fields["job"])["id"])
    return ids


def test_jobs_of_a_sigkilled_worker_are_finished_by_another(cluster):
    rds, api, workers = cluster
    w1, w2 = workers["w1"], workers["w2"]
    r = rds.client()
    for w in (w1, w2):  # queue everything first, so that w1 claims one big batch
        w.proc.send_signal(signal.SIGSTOP)
    questions = [f"Explain in one sentence what {t} is." for t in
                 ("gravity", "an atom", "a prime number", "democracy", "a river", "photosynthesis")]
    models = ["stem", "humanities", "generalist"] * 2
    with ThreadPoolExecutor(len(questions)) as pool:
        futures = [pool.submit(chat, api, m, q, 16) for m, q in zip(models, questions)]
        deadline = time.time() + 60
        while sum(r.xlen(f"coe:jobs:{e}") for e in set(models)) < len(questions) and time.time() < deadline:
            time.sleep(0.05)
        w1.proc.send_signal(signal.SIGCONT)
        held: list[str] = []
        while len(held) < len(questions) and time.time() < deadline:  # until w1 holds its batch, unacknowledged
            time.sleep(0.1)
            held = held_by(r, "w1", set(models))
        assert len(held) == len(questions), f"w1 claimed {len(held)} jobs, not the whole batch"
        w1.proc.send_signal(signal.SIGKILL)
        w1.proc.wait()
        w2.proc.send_signal(signal.SIGCONT)
        responses = [f.result() for f in futures]
    assert [x.status_code for x in responses] == [200] * len(questions), [x.text for x in responses]
    assert all(x.json()["choices"][0]["message"]["content"].strip() for x in responses)
    for job_id in held:  # every job w1 died holding was answered once, by w2
        assert json.loads(r.get(f"coe:done:{job_id}"))["worker"] == "w2"
    assert "reclaimed job" in w2.log()
    assert sum(r.xlen(f"coe:jobs:{e}") for e in set(models)) == 0  # nothing left behind


def stream_chat(api, model: str, text: str, max_tokens: int = 8) -> tuple[int, str, dict | None]:
    """(status, the streamed text, the final chunk's coe object)."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
    pieces, info = [], None
    with httpx.stream("POST", f"{api.v1}/chat/completions", json=body, timeout=150) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                return 502, chunk["error"]["message"], None
            for choice in chunk["choices"]:
                pieces.append(choice["delta"].get("content") or "")
            info = chunk.get("coe") or info
        return resp.status_code, "".join(pieces), info


def test_jobs_accepted_before_a_redis_restart_are_answered_after_it(cluster, tmp_path_factory, test_experts_file):
    rds, api, workers = cluster
    w2, r = workers["w2"], rds.client()
    w2.proc.send_signal(signal.SIGSTOP)  # no worker runs (w2 is still announced, so requests are accepted)
    w3 = None
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(chat, api, "stem", "What is an atom?", 8),
                       pool.submit(chat, api, "humanities", "Who was Cicero?", 8),
                       pool.submit(stream_chat, api, "stem", "What is a prime number?"),
                       pool.submit(stream_chat, api, "generalist", "What is a river?")]
            deadline = time.time() + 60
            while sum(r.xlen(f"coe:jobs:{e}") for e in ("stem", "humanities", "generalist")) < 4:
                assert time.time() < deadline, "the four jobs were not queued"
                time.sleep(0.05)
            rds.stop()
            down = chat(api, "stem", "What is 1+1?", timeout=30)
            assert down.status_code == 503 and down.headers.get("Retry-After")
            assert "unavailable" in down.json()["error"]["message"]
            ready = httpx.get(f"{api.base_url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.headers.get("Retry-After")
            rds.start()  # the same folder: the append-only file brings back every accepted job
            w3 = WorkerProc(tmp_path_factory.mktemp("w3"), "w3", test_experts_file, rds.url)  # a worker, only now
            plain = [f.result() for f in futures[:2]]
            streamed = [f.result() for f in futures[2:]]
        assert [x.status_code for x in plain] == [200, 200], [x.text for x in plain]
        assert all(x.json()["choices"][0]["message"]["content"].strip() for x in plain)
        for status, text, info in streamed:  # each client got one generation, whole, once
            assert status == 200 and text.strip() and text == info["answers"][0]["content"]
        answered_by_w3 = [k for k in r.keys("coe:done:*") if json.loads(r.get(k))["worker"] == "w3"]
        assert len(answered_by_w3) == 4
        assert "already been answered" not in w3.log()
        assert httpx.get(f"{api.base_url}/readyz", timeout=10).status_code == 200
    finally:
        w2.proc.send_signal(signal.SIGCONT)
        if w3 is not None:
            w3.end()


def test_sigterm_finishes_the_running_batch_then_exits(cluster):
    rds, api, workers = cluster
    w2, r = workers["w2"], rds.client()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(chat, api, "stem", "Describe the water cycle.", 16)
        deadline = time.time() + 60
        while not r.xpending("coe:jobs:stem", "workers")["pending"] and time.time() < deadline:
            time.sleep(0.05)
        w2.proc.send_signal(signal.SIGTERM)
        answer = future.result()
    assert answer.status_code == 200, answer.text
    assert w2.proc.wait(60) == 0
    assert "stopping" in w2.log()


def holder(r: redis.Redis) -> tuple[str, str] | None:
    """(consumer, job id) of a job some worker has claimed and not acknowledged, if there is one."""
    for key in r.keys("coe:jobs:*"):
        for entry in r.xpending_range(key, "workers", "-", "+", 1):
            [(_, fields)] = r.xrange(key, entry["message_id"], entry["message_id"])
            return entry["consumer"], json.loads(fields["job"])["id"]
    return None


def test_a_stream_whose_worker_dies_after_its_first_token_ends_with_an_error_event(cluster, tmp_path_factory,
                                                                                   test_experts_file):
    """After text was sent nothing can take the answer over, not even the fallback of a routed request: the
    worker that takes the job over answers `interrupted`, and the client's stream ends with that error."""
    rds, api, workers = cluster
    tmp, r = tmp_path_factory.mktemp("midstream"), rds.client()
    workers = {**workers, "w4": WorkerProc(tmp, "w4", test_experts_file, rds.url)}
    try:
        workers["w4"].wait_ready()
        client = openai.OpenAI(base_url=api.v1, api_key="unused", max_retries=0, timeout=150)
        stream = client.chat.completions.create(
            model="coe", stream=True, max_tokens=400, temperature=0,
            messages=[{"role": "user", "content": "Write a long essay on the history of the Roman Republic."}])
        pieces, killed = [], None
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                if killed is None and chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    killed = holder(r)
                    workers[killed[0]].proc.send_signal(signal.SIGKILL)
                    workers[killed[0]].proc.wait()
                    workers["w5"] = WorkerProc(tmp, "w5", test_experts_file, rds.url)  # takes the job over
        consumer, job_id = killed
        assert pieces, "the stream sent text before its worker died"
        assert info.value.body["code"] == "expert_failed"
        assert "stopped after sending part of it" in info.value.message
        done = json.loads(r.get(f"coe:done:{job_id}"))
        assert done["error_type"] == "interrupted" and done["worker"] != consumer
    finally:
        for name in ("w4", "w5"):
            if name in workers:
                workers[name].end()
