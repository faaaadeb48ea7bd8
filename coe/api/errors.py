"""Every failure leaves as an OpenAI-style error body with the right status; nothing crashes the server."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe.pipeline_types import PipelineError

log = logging.getLogger("coe.api")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """A refusal decided at the API's door (auth, rate limit, shutting down), answered in OpenAI's format."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.param = status, message, code, headers, param


def error_body(status: int, message: str, param: str | None = None, code: str | None = None, type_: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type_: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code, type_), status_code=status, headers=headers)


BODY_PARSE_ERROR = "There was an error parsing the body"
"""What FastAPI raises (HTTPException 400) for a body its JSON decoder gave up on in other ways than a syntax error."""


def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "The request body is not valid JSON.", code="invalid_json")
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first["msg"].removeprefix("Value error, ")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    code = "unsupported_parameter" if first.get("type") == "unsupported_parameter" else "invalid_value"
    return error_response(400, message, param=param, code=code)  # 400, as OpenAI answers a schema error


def declare_400_for_schema_errors(app: FastAPI) -> None:
    """Schema errors are answered 400 (`_validation`), so the 422 "Validation Error" FastAPI declares for every
    operation with input would be a false promise: it is taken out of the generated OpenAPI schema."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema["paths"].values():
                for op in operations.values():
                    if op.get("responses", {}).get("422", {}).get("description") == "Validation Error":
                        del op["responses"]["422"]
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
        return app.openapi_schema

    app.openapi = openapi


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation(request, exc)

    @app.exception_handler(PipelineError)
    async def _on_pipeline(request: Request, exc: PipelineError) -> JSONResponse:
        retry_after = exc.retry_after if exc.retry_after is not None else (5 if exc.status == 503 else None)
        headers = {"Retry-After": f"{retry_after:.0f}"} if retry_after is not None else None
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.type, headers)

    @app.exception_handler(ApiError)
    async def _on_api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:  # JSON too deep, or bytes that are not UTF-8
            return error_response(400, "The request body is not valid JSON.", code="invalid_json")
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error.", code="internal_error")


class BodyLimitMiddleware:
    """413 for bodies over the cap, whether or not the client declared Content-Length.

    The body is read up to the cap before the app sees it, then replayed, so an
    oversized chunked upload is refused without being parsed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        response = error_response(413, f"Request body exceeds {self.max_bytes} bytes.", code="request_too_large")
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
