"""FastAPI dependencies for the door: Bearer keys (coe.auth) and per-caller rate limits (coe.ratelimit)."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coe.api.errors import ApiError
from coe.auth import Caller, KeyRing, Verdict
from coe.ratelimit import RateLimiter

bearer = HTTPBearer(auto_error=False, description="COE_API_KEYS for the query endpoints, COE_ADMIN_KEY for admin")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None and credentials.credentials else None


def _refuse(verdict: Verdict) -> ApiError:
    if verdict is Verdict.MISSING:
        return ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.", "missing_api_key", _CHALLENGE)
    if verdict is Verdict.INVALID:
        return ApiError(401, "Incorrect API key provided.", "invalid_api_key", _CHALLENGE)
    if verdict is Verdict.FORBIDDEN:
        return ApiError(403, "This key may call the query endpoints only; changing the service needs the admin key "
                             "(COE_ADMIN_KEY).", "admin_key_required")
    return ApiError(403, "Admin endpoints are disabled: set COE_ADMIN_KEY on the server to enable them.",
                    "admin_disabled")


async def query_caller(request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """Authenticate a query endpoint's caller, then count the request against its rate limit."""
    keys: KeyRing = request.app.state.keys
    caller = keys.query(_token(credentials))
    if caller.verdict is not Verdict.OK:
        raise _refuse(caller.verdict)
    limiter: RateLimiter = request.app.state.limiter
    if limiter.enabled and not caller.admin:
        identity = caller.identity or f"addr-{request.client.host if request.client else 'unknown'}"
        retry_after = await limiter.hit(identity)
        if retry_after is not None:
            raise ApiError(429, f"Rate limit reached: {limiter.limit} requests per {limiter.window_s:g}s; "
                                f"retry in {retry_after:.0f}s.", "rate_limit_exceeded",
                           {"Retry-After": str(int(retry_after))})
    return caller


async def admin_caller(request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    caller = request.app.state.keys.admin(_token(credentials))
    if caller.verdict is not Verdict.OK:
        raise _refuse(caller.verdict)
    return caller
