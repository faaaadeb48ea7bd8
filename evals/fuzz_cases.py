"""Hand-written hostile requests: what a schema-driven fuzzer does not think of. Each must get a 2xx or 4xx answer
(never a 5xx, never a dropped connection) and leave the server as it was.

Grouped by what they attack: limits (huge stop lists, 200k-character prompts, bodies over the cap), structure
(deep content-part arrays, JSON nested past any recursion limit), roles (tool and developer messages, tool
calls), types (every field the wrong type), text (unicode edge cases, invalid UTF-8, NUL), numbers (NaN,
1e400) and headers (wrong content types, oversized Authorization, many headers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

CHAT = "/v1/chat/completions"
SHORT = [{"role": "user", "content": "Say yes."}]


@dataclass(frozen=True)
class Hostile:
    name: str
    body: dict | list | bytes
    path: str = CHAT
    headers: dict[str, str] = field(default_factory=dict)

    def request(self) -> dict:
        """httpx.request keyword arguments (method and URL aside)."""
        if isinstance(self.body, bytes):
            return {"content": self.body, "headers": {"content-type": "application/json", **self.headers}}
        return {"json": self.body, "headers": self.headers}


def _chat(model: str = "coe", **extra) -> dict:
    return {"model": model, "messages": SHORT, "max_tokens": 2, **extra}


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def cases(expert: str) -> list[Hostile]:
    """The list, with `expert` a real expert's name (so a request can get past routing to an engine)."""
    big = "word " * 40_000  # 200,000 characters
    return [
        # limits
        Hostile("stop-20000-strings", _chat(stop=[f"s{i}" for i in range(20_000)])),
        Hostile("stop-4-strings-of-100k", _chat(stop=["x" * 100_000] * 4)),
        Hostile("prompt-200k-routed", {"model": "coe", "max_tokens": 2, "messages": [{"role": "user", "content": big}]}),
        Hostile("prompt-200k-named", {"model": expert, "max_tokens": 2, "messages": [{"role": "user", "content": big}]}),
        Hostile("prompt-200k-emoji", {"model": expert, "max_tokens": 2,
                                      "messages": [{"role": "user", "content": "\U0001F600" * 200_000}]}),
        Hostile("prompt-200001-chars", {"model": expert, "messages": [{"role": "user", "content": "a" * 200_001}]}),
        Hostile("body-over-1MB", _chat(padding="p" * 1_100_000)),
        Hostile("messages-10000", {"model": expert, "max_tokens": 2, "messages": SHORT * 10_000}),
        Hostile("max-tokens-1e9", _chat(max_tokens=10**9)),
        Hostile("k-1000", _chat(coe={"k": 1000})),
        Hostile("n-1000", _chat(n=1000)),
        Hostile("logit-bias-100k-entries", _chat(logit_bias={str(i): 1 for i in range(100_000)})),
        Hostile("route-10000-inputs", {"input": ["hi"] * 10_000}, path="/v1/route"),
        # structure
        Hostile("content-parts-10000", {"model": expert, "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}] * 10_000}]}),
        Hostile("content-part-nested-lists", {"model": expert, "messages": [{"role": "user", "content": [[[["a"]]]]}]}),
        Hostile("json-nested-100000-deep", _raw('{"model": "coe", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}")),
        Hostile("content-object-nested-5000-deep", _raw('{"model": "coe", "messages": [{"role": "user", "content": '
                                                        + '{"a":' * 5_000 + "1" + "}" * 5_000 + "}]}")),
        Hostile("image-part", {"model": expert, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}),
        # roles
        Hostile("developer-message", {"model": expert, "max_tokens": 2, "messages": [
            {"role": "developer", "content": "Be brief."}, *SHORT]}),
        Hostile("tool-message", {"model": expert, "max_tokens": 2, "messages": [
            *SHORT, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}]}),
        Hostile("tools-and-tool-choice", _chat(expert, tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object"}}}], tool_choice="required")),
        Hostile("function-role", {"model": expert, "messages": [{"role": "function", "name": "f", "content": "x"}]}),
        Hostile("only-system", {"model": "coe", "messages": [{"role": "system", "content": "hi"}]}),
        Hostile("response-format-json-schema", _chat(expert, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}})),
        Hostile("logprobs-top-20", _chat(expert, logprobs=True, top_logprobs=20)),
        # types
        Hostile("messages-a-string", {"model": "coe", "messages": "hello"}),
        Hostile("content-a-number", {"model": "coe", "messages": [{"role": "user", "content": 42}]}),
        Hostile("model-a-list", {"model": ["coe"], "messages": SHORT}),
        Hostile("max-tokens-a-string", _chat(max_tokens="4")),
        Hostile("temperature-a-string", _chat(temperature="hot")),
        Hostile("stream-a-string", _chat(stream="yes")),
        Hostile("stop-a-number", _chat(stop=7)),
        Hostile("coe-a-list", _chat(coe=[1, 2])),
        Hostile("everything-null", {"model": None, "messages": None, "max_tokens": None, "temperature": None}),
        Hostile("body-a-list", [_chat()]),
        Hostile("body-empty", b""),
        Hostile("body-null", b"null"),
        Hostile("experts-post-wrong-types", {"name": 1, "engine": [], "model": {}}, path="/v1/experts"),
        # text
        Hostile("lone-surrogate", _raw('{"model": "coe", "max_tokens": 2, "messages": [{"role": "user", "content": '
                                       '"\\ud800 alone"}]}')),
        Hostile("lone-surrogate-in-a-part-and-stop", _raw(
            '{"model": "coe", "stop": ["\\udfff"], "messages": [{"role": "user", "content": [{"type": "text", '
            '"text": "\\udc00"}]}]}')),
        Hostile("lone-surrogate-route", _raw('{"input": ["ok", "\\ud83d"]}'), path="/v1/route"),
        Hostile("nul-and-controls", _chat(messages=[{"role": "user", "content": "a\x00b\x07c\x1bd"}])),
        Hostile("bidi-and-zero-width", _chat(messages=[{"role": "user", "content": "\u202eabc\u200b\u200d\ufeff"}])),
        Hostile("invalid-utf8", b'{"model": "coe", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'),
        Hostile("bom-before-json", b"\xef\xbb\xbf" + json.dumps(_chat()).encode()),
        Hostile("model-name-path-traversal", _chat(model="../../etc/passwd")),
        Hostile("model-name-10k", _chat(model="m" * 10_000)),
        # numbers
        Hostile("temperature-nan", _raw('{"model": "coe", "messages": [{"role": "user", "content": "hi"}], '
                                        '"temperature": NaN}')),
        Hostile("max-tokens-1e400", _raw('{"model": "coe", "messages": [{"role": "user", "content": "hi"}], '
                                         '"max_tokens": 1e400}')),
        Hostile("seed-huge-int", _chat(seed=10**40)),
        Hostile("duplicate-keys", _raw('{"model": "coe", "model": "nope", "messages": [{"role": "user", "content": "hi"}]}')),
        # headers
        Hostile("content-type-text", json.dumps(_chat()).encode(), headers={"content-type": "text/plain"}),
        Hostile("content-type-form", b"model=coe&messages=hi",
                headers={"content-type": "application/x-www-form-urlencoded"}),
        Hostile("content-type-huge-charset", json.dumps(_chat()).encode(),
                headers={"content-type": "application/json; charset=" + "x" * 4000}),
        Hostile("authorization-64k", _chat(), headers={"authorization": "Bearer " + "k" * 65_536}),
        Hostile("authorization-not-bearer", _chat(), headers={"authorization": "Basic Zm9vOmJhcg=="}),
        Hostile("admin-with-wrong-key", {"name": "x"}, path="/v1/experts", headers={"authorization": "Bearer nope"}),
        Hostile("many-headers", _chat(), headers={f"x-h{i}": "v" for i in range(500)}),
        Hostile("forwarded-for-spoof", _chat(), headers={"x-forwarded-for": ", ".join(["10.0.0.1"] * 1000)}),
    ]
