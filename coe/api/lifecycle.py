"""Graceful shutdown: on SIGTERM stop intake (new requests get 503), let requests in flight finish, then exit.

Order on the first SIGTERM or SIGINT:
1. `Intake.draining` is set: every new request (except /healthz, /readyz, /metrics) is answered 503
   with Retry-After and `Connection: close`; /readyz answers 503 so a load balancer stops sending.
2. Requests in flight, streaming ones included, get up to COE_SHUTDOWN_GRACE_S to finish. In the
   embedded mode the embedded worker keeps running meanwhile, so they are answered.
3. uvicorn then stops listening and runs the lifespan shutdown (the embedded worker stops, the queue
   closes). With Redis, jobs still queued stay in Redis for the `coe worker` processes; nothing here
   removes them.
A second signal skips the wait (uvicorn's own handling).

`RequestMetrics` counts every request by its route template and status. Both are plain ASGI middleware:
Starlette's BaseHTTPMiddleware would hide a client's disconnect from the endpoints, which watch for it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe import metrics
from coe.api.errors import error_response

log = logging.getLogger("coe.api")

ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/metrics"})


class Intake:
    """Counts the requests in flight; while draining, refuses new ones."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while self.in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True


class IntakeMiddleware:
    def __init__(self, app: ASGIApp, intake: Intake):
        self.app = app
        self.intake = intake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_OPEN:
            return await self.app(scope, receive, send)
        if self.intake.draining:
            response = error_response(503, "The service is shutting down; retry on another instance.",
                                      code="shutting_down", headers={"Retry-After": "5", "Connection": "close"})
            return await response(scope, receive, send)
        self.intake.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.intake.in_flight -= 1


class RequestMetrics:
    """coe_requests_total by route template: 'unmatched' for requests no route took (unknown paths, bodies over
    the cap, refusals while draining), so a scanner's random paths add no labels."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            route = scope.get("route")  # set by the router on a match
            metrics.REQUESTS.labels(getattr(route, "path", "unmatched"), str(status)).inc()


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before its own shutdown on the first signal."""

    def __init__(self, config: uvicorn.Config, intake: Intake, grace_s: float):
        super().__init__(config)
        self.intake = intake
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        # runs in the signal handler: only flip a flag and hand the rest to the event loop
        if self._loop is None or self.intake.draining or self.should_exit:
            return super().handle_exit(sig, frame)
        self.intake.draining = True
        self._loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig) -> None:
        self._drain_task = asyncio.ensure_future(self._drain(sig))

    async def _drain(self, sig) -> None:
        log.warning("shutting down: refusing new requests, waiting up to %.0fs for %d in flight",
                    self.grace_s, self.intake.in_flight)
        if not await self.intake.wait_idle(self.grace_s):
            log.warning("shutting down with %d requests still in flight after %.0fs", self.intake.in_flight,
                        self.grace_s)
        super().handle_exit(sig, None)


def serve(app, host: str, port: int, log_level: str, grace_s: float) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    DrainingServer(config, app.state.intake, grace_s).run()
