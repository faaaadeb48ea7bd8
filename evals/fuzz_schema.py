"""The service's own OpenAPI schema as schemathesis sees it, and the operations worth fuzzing in each mode
(shared by `coe bench fuzz` and tests/test_fuzz.py). schemathesis is in the `test` extra."""

from __future__ import annotations


def schema():
    """The document /openapi.json serves (create_app(...).openapi()), without starting a server."""
    import schemathesis

    from coe.api.app import create_app
    from coe.core.settings import Settings

    return schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def _takes_input(op) -> bool:
    return bool(op.definition.raw.get("parameters") or op.definition.raw.get("requestBody"))


def operation_modes(spec) -> list[tuple]:
    """(operation, generation mode) pairs: every operation with valid input, and with invalid input where it takes
    any (there is nothing to make invalid without input)."""
    from schemathesis import GenerationMode

    operations = [result.ok() for result in spec.get_all_operations()]
    return [(op, mode) for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            if mode is GenerationMode.POSITIVE or _takes_input(op)]


def aimed_at(model: str):
    """A map for the chat operation's strategy: every generated chat names a real model, so it reaches an engine
    (random model names mostly get 404)."""
    def aim(case):
        case.body["model"] = model
        return case
    return aim
