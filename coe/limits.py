"""Per-request size limits beyond the body-size cap: messages per request and characters per request.

Both are refused with 400 (OpenAI answers an over-long prompt with 400 too), naming the limit.
`max_tokens` is not refused: the pipeline lowers it to COE_MAX_TOKENS_CAP, and the answer's
finish_reason says "length" when the cap cut it short, so clients that always send a large
max_tokens keep working.
"""

from __future__ import annotations

from coe.pipeline_types import BadRequest
from coe.core.settings import Settings


def _refuse(message: str, param: str, code: str) -> BadRequest:
    exc = BadRequest(message, param)
    exc.code = code
    return exc


def check_texts(texts: list[str], settings: Settings, what: str, param: str) -> None:
    """Raise BadRequest (400) when `texts` are too many or too long for one request."""
    if len(texts) > settings.max_messages:
        raise _refuse(f"{len(texts)} {what} exceed the limit of {settings.max_messages} per request "
                      "(COE_MAX_MESSAGES)", param, "too_many_messages")
    chars = sum(len(t) for t in texts)
    if chars > settings.max_chars:
        raise _refuse(f"{chars} characters of {what} exceed the limit of {settings.max_chars} per request "
                      "(COE_MAX_CHARS)", param, "too_many_characters")
