"""Endpoint functions only: each parses, calls the pipeline, shapes the answer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coe import cache_policy, gauges, metrics
from coe.aggregation import last_user_text
from coe.api import admin, budgets, dashboard, feedback
from coe.api.errors import (
    BodyLimitMiddleware, declare_400_for_schema_errors, error_body, error_response, install_error_handlers,
)
from coe.api.lifecycle import Intake, IntakeMiddleware, RequestMetrics
from coe.api.schemas import (
    BanditOut, CacheOut, CascadeStep, CategoryProbability, ChatCompletion, CheaperOut, ChatCompletionRequest, Choice, CoeInfo,
    ErrorResponse,
    ExpertAnswerOut, ModelCard, ModelList, ResponseMessage, RouteRequest, RouteResponse, RouteResult, Usage, pipeline_messages,
)
from coe.api.security import query_caller
from coe.auth import Caller, KeyRing
from coe.conversation_routing import ConversationPolicy, human_turns
from coe.feedback import Served
from coe.limits import check_texts
from coe.pipeline import ROUTED_MODEL
from coe.pipeline_types import ChatInput, ClientGone, Outcome, PipelineError, TimedOut, Unavailable
from coe.ratelimit import make_limiter
from coe.service import Service
from coe.core.settings import Settings, get_settings
from routers import RouteDecision
from workers.queue import QueueUnavailable

log = logging.getLogger("coe.api")

DISCONNECT_POLL_S = 0.25
EVERYWHERE = {s: {"model": ErrorResponse} for s in (400, 413, 503)}  # bad JSON, body cap, shutting down
ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 429, 502, 503, 504)}
SSE_EVENT = {  # each server-sent event: `data: <chat.completion.chunk JSON or error JSON>`, last `data: [DONE]`
    "type": "object", "required": ["data"],
    "properties": {"data": {"anyOf": [{"const": "[DONE]"},
                                      {"type": "string", "contentMediaType": "application/json"}]}},
}
STREAM = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                "description": "a chat completion, or with stream=true server-sent chat.completion.chunk events"}}


def _top(decision: RouteDecision) -> list[CategoryProbability]:
    return [CategoryProbability(category=c, probability=p) for c, p in decision.top_categories]


def _chat_input(body: ChatCompletionRequest, request: Request, caller: Caller, settings: Settings) -> ChatInput:
    """The pipeline's input; the session is the x-session-id header, else OpenAI's `user` field; the semantic cache
    as the x-coe-cache header, the request's coe.cache, the key's or the server's default say (coe/cache_policy.py);
    a client key's budget pays (the admin key has none)."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return ChatInput(
        model=body.model, messages=pipeline_messages(body.messages),
        max_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature, top_p=body.top_p,
        seed=body.seed, stop=stop, stream=body.stream,
        k=body.coe.k if body.coe else None, router=body.coe.router if body.coe else None,
        confidence=bool(body.coe and body.coe.confidence),
        session=request.headers.get("x-session-id") or body.user or None,
        cache=cache_policy.wanted(request.headers.get(cache_policy.HEADER), body.coe.cache if body.coe else None,
                                  caller.cache, settings),
        caller=caller.identity,
        payer=None if caller.admin else caller.identity,
    )


def _decision_fields(d: RouteDecision) -> dict:
    return {"router": d.router, "category": d.category, "confidence": d.confidence, "top_categories": _top(d),
            "fallback": d.fallback, "experts": d.experts, "reason": d.reason,
            "cascade": [CascadeStep(expert=e, accept_at=round(t, 4)) for e, t in d.cascade]}


def _bandit(d: RouteDecision) -> BanditOut | None:
    if d.bandit is None:
        return None
    return BanditOut(route=d.bandit.context, router_choice=d.bandit.router_choice,
                     changed=d.experts[0] != d.bandit.router_choice, explored=d.bandit.explored)


