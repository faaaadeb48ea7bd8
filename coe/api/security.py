"""FastAPI dependencies for the door: Bearer keys (coe.auth) and per-caller rate limits (coe.ratelimit)."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from coe.api.errors import ApiError
from coe.auth import Caller, KeyRing, Verdict
from coe.ratelimit import RateLimiter

bearer = HTTPBearer(auto_error=False, description="COE_API_KEYS for the query endpoints, COE_ADMIN_KEY for admin")

basic = HTTPBasic(auto_error=False, realm="coe dashboard",
                  description="the dashboard in a browser: any user name, COE_ADMIN_KEY as the password")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_BROWSER_CHALLENGE = {"WWW-Authenticate": 'Basic realm="coe dashboard", charset="UTF-8"'}


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None and credentials.credentials else None


def _refuse(verdict: Verdict, challenge: dict = _CHALLENGE) -> ApiError:
    if verdict is Verdict.MISSING:
        return ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.", "missing_api_key", challenge)
    if verdict is Verdict.INVALID:
        return ApiError(401, "Incorrect API key provided.", "invalid_api_key", challenge)
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


async def dashboard_caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                           login: HTTPBasicCredentials | None = Depends(basic)) -> Caller:
    """The admin key, as for the admin endpoints; a browser, which cannot send a Bearer header when it opens a page,
    may give it as the password of HTTP Basic auth, which a 401 here asks it for."""
    token = _token(credentials) or (login.password if login is not None and login.password else None)
    caller = request.app.state.keys.admin(token)
    if caller.verdict is not Verdict.OK:
        raise _refuse(caller.verdict, _BROWSER_CHALLENGE)
    return caller
