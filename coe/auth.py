"""Who may call what: client keys for the query endpoints, one admin key for what changes the service.

Keys come from COE_API_KEYS (comma-separated) and COE_ADMIN_KEY. Every comparison is constant-time
(hmac.compare_digest of SHA-256 digests, so not even the length leaks, against every configured key,
no early exit), and a key is never logged or
returned: callers are known by `identity`, a short hash of their key, which is what the rate limiter
and the logs see. Provider keys for engines are a different thing: they reach engines only through
an expert's `api_key_env`, never through here.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

from coe.core.settings import Settings


class Verdict(str, Enum):
    OK = "ok"
    MISSING = "missing"  # 401: no credentials where some are needed
    INVALID = "invalid"  # 401: credentials that match no key
    FORBIDDEN = "forbidden"  # 403: a valid client key on an admin endpoint
    DISABLED = "disabled"  # 403: admin endpoints with no admin key configured


@dataclass(frozen=True)
class Caller:
    verdict: Verdict
    identity: str | None = None
    admin: bool = False
    cache: bool = False  # the key is listed in COE_CACHE_KEYS: its requests use the semantic cache by default


def identity_of(key: str) -> str:
    """A stable, non-reversible name for a key (for rate limits and logs)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _matches(digest: bytes, keys: list[bytes]) -> bool:
    """Whether `digest` is one of `keys` (all SHA-256 digests, so only equal lengths are compared)."""
    found = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        found |= hmac.compare_digest(digest, key)
    return found


class KeyRing:
    def __init__(self, settings: Settings):
        raw = settings.api_keys.get_secret_value() if settings.api_keys else ""
        self._clients = [_digest(k.strip().encode()) for k in raw.split(",") if k.strip()]
        cached = settings.cache_keys.get_secret_value() if settings.cache_keys else ""
        self._cached = [_digest(k.strip().encode()) for k in cached.split(",") if k.strip()]
        admin = settings.admin_key.get_secret_value().strip() if settings.admin_key else ""
        self._admin = _digest(admin.encode()) if admin else None

    @property
    def open(self) -> bool:
        """No client keys configured: the query endpoints need no credentials."""
        return not self._clients

    @property
    def identities(self) -> list[str]:
        """The client keys as `identity_of` names them (the digest kept here is the hash it is cut from)."""
        return ["key-" + digest.hex()[:16] for digest in self._clients]

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    def _is_admin(self, digest: bytes) -> bool:
        return self._admin is not None and hmac.compare_digest(digest, self._admin)

    def query(self, token: str | None) -> Caller:
        """A caller of the query endpoints; the admin key is accepted there too."""
        if token is None:
            return Caller(Verdict.OK) if self.open else Caller(Verdict.MISSING)
        raw = _digest(token.encode())
        is_client = _matches(raw, self._clients)
        is_admin = self._is_admin(raw)
        if is_client or is_admin:
            return Caller(Verdict.OK, identity_of(token), admin=is_admin, cache=_matches(raw, self._cached))
        # an open service ignores credentials it does not know (clients often send a placeholder key)
        return Caller(Verdict.OK) if self.open else Caller(Verdict.INVALID)

    def admin(self, token: str | None) -> Caller:
        if self._admin is None:
            return Caller(Verdict.DISABLED)
        if token is None:
            return Caller(Verdict.MISSING)
        raw = _digest(token.encode())
        if self._is_admin(raw):
            return Caller(Verdict.OK, identity_of(token), admin=True)
        if _matches(raw, self._clients):
            return Caller(Verdict.FORBIDDEN, identity_of(token))
        return Caller(Verdict.INVALID)
