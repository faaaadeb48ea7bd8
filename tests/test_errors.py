"""Bad input gets OpenAI's error format and the right status; the server keeps answering."""

from __future__ import annotations

import httpx
import openai
import pytest

VALID = {"model": "coe", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def post(server, body=None, content=None, headers=None) -> httpx.Response:
    return httpx.post(f"{server.v1}/chat/completions", json=body, content=content, headers=headers, timeout=120)


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({**VALID, "messages": []}, 400, "messages"),
        ({**VALID, "model": "no-such-model"}, 404, "model"),
        ({k: v for k, v in VALID.items() if k != "messages"}, 400, "messages"),
        ({**VALID, "temperature": 5}, 400, "temperature"),
        ({**VALID, "max_tokens": 0}, 400, "max_tokens"),
        ({**VALID, "n": 2}, 400, "n"),
        ({**VALID, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({**VALID, "coe": {"k": 0}}, 400, "coe.k"),
        ({**VALID, "coe": {"router": "no-such-router"}}, 400, "coe.router"),
        ({**VALID, "seed": 2**64 + 1}, 400, "seed"),
    ],
    ids=["empty-messages", "unknown-model", "missing-messages", "temperature-range", "max-tokens-zero", "n-two",
         "bad-role", "bad-k", "unknown-router", "seed-over-64-bits"],
)
def test_bad_requests(server, body, status, param):
    assert_openai_error(post(server, body), status, param)


def test_schema_errors_are_400_as_openai_answers_them_through_the_openai_client(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="coe", messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert info.value.body["param"] == "temperature" and info.value.body["code"] == "invalid_value"


def test_the_schema_declares_400_for_schema_errors_and_no_422(server):
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/route"):
        assert "400" in schema["paths"][path]["post"]["responses"]
        assert "422" not in schema["paths"][path]["post"]["responses"]


def test_an_empty_route_input_is_400(server):
    resp = httpx.post(f"{server.v1}/route", json={"input": []}, timeout=60)
    assert assert_openai_error(resp, 400, "input")["code"] == "invalid_value"


@pytest.mark.parametrize("stop", [[f"s{i}" for i in range(5)], "x" * 257, ["ok", "y" * 257]],
                         ids=["five-strings", "one-too-long", "one-of-two-too-long"])
def test_more_than_four_stop_sequences_or_an_over_long_one_is_400(client, stop):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="stem", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       stop=stop)
    assert info.value.body["param"] == "stop" and info.value.body["code"] == "invalid_value"
    assert "at most 4 stop sequences of at most 256 characters each" in info.value.message


def test_four_stop_sequences_of_256_characters_are_accepted(client):
    resp = client.chat.completions.create(model="stem", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                          stop=[c * 256 for c in "wxyz"])
    assert resp.choices[0].finish_reason in ("stop", "length")


TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("field, value", [
    ("tools", [TOOL]), ("tool_choice", "required"), ("functions", [TOOL["function"]]), ("function_call", "auto"),
    ("response_format", {"type": "json_object"}), ("logprobs", True), ("top_logprobs", 2),
    ("logit_bias", {"42": -100}),
])
def test_a_field_the_service_cannot_honour_is_400_naming_it(client, field, value):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="stem", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={field: value})
    assert info.value.body["param"] == field and info.value.body["code"] == "unsupported_parameter"
    assert info.value.body["message"].startswith(f"{field}: not supported")


def test_those_fields_at_values_that_ask_for_nothing_are_accepted(client):
    resp = client.chat.completions.create(model="stem", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                          response_format={"type": "text"}, logprobs=False, tool_choice="none",
                                          logit_bias={})
    assert resp.choices[0].message.content is not None


def test_the_developer_role_is_read_as_the_system_role(client):
    """A system message (so a developer message) replaces the expert's own system prompt: the same prompt tokens."""
    def prompt_tokens(role: str) -> int:
        messages = [{"role": role, "content": "Answer in French."}, {"role": "user", "content": "Name a colour."}]
        return client.chat.completions.create(model="stem", messages=messages, max_tokens=1).usage.prompt_tokens

    assert prompt_tokens("developer") == prompt_tokens("system")


def test_malformed_json_is_400(server):
    error = assert_openai_error(post(server, content=b'{"model": "coe", "messages": [', headers={"content-type": "application/json"}), 400)
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize("body", [b"[" * 5_000 + b"]" * 5_000, b'{"model": "coe", "messages": "\xff\xfe"}'],
                         ids=["nested-5000-deep", "invalid-utf8"])
def test_a_body_json_cannot_read_is_400_invalid_json_too(server, body):
    error = assert_openai_error(post(server, content=body, headers={"content-type": "application/json"}), 400)
    assert error["code"] == "invalid_json"


def test_body_over_the_cap_is_413(server):
    huge = {**VALID, "messages": [{"role": "user", "content": "x" * 30_000}]}
    assert_openai_error(post(server, huge), 413)


