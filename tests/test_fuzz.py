"""Property-based fuzzing of the running service from its own OpenAPI schema (schemathesis).

Every operation gets a bounded number of generated requests, valid ones and invalid ones; each
response must be no 5xx, a status the schema declares, the declared content type, and a body that
matches the schema, and the server must still be running afterwards. Generation is kept cheap by the
server's settings: max_tokens capped at 4, at most 8 messages and 400 characters per request (longer
generated chats get a 400, which is checked like any other answer). No keys are set, so the query endpoints are open and the
admin endpoints answer 403: they are fuzzed for conformance only (test_admin.py covers what they do).

The schema is the app's own (create_app(...).openapi(), the same document /openapi.json serves), read
at collection time so each operation is its own test. schemathesis' pytest plugin is not used: it
does not run under pytest 9; its strategies are driven with hypothesis directly.
"""

from __future__ import annotations

import os
import shutil

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from coe_evals.fuzz_cases import cases as hostile_cases
from coe_evals.fuzz_schema import aimed_at, operation_modes, schema
from tests.conftest import ROOT, start_server, stop_server

# CI replays the same examples every run (a red CI blocks landing); a developer's run explores new ones.
DERANDOMIZE = bool(os.environ.get("CI"))

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 20

SCHEMA = schema()
CASES = [pytest.param(op, mode, id=f"{op.label} {mode}") for op, mode in operation_modes(SCHEMA)]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    experts = tmp / "experts.yaml"
    shutil.copy(ROOT / "tests" / "fixtures" / "working-experts.yaml", experts)  # only working experts: a broken one answers 502 by design
    srv = start_server(tmp, experts, env={"COE_MAX_TOKENS_CAP": "4", "COE_MAX_K": "2", "COE_MAX_CHARS": "400", "COE_MAX_MESSAGES": "8"})
    yield srv
    stop_server(srv)


def fuzz(server, strategy) -> None:
    """Send every generated case to the running server, check each answer, and check the server lived."""

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(base_url=server.base_url, checks=CHECKS, timeout=120)

    run()
    assert server.proc.poll() is None, "the server died"


@pytest.mark.parametrize("operation, mode", CASES)
def test_operation_conforms(fuzz_server, operation, mode):
    fuzz(fuzz_server, operation.as_strategy(generation_mode=mode))


@pytest.mark.parametrize("model", ["coe", "generalist"])
def test_generated_chats_that_reach_the_experts(fuzz_server, model):
    """Random model names mostly get 404; here every generated chat names a real model, so it is generated."""
    fuzz(fuzz_server, SCHEMA["/v1/chat/completions"]["POST"].as_strategy().map(aimed_at(model)))


def test_hand_written_hostile_requests_get_a_client_error_or_an_answer_never_a_5xx(fuzz_server):
    """What a schema-driven fuzzer does not think of (evals/fuzz_cases.py): huge stop lists, 200k-character prompts,
    deep content-part arrays, JSON nested 100,000 deep, tool and developer messages, wrong types, invalid UTF-8,
    NaN, oversized headers. Each gets an HTTP answer below 500, every refusal in OpenAI's error shape."""
    answers = {}
    with httpx.Client(base_url=fuzz_server.base_url, timeout=120) as http:
        for hostile in hostile_cases("generalist"):
            resp = http.post(hostile.path, **hostile.request())
            answers[hostile.name] = resp.status_code
            assert resp.status_code < 500, (hostile.name, resp.status_code, resp.text[:500])
            if resp.status_code >= 400:
                assert set(resp.json()["error"]) >= {"message", "type", "code"}, (hostile.name, resp.text[:500])
    assert answers["developer-message"] == 200 and answers["tool-message"] == 200, answers
    assert answers["stop-20000-strings"] == answers["json-nested-100000-deep"] == 400, answers
    assert {answers[n] for n in answers if n.startswith("lone-surrogate")} == {400}, answers  # were 500
    assert fuzz_server.proc.poll() is None, "the server died"
