"""Secrets out of what people read: a server URL as it may appear in an error, a 503 body or a log line."""

from __future__ import annotations

import re

_USER_PASSWORD = re.compile(r"(?<=://)([^/@:]*):[^/]*@")  # up to the last @ of the authority, as urlsplit reads it
_SECRET_ARG = re.compile(r"([?&](?:password|pass|pwd|token|secret)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with its password (in the user part, or a query argument such as redis-py's `?password=`) as ***."""
    return _SECRET_ARG.sub(r"\1***", _USER_PASSWORD.sub(r"\1:***@", url, count=1))