def test_body_over_the_cap_without_content_length_is_413(server):
    def chunks():
        yield b'{"model": "coe", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 1000
        yield b'"}]}'

    assert_openai_error(post(server, content=chunks(), headers={"content-type": "application/json"}), 413)


TOO_LONG = [{"role": "user", "content": "9" * 18_000}]  # 18,000 tokens for SmolLM2 (8,192-token context), under the body cap


def test_a_prompt_over_the_experts_context_is_400_and_spares_the_requests_batched_with_it(client):
    """Sent together, the two may share one engine batch: only the over-long one is refused."""
    import concurrent.futures

    def ask(messages):
        try:
            return client.chat.completions.create(model="stem", messages=messages, max_tokens=4)
        except openai.APIStatusError as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(ask, [TOO_LONG, [{"role": "user", "content": "Name a prime number."}], TOO_LONG]))
    refused, fine, _ = answers
    assert fine.choices[0].message.content.strip()
    assert isinstance(refused, openai.BadRequestError), refused
    assert refused.body["code"] == "context_length_exceeded" and refused.body["param"] == "messages"
    assert refused.body["type"] == "invalid_request_error"
    assert "maximum context length is 8192 tokens" in refused.message


def test_a_streamed_prompt_over_the_experts_context_ends_with_that_error(client):
    stream = client.chat.completions.create(model="stem", messages=TOO_LONG, max_tokens=4, stream=True)
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert info.value.code == "context_length_exceeded" and "maximum context length" in info.value.message


def test_unknown_model_through_the_openai_client(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-17" in info.value.message


def test_engine_failure_of_a_named_expert_is_502(server):
    error = assert_openai_error(post(server, {**VALID, "model": "astrologer"}), 502)
    assert "astrologer" in error["message"] and "could not be loaded" in error["message"]


def test_engine_failure_of_a_routed_expert_falls_back(server):
    body = {**VALID, "messages": [{"role": "user", "content": "What does my horoscope say for Leo, given my zodiac sign?"}]}
    resp = post(server, body)
    assert resp.status_code == 200, resp.text
    coe = resp.json()["coe"]
    assert coe["experts"] == ["astrologer"]
    assert coe["fallback_after_error"] == "astrologer"
    assert coe["answers"][0]["expert"] == "generalist"


HOROSCOPE = [{"role": "user", "content": "What does my horoscope say for Leo, given my zodiac sign?"}]


def test_a_routed_stream_whose_expert_fails_before_its_first_token_is_answered_by_the_fallback(client):
    stream = client.chat.completions.create(model="coe", messages=HOROSCOPE, max_tokens=8, stream=True)
    pieces, coe = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            coe = chunk.model_extra["coe"]
    assert coe["experts"] == ["astrologer"] and coe["fallback_after_error"] == "astrologer"
    assert [a["expert"] for a in coe["answers"]] == ["generalist"]
    assert "could not be loaded" in coe["failed_experts"]["astrologer"]
    assert "".join(pieces).strip() and "".join(pieces) == coe["answers"][0]["content"]


def test_a_stream_that_names_a_failing_expert_ends_with_its_error(client):
    stream = client.chat.completions.create(model="astrologer", messages=HOROSCOPE, max_tokens=8, stream=True)
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert "astrologer" in info.value.message and "could not be loaded" in info.value.message
    assert info.value.body["code"] == "expert_failed"


def test_with_two_experts_a_failed_one_is_left_out_and_named(server):
    body = {**VALID, "coe": {"k": 2},
            "messages": [{"role": "user", "content": "What does my horoscope say for Leo, given my zodiac sign?"}]}
    resp = post(server, body)
    assert resp.status_code == 200, resp.text
    coe = resp.json()["coe"]
    assert "astrologer" in coe["experts"] and len(coe["experts"]) == 2
    assert "could not be loaded" in coe["failed_experts"]["astrologer"]
    [kept] = [e for e in coe["experts"] if e != "astrologer"]
    assert [a["expert"] for a in coe["answers"]] == [kept] and coe["aggregator"] is None
    assert resp.json()["choices"][0]["message"]["content"] == coe["answers"][0]["content"]


@pytest.mark.parametrize("router", ["oracle", "random", "single_best"])
def test_benchmark_routers_cannot_be_chosen_by_clients(server, router):
    error = assert_openai_error(post(server, {**VALID, "coe": {"router": router}}), 400, "coe.router")
    assert "benchmark" in error["message"]
    assert all(name in error["message"] for name in ("two_stage", "skills", "centroid", "knn"))


@pytest.mark.parametrize("router", ["two_stage", "knn"])
def test_a_serving_router_without_its_trained_artifact_is_400_with_the_fix(server, router):
    error = assert_openai_error(post(server, {**VALID, "coe": {"router": router}}), 400, "coe.router")
    assert "coe train" in error["message"]


def test_unknown_route_is_a_json_404(server):
    assert_openai_error(httpx.get(f"{server.base_url}/v1/nothing-here"), 404)


def test_server_still_answers_after_all_of_it(server, client):
    resp = client.chat.completions.create(model="generalist", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4)
    assert resp.choices[0].message.content
    assert server.proc.poll() is None
