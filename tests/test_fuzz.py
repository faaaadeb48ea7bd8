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

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from tests.conftest import ROOT, start_server, stop_server

# CI replays the same examples every run (a red CI blocks landing); a developer's run explores new ones.
DERANDOMIZE = bool(os.environ.get("CI"))

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 20


def _schema():
    from coe.api.app import create_app
    from coe.core.settings import Settings

    return schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def _takes_input(op) -> bool:
    return bool(op.definition.raw.get("parameters") or op.definition.raw.get("requestBody"))


SCHEMA = _schema()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CASES = [pytest.param(op, mode, id=f"{op.label} {mode}") for op in OPERATIONS
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or _takes_input(op)]  # nothing to make invalid without input


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
    operation = SCHEMA["/v1/chat/completions"]["POST"]

    def aim(case):
        case.body["model"] = model
        return case

    fuzz(fuzz_server, operation.as_strategy().map(aim))
