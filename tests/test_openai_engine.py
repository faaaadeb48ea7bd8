"""The `openai` engine (LiteLLM) against a real OpenAI-compatible server: a running coe server with real weights."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import free_port, start_server, stop_server
from workers.engines import create_engine
from workers.engines.base import EngineError, EngineOptions, EngineSpec
from workers.jobs import GenerationRequest


def spec(model: str, api_base: str | None, api_key_env: str | None = None, **options) -> EngineSpec:
    return EngineSpec(key=f"openai|{model}|remote", engine="openai", model=model, model_path=None, device="remote",
                      memory_gb=1.0, max_batch=4, api_base=api_base, api_key_env=api_key_env,
                      options=EngineOptions(**options))


def ask(text: str, max_tokens: int = 6) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0.0)


@pytest.fixture(scope="module")
def engine(server):
    e = create_engine(spec("openai/stem", server.v1))
    e.load()
    return e


def test_a_batch_is_answered_in_order(engine):
    out = engine.generate([ask("What is 2+2?"), ask("Name a planet.")])
    assert len(out) == 2
    for c in out:
        assert c.text.strip() and c.prompt_tokens > 0 and 0 < c.completion_tokens <= 6
        assert c.finish_reason in ("stop", "length")


def test_streaming_reports_deltas_per_row(engine):
    seen: dict[int, list[str]] = {0: [], 1: []}
    out = engine.generate([ask("What is water made of?"), ask("Say hello.")], lambda row, text: seen[row].append(text))
    for row, c in enumerate(out):
        assert c.text and "".join(seen[row]) == c.text


def test_submit_streams_text_as_it_arrives(engine):
    async def go():
        seen: list[tuple[float, str]] = []
        out = await engine.submit(ask("Tell me about the sea.", max_tokens=24), lambda t: seen.append((time.perf_counter(), t)))
        return seen, out, time.perf_counter()

    seen, out, ended = asyncio.run(go())
    assert len(seen) > 1 and "".join(t for _, t in seen) == out.text and out.completion_tokens > 1
    assert seen[0][0] < ended


def test_submitted_requests_run_side_by_side(engine):
    async def go():
        return await asyncio.gather(*(engine.submit(ask(q)) for q in ("What is 2+2?", "Name a planet.", "Say hi.")))

    out = asyncio.run(go())
    assert all(c.text.strip() and c.prompt_tokens > 0 for c in out)


def test_cancel_closes_the_stream_and_returns_what_came(engine):
    req = ask("Describe the history of Rome in detail.", max_tokens=32)

    async def go():
        full = await engine.submit(req)
        cancelled, pieces = asyncio.Event(), []

        def on_text(text: str) -> None:
            pieces.append(text)
            cancelled.set()

        cut = await engine.submit(req, on_text, cancelled)
        task = asyncio.create_task(engine.submit(req, lambda t: None))  # cancelling the task stops it too
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        again = await engine.submit(ask("What is 2+2?"))  # the engine keeps serving after both cancels
        return full, cut, pieces, again

    full, cut, pieces, again = asyncio.run(go())
    assert cut.finish_reason == "cancelled" and cut.text == "".join(pieces)
    assert full.text.startswith(cut.text) and len(cut.text) < len(full.text)  # greedy: a prefix, cut short
    assert again.text.strip()


def test_unknown_model_is_a_clear_engine_error(server):
    e = create_engine(spec("openai/no-such-expert", server.v1))
    e.load()
    with pytest.raises(EngineError, match="no-such-expert"):
        e.generate([ask("hi")])


def test_unreachable_server_is_a_clear_engine_error():
    base = f"http://127.0.0.1:{free_port()}/v1"
    e = create_engine(spec("openai/stem", base, openai_timeout_s=5, openai_retries=0))
    e.load()
    with pytest.raises(EngineError, match=r"127\.0\.0\.1") as info:
        e.generate([ask("hi")])
    assert "Connection" in str(info.value)


def test_missing_key_variable_is_named(server, monkeypatch):
    monkeypatch.delenv("COE_TEST_NO_SUCH_KEY", raising=False)
    e = create_engine(spec("openai/stem", server.v1, api_key_env="COE_TEST_NO_SUCH_KEY"))
    with pytest.raises(EngineError, match="COE_TEST_NO_SUCH_KEY"):
        e.load()


def test_coe_in_front_of_an_openai_expert(server, tmp_path):
    """A second coe whose only expert is the first coe's `stem`, reached through the openai engine."""
    experts = tmp_path / "experts.yaml"
    experts.write_text(f"""version: 1
experts:
  - name: remote-stem
    engine: openai
    model: openai/stem
    api_base: {server.v1}
    device: cpu
    params_b: 0.135
    categories: [math]
    generation: {{max_tokens: 6, temperature: 0.0}}
    fallback: true
""")
    front = start_server(tmp_path, experts)
    try:
        from openai import OpenAI

        client = OpenAI(base_url=front.v1, api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="remote-stem", messages=[{"role": "user", "content": "What is 3+3?"}])
        assert r.choices[0].message.content.strip()
        assert r.model_extra["coe"]["experts"] == ["remote-stem"]
        chunks = list(client.chat.completions.create(
            model="coe", stream=True, messages=[{"role": "user", "content": "What is a prime number?"}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip()
    finally:
        stop_server(front)
