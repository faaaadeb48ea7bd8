"""The service end to end: a real server, real weights, the official openai client."""

from __future__ import annotations

import httpx
import pytest


def test_routed_completion_is_real_text_with_coe_metadata(client):
    resp = client.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "What is the derivative of x squared?"}], max_tokens=12)
    text = resp.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0
    coe = resp.model_extra["coe"]
    assert coe["router"] == "centroid"
    assert coe["experts"] == ["stem"]
    assert coe["category"] in ("math", "physics", "science, technology, engineering and mathematics questions")
    assert 0.0 < coe["confidence"] <= 1.0
    assert [a["expert"] for a in coe["answers"]] == ["stem"]
    assert coe["answers"][0]["content"] == text
    for stage in ("embed", "route", "queue", "generate", "aggregate", "total"):
        assert coe["timings"][stage] >= 0.0
    assert coe["timings"]["total"] >= coe["timings"]["generate"]


def test_model_name_bypasses_routing(client):
    resp = client.chat.completions.create(
        model="humanities", messages=[{"role": "user", "content": "What is the derivative of x squared?"}], max_tokens=8)
    coe = resp.model_extra["coe"]
    assert coe["router"] == "bypass"
    assert coe["experts"] == ["humanities"]
    assert resp.choices[0].message.content.strip()


def test_streaming_delivers_text_in_pieces_and_metadata_at_the_end(client):
    stream = client.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "Tell me about the French revolution."}],
        max_tokens=16, stream=True, stream_options={"include_usage": True})
    pieces, finish, coe, usage = [], None, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        if chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
            coe = chunk.model_extra["coe"]
    assert len(pieces) > 1, "text should arrive as it is generated"
    assert finish in ("stop", "length")
    assert coe["experts"] == ["humanities"]
    assert coe["answers"][0]["content"] == "".join(pieces)
    assert usage.completion_tokens == coe["answers"][0]["completion_tokens"]


def test_same_answer_streamed_or_not_when_greedy(client):
    messages = [{"role": "user", "content": "Name a prime number."}]
    plain = client.chat.completions.create(model="stem", messages=messages, max_tokens=10, temperature=0)
    streamed = client.chat.completions.create(model="stem", messages=messages, max_tokens=10, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == plain.choices[0].message.content


def test_concurrent_requests_are_batched_and_all_answered(server):
    import concurrent.futures

    def ask(i: int) -> dict:
        body = {"model": "generalist", "max_tokens": 6, "messages": [{"role": "user", "content": f"Say hello number {i}."}]}
        return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120).json()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    assert all(a["choices"][0]["message"]["content"].strip() for a in answers)
    assert len({a["id"] for a in answers}) == 6


def test_models_lists_coe_and_every_expert(client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert page.registry_version == 1  # no Redis, no admin change: the file as it started
    assert ids[0] == "coe"
    assert {"stem", "humanities", "generalist", "aggregator", "astrologer"} <= set(ids)


def test_route_endpoint_decides_a_batch(server):
    body = {"input": ["Solve 2x + 3 = 7 for x.", "Who was Napoleon Bonaparte?"], "k": 2}
    resp = httpx.post(f"{server.v1}/route", json=body, timeout=60)
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert [d["experts"][0] for d in data] == ["stem", "humanities"]
    for d in data:
        assert len(d["experts"]) == 2
        assert len(d["top_categories"]) == 3
        assert d["confidence"] == pytest.approx(d["top_categories"][0]["probability"])
        assert d["fallback"] is False


def test_health_readiness_and_docs(server):
    assert httpx.get(f"{server.base_url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{server.base_url}/readyz").json()
    assert ready["status"] == "ready" and "stem" in ready["experts"] and ready["registry_version"] == 1
    assert httpx.get(f"{server.base_url}/docs").status_code == 200
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"]


def test_metrics_count_requests_stages_experts_and_queue(server, client):
    client.chat.completions.create(model="coe", messages=[{"role": "user", "content": "Integrate sin(x)."}], max_tokens=4)
    text = httpx.get(f"{server.base_url}/metrics").text
    assert 'coe_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'coe_stage_seconds_count{stage="embed"}' in text
    assert 'coe_stage_seconds_count{stage="generate"}' in text
    assert 'coe_routed_total{expert="stem",router="centroid"}' in text
    assert "coe_queue_depth" in text


def test_the_request_metric_is_labelled_by_route_not_by_raw_path(server):
    for i in range(5):
        httpx.get(f"{server.base_url}/scan-{i}/wp-login.php")
    httpx.delete(f"{server.base_url}/v1/experts/some-expert")
    text = httpx.get(f"{server.base_url}/metrics").text
    assert 'coe_requests_total{endpoint="unmatched",status="404"}' in text
    assert "scan-" not in text and "some-expert" not in text
    assert 'endpoint="/v1/experts/{name}"' in text
