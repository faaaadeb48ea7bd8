"""The `openai` engine: any OpenAI-compatible server (`vllm serve`, a hosted provider, another coe) through LiteLLM.

The expert's `model` is a LiteLLM model string (`hosted_vllm/<id>` or `openai/<id>` for a self-hosted
server, `openai/gpt-4o-mini` for OpenAI itself, ...), `api_base` the server's URL, and `api_key_env`
the NAME of the environment variable that holds the key (read when the engine loads, never stored in
experts.yaml). A batch is sent as concurrent requests from a thread pool: the server does the batching.
Streaming jobs stream; the others do not. Nothing is resident, so load/sleep/unload cost nothing.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from workers.engines.base import Engine, EngineError, EngineSpec, OnDelta
from workers.jobs import Completion, GenerationRequest

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 32
"""Requests in flight at once per engine; the batch size (max_batch) caps it further."""
NO_KEY = "not-needed"
"""Sent when the expert names no api_key_env: self-hosted servers usually ignore the key, but clients insist on one."""


def _litellm():
    # LiteLLM fetches a price list from the internet on import unless told to use its bundled copy.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


class OpenAIEngine(Engine):
    supports_sleep = False

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        self.timeout_s = spec.options.openai_timeout_s
        self.num_retries = spec.options.openai_retries
        self._litellm = None
        self._api_key: str | None = None

    @property
    def where(self) -> str:
        return f"'{self.spec.model}'" + (f" at {self.spec.api_base}" if self.spec.api_base else "")

    def load(self) -> None:
        """Nothing to bring onto a device; check that LiteLLM imports and that the key is there."""
        try:
            self._litellm = _litellm()
        except ImportError as exc:
            raise EngineError(f"engine 'openai' needs the litellm package: {exc}") from exc
        env = self.spec.api_key_env
        if env:
            key = os.environ.get(env)
            if not key:
                raise EngineError(f"engine 'openai' for {self.where}: environment variable {env} (api_key_env) is not set")
            self._api_key = key
        else:
            self._api_key = NO_KEY

    def unload(self) -> None:
        """Keeps nothing resident."""

    def _kwargs(self, req: GenerationRequest) -> dict:
        kw = dict(
            model=self.spec.model, messages=req.messages, max_tokens=req.max_tokens, temperature=req.temperature,
            top_p=req.top_p, api_key=self._api_key, timeout=self.timeout_s, num_retries=self.num_retries,
        )
        if self.spec.api_base:
            kw["api_base"] = self.spec.api_base
        if req.seed is not None:
            kw["seed"] = req.seed
        if req.stop:
            kw["stop"] = req.stop
        if req.repetition_penalty != 1.0:  # vLLM's extension; sent only when asked for, as providers may reject it
            kw["extra_body"] = {"repetition_penalty": req.repetition_penalty}
        return kw

    def _one(self, row: int, req: GenerationRequest, on_delta: OnDelta | None) -> Completion:
        litellm = self._litellm
        try:
            if on_delta is None:
                resp = litellm.completion(**self._kwargs(req))
                choice = resp.choices[0]
                usage = getattr(resp, "usage", None)
                return Completion(
                    text=choice.message.content or "", finish_reason=choice.finish_reason or "stop",
                    prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                    completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                )
            parts: list[str] = []
            finish, usage, chunks = "stop", None, 0
            for chunk in litellm.completion(**self._kwargs(req), stream=True, stream_options={"include_usage": True}):
                usage = getattr(chunk, "usage", None) or usage
                for choice in chunk.choices or []:
                    text = getattr(choice.delta, "content", None)
                    if text:
                        parts.append(text)
                        chunks += 1
                        on_delta(row, text)
                    if choice.finish_reason:
                        finish = choice.finish_reason
            return Completion(
                text="".join(parts), finish_reason=finish,
                prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                completion_tokens=getattr(usage, "completion_tokens", 0) or chunks,
            )
        except Exception as exc:
            raise EngineError(f"openai engine, model {self.where}: {type(exc).__name__}: {_short(exc)}") from exc

    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None) -> list[Completion]:
        if self._litellm is None:
            self.load()
        if not requests:
            return []
        workers = max(1, min(len(requests), self.spec.max_batch, MAX_CONCURRENCY))
        with ThreadPoolExecutor(workers, thread_name_prefix="openai-engine") as pool:
            futures = [pool.submit(self._one, i, r, on_delta) for i, r in enumerate(requests)]
            return [f.result() for f in futures]


def _short(exc: Exception, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


ENGINE_CLASS = OpenAIEngine