def _coe_info(out: Outcome) -> CoeInfo:
    return CoeInfo(
        cache=None if out.cache is None else CacheOut(**asdict(out.cache)),
        **_decision_fields(out.decision), bandit=_bandit(out.decision), aggregator=out.aggregator,
        fallback_after_error=out.fallback_after_error, failed_experts=out.failed_experts, aggregation_error=out.aggregation_error,
        cheaper=None if out.cheaper is None else CheaperOut(instead_of=out.cheaper.instead_of,
                                                            budget_left=round(out.cheaper.left_share, 4)),
        answers=[ExpertAnswerOut(expert=a.expert, content=a.text, completion_tokens=a.completion_tokens,
                                 finish_reason=a.finish_reason, strategy=a.strategy,
                                 confidence=None if a.confidence is None else round(a.confidence, 4), note=a.note)
                 for a in out.answers],
        timings={k: round(v, 6) for k, v in out.timings.items()},
    )


def _usage(out: Outcome) -> Usage:
    return Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                 total_tokens=out.prompt_tokens + out.completion_tokens)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    service = Service(settings)
    limiter = make_limiter(settings.rate_limit_requests, settings.rate_limit_window_s, settings.redis_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()
        await limiter.close()

    app = FastAPI(title="coe", version="0.1.0", lifespan=lifespan, responses=EVERYWHERE,
                  description="Composition-of-Experts behind one OpenAI-compatible endpoint.")
    app.state.service = service
    app.state.keys = KeyRing(settings)
    app.state.limiter = limiter
    app.state.editor = service.editor
    app.state.intake = intake = Intake()
    install_error_handlers(app)
    declare_400_for_schema_errors(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(IntakeMiddleware, intake=intake)  # a draining server reads no bodies
    app.add_middleware(RequestMetrics)  # outermost: counts every request, refused ones too
    app.include_router(admin.router)
    app.include_router(feedback.router)
    app.include_router(budgets.router)
    app.include_router(dashboard.router)
    app.include_router(dashboard.files)
    auth = [Depends(query_caller)]

    def pipeline():
        if service.pipeline is None:
            raise Unavailable("the service is still starting")
        return service.pipeline

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "uptime_s": round(time.time() - service.started_at, 1)}

    async def within_deadline(awaitable):
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                return await awaitable
        except TimeoutError:
            raise TimedOut(f"the request took longer than {settings.request_timeout_s:g}s") from None

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz():
        if intake.draining:
            return error_response(503, "shutting down", code="shutting_down")
        if service.startup_error:
            return error_response(503, service.startup_error, code="not_ready")
        if not service.ready:
            return error_response(503, "models are still loading", code="not_ready", headers={"Retry-After": "5"})
        try:
            await service.queue.ping()
        except QueueUnavailable as exc:
            return error_response(503, str(exc), code="queue_unavailable", headers={"Retry-After": "5"})
        return {"status": "ready", "router": pipeline().default_router, "encoder": pipeline().embedder.runtime_id,
                "experts": service.registry.names, "registry_version": service.registry_version,
                "registry_problems": service.store.problems}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        await gauges.sample(service)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, dependencies=auth,
             responses={s: {"model": ErrorResponse} for s in (401, 429, 503)})
    async def list_models() -> ModelList:
        registry, version = pipeline().registry, service.registry_version  # no await between: one version
        created = int(service.started_at)
        cards = [ModelCard(id=ROUTED_MODEL, created=created)]
        cards += [ModelCard(id=e.name, created=created, engine=e.engine, params_b=e.params_b, device=e.device,
                            categories=e.categories, fallback=e.fallback, aggregator=e.aggregator)
                  for e in registry.experts.values()]
        return ModelList(data=cards, registry_version=version)

    @app.post("/v1/route", response_model=RouteResponse, responses=ERRORS, dependencies=auth)
    async def route(body: RouteRequest) -> RouteResponse:
        k = min(body.k, settings.max_k)
        if (body.input is None) == (body.messages is None):
            return error_response(400, "send one of input or messages", param="input", code="invalid_value")
        if body.messages is not None:
            return await route_chat(pipeline_messages(body.messages), k, body.router)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            return error_response(400, "input: must not be empty", param="input", code="invalid_value")
        check_texts(texts, settings, "input texts", "input")
        decisions, timings = await within_deadline(pipeline().route(texts, k=k, router=body.router))
        data = [RouteResult(text=t, **_decision_fields(d)) for t, d in zip(texts, decisions)]
        return RouteResponse(data=data, timings=timings)

    async def route_chat(messages: list[dict], k: int, router: str | None) -> RouteResponse:
        """One decision for a chat: the turns the routing policy counts, as a completion would be routed."""
        if not messages:
            return error_response(400, "messages: must not be empty", param="messages", code="invalid_value")
        check_texts([m["content"] for m in messages], settings, "messages", "messages")
        decision, timings, _ = await within_deadline(pipeline().route_conversation(messages, k=k, router=router))
        latest = human_turns(messages, ConversationPolicy.from_settings(settings))[-1]
        return RouteResponse(data=[RouteResult(text=latest, **_decision_fields(decision))], timings=timings)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERRORS, **STREAM},
              dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest, request: Request, caller: Caller = Depends(query_caller)):
        inp = _chat_input(body, request, caller, settings)
        check_texts([m["content"] for m in inp.messages], settings, "messages", "messages")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        started = time.perf_counter()
        if inp.stream:
            events = pipeline().stream(inp)
            decision = await within_deadline(anext(events))  # routing errors surface here as a normal error
            await remember(completion_id, inp, decision, caller)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(events, decision, completion_id, created, body.model, include_usage),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        out = await within_deadline(unless_disconnected(request, pipeline().run(inp)))
        metrics.REQUEST_SECONDS.labels(body.model).observe(time.perf_counter() - started)
        await remember(completion_id, inp, out.decision, caller)
        return ChatCompletion(
            id=completion_id, created=created, model=body.model, usage=_usage(out), coe=_coe_info(out),
            choices=[Choice(message=ResponseMessage(content=out.text), finish_reason=out.finish_reason)],
        )

    async def remember(completion_id: str, inp: ChatInput, decision: RouteDecision, caller: Caller) -> None:
        """Keep what the completion was about, for POST /v1/feedback; a store that fails costs the answer nothing."""
        served = Served(completion_id, last_user_text(inp.messages), decision.router, decision.category,
                        list(decision.experts), caller.identity, time.time(),
                        decision.bandit.context if decision.bandit else None)
        try:
            await service.feedback.remember(served)
        except Exception as exc:  # noqa: BLE001 - feedback is optional; the answer is not
            log.warning("could not keep completion %s for feedback: %s", completion_id, exc)

    return app


async def unless_disconnected(request: Request, awaitable):
    """Await `awaitable` while the client is connected; when it leaves (or this is cancelled), cancel it, which
    cancels the request's jobs (a queued one never starts)."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone("the client closed the connection")
    finally:
        task.cancel()


async def _sse(events: AsyncIterator, decision: RouteDecision, completion_id: str, created: int, model: str,
               include_usage: bool) -> AsyncIterator[str]:
    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for event in events:  # a client that leaves closes this generator, then `events`: its jobs are cancelled
            if isinstance(event, str):
                yield chunk({"content": event})
            elif isinstance(event, Outcome):
                info = _coe_info(event).model_dump()
                yield chunk({}, event.finish_reason, coe=info)
                if include_usage:
                    usage = _usage(event).model_dump()
                    yield f"data: {json.dumps({'id': completion_id, 'object': 'chat.completion.chunk', 'created': created, 'model': model, 'choices': [], 'usage': usage})}\n\n"
    except PipelineError as exc:
        yield f"data: {json.dumps(error_body(exc.status, exc.message, exc.param, exc.code, exc.type))}\n\n"
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"
