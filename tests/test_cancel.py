"""Cancellation: a caller that goes away (or runs out of time) takes its job with it.

In-process (real local engine, real worker): a running job that is cancelled stops at the next decoding step.
Over HTTP (a real server, real weights): a queued request whose client disconnects is never started, and a
stream whose client disconnects stops generating; the metrics count both.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time

import httpx
import pytest

from tests.conftest import ROOT, start_server, stop_server
from tests.test_local_engine import MODEL_REF
from workers.jobs import GenerationRequest, Job
from workers.queue import Delta
from workers.queue_memory import MemoryQueue

COUNT = "Count from 1 to 1000, one number per line."


def test_a_running_job_on_the_local_engine_stops_when_cancelled(tmp_path):
    from coe.core.registry import load_registry
    from workers.worker import Worker

    (tmp_path / "experts.yaml").write_text(f"""version: 1
experts:
  - {{name: counter, engine: local, model: "{MODEL_REF}", params_b: 0.135}}
""")

    async def main():
        q = MemoryQueue()
        w = Worker(load_registry(tmp_path / "experts.yaml"), q)
        stop = asyncio.Event()
        runner = asyncio.create_task(w.run(stop))
        job = Job(expert="counter", stream=True, request=GenerationRequest(
            messages=[{"role": "user", "content": COUNT}], max_tokens=1000, temperature=0.0))
        await q.submit(job)
        deltas, result = 0, None
        async for event in q.events(job.id, timeout=120):
            if isinstance(event, Delta):
                deltas += 1
                if deltas == 3:
                    await q.cancel(job.id)
            else:
                result = event
        stop.set()
        await runner
        assert result.error_type == "cancelled" and not result.ok
        tokens = int(re.search(r"after (\d+) tokens", result.error).group(1))
        assert tokens < 200, "the engine kept going after the cancel"
        assert (await q.counters())["cancelled_running"] == 1

    asyncio.run(main())


def cancelled(server, stage: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    found = re.search(rf'coe_jobs_cancelled_total{{stage="{stage}"}} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def srv(tmp_path):
    experts = tmp_path / "experts.yaml"
    shutil.copy(ROOT / "tests" / "fixtures" / "working-experts.yaml", experts)
    server = start_server(tmp_path, experts, env={"COE_MAX_TOKENS_CAP": "1000"})
    yield server
    stop_server(server)


def test_clients_that_disconnect_cancel_their_jobs(srv):
    long = {"model": "generalist", "max_tokens": 1000, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": COUNT}]}
    with httpx.stream("POST", f"{srv.v1}/chat/completions", json=long, timeout=120) as running:
        lines = running.iter_lines()  # kept: a line iterator that is dropped closes the connection
        for line in lines:  # until the running job has streamed some text
            if '"content": "' in line and '"content": ""' not in line:
                break
        queued = {"model": "generalist", "max_tokens": 50, "messages": [{"role": "user", "content": "Hello!"}]}
        with pytest.raises(httpx.ReadTimeout):  # waits behind the running job; the client gives up
            httpx.post(f"{srv.v1}/chat/completions", json=queued, timeout=1.5)
        time.sleep(1.5)
    deadline = time.time() + 60
    while (cancelled(srv, "queued") < 1 or cancelled(srv, "running") < 1) and time.time() < deadline:
        time.sleep(0.5)
    assert (cancelled(srv, "queued"), cancelled(srv, "running")) == (1.0, 1.0)
    after = httpx.post(f"{srv.v1}/chat/completions", timeout=120,
                       json={"model": "generalist", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
    assert after.status_code == 200
