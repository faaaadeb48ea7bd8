"""The `openai` engine: any OpenAI-compatible server (`vllm serve`, a hosted provider, another coe) through LiteLLM.

The expert's `model` is a LiteLLM model string (`hosted_vllm/<id>` or `openai/<id>` for a self-hosted
server, `openai/gpt-4o-mini` for OpenAI itself, ...), `api_base` the server's URL, and `api_key_env`
the NAME of the environment variable that holds the key (read when the engine loads, never stored in
experts.yaml). Every request is its own streamed `litellm.acompletion` on the engine's event loop
(engine_loop.py): the worker submits jobs as it claims them and the server does the batching; text is
handed on as it arrives. A cancelled job closes its stream, which tells the server to stop. Timeouts and
retries come from `spec.options` (openai_timeout_s, openai_retries). Nothing is resident, so
load/sleep/unload cost nothing.
"""

from __future__ import annotations

import logging
import os

from workers.engines.base import EngineError, EngineSpec
from workers.engines.engine_loop import Emit, LoopEngine
from workers.jobs import Completion, GenerationRequest

log = logging.getLogger(__name__)

NO_KEY = "not-needed"
"""Sent when the expert names no api_key_env: self-hosted servers usually ignore the key, but clients insist on one."""


def _litellm():
    # LiteLLM fetches a price list from the internet on import unless told to use its bundled copy.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


class OpenAIEngine(LoopEngine):
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
            stream=True, stream_options={"include_usage": True},
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

    async def complete(self, request: GenerationRequest, emit: Emit, stream: bool) -> Completion:
        if self._litellm is None:
            self.load()
        parts: list[str] = []
        finish, usage, chunks, response = "stop", None, 0, None
        try:
            response = await self._litellm.acompletion(**self._kwargs(request))
            async for chunk in response:
                usage = getattr(chunk, "usage", None) or usage
                for choice in chunk.choices or []:
                    text = getattr(choice.delta, "content", None)
                    if text:
                        parts.append(text)
                        chunks += 1
                        if stream:
                            emit(text, 1)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except Exception as exc:
            raise EngineError(f"openai engine, model {self.where}: {type(exc).__name__}: {_short(exc)}") from exc
        finally:
            if response is not None:
                await response.aclose()  # on cancel: drops the connection, so the server stops generating
        text = "".join(parts)
        if not stream:
            emit(text, chunks)
        return Completion(text=text, finish_reason=finish, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or chunks)


def _short(exc: Exception, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


ENGINE_CLASS = OpenAIEngine
