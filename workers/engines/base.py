"""The engine interface the scheduler drives.

An engine owns one set of weights. `load` makes it resident, `sleep` frees the
device but keeps it fast to wake, `unload` drops it.

Two ways to run requests:
  generate  a batch of chats in one call, from a worker thread (every engine has it).
  submit    one chat at a time, as it arrives, from the worker's event loop: engines that batch
            continuously inside (vLLM's AsyncLLM, a remote OpenAI-compatible server) set
            `supports_streaming_submit`, and the worker then serves them job by job
            (workers/continuous.py) instead of batch by batch.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from coe.core.paths import default_cache_dir  # not coe.core.settings: engines run where pydantic-settings is not installed
from workers.jobs import CONTEXT_LENGTH_EXCEEDED, ENGINE_ERROR, Completion, GenerationRequest

OnDelta = Callable[[int, str], None]
"""on_delta(row, text): new text for row `row` of the batch, in order."""

OnText = Callable[[str], None]
"""on_text(text): new text of one submitted request, in order, called on the submitter's event loop."""

CANCELLED = "cancelled"
"""finish_reason of a submitted request stopped through its `cancelled` event."""
ShouldStop = Callable[[int], bool]
"""should_stop(row): True once row `row`'s caller is gone; an engine that polls it ends that row as 'cancelled'."""


class EngineError(RuntimeError):
    """The engine could not serve a batch, or one request of it; those jobs fail with this message."""


class ContextLengthExceeded(EngineError):
    """A request's prompt leaves no room for an answer in the model's context: the client's request is too long
    (answered 400 context_length_exceeded), not the engine's failure."""

    error_type: ClassVar[str] = CONTEXT_LENGTH_EXCEEDED

    def __init__(self, n_prompt: int, context: int):
        super().__init__(f"This model's maximum context length is {context} tokens; the messages take {n_prompt} "
                         "tokens. Shorten the messages.")


def job_error(exc: Exception) -> tuple[str, str]:
    """(error, error_type) of a job its engine failed: a prompt too long for the context is the client's error and
    reads as it is; anything else names its exception."""
    if isinstance(exc, ContextLengthExceeded):
        return str(exc), exc.error_type
    return f"{type(exc).__name__}: {exc}", ENGINE_ERROR


@dataclass
class EngineSpec:
    """What an engine needs to know, taken from the expert's registry entry."""

    key: str
    engine: str
    model: str
    model_path: str | None
    device: str
    memory_gb: float
    max_batch: int
    api_base: str | None = None
    api_key_env: str | None = None
    options: "EngineOptions" = field(default_factory=lambda: EngineOptions())
    chat_template: str | None = None  # a Jinja chat template that replaces the model's own
    completion: bool = False  # a base model: prompted with a plain transcript (decoding.plain_prompt), no template
    experts: tuple[str, ...] = ()  # the experts these weights serve, for errors that name them


@dataclass(frozen=True)
class EngineOptions:
    """Process settings an engine needs, handed down by whoever builds the worker (never read from globals)."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    threads: int | None = None  # CPU threads for CPU engines; None = the library's default
    openai_timeout_s: float = 120.0
    openai_retries: int = 2
    vllm_args: dict = field(default_factory=dict)  # extra keyword arguments for vLLM's engine


class Engine(ABC):
    supports_sleep: ClassVar[bool] = False
    supports_streaming_submit: ClassVar[bool] = False
    """True when `submit` is implemented: requests join the running batch one by one (continuous batching)."""
    supports_stop: ClassVar[bool] = False  # generate() takes should_stop and ends those rows early

    def __init__(self, spec: EngineSpec):
        self.spec = spec

    @abstractmethod
    def load(self) -> None:
        """Bring weights onto the device (from disk, or from sleep)."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None,
                 should_stop: ShouldStop | None = None) -> list[Completion | EngineError]:
        """Complete every request; one Completion per request, in order, or the EngineError of a request that
        failed alone (its prompt does not fit, its sequence failed): the others are not failed with it. Raise
        only when the whole batch failed. `should_stop` is passed only to engines with `supports_stop`."""

    async def submit(self, request: GenerationRequest, on_text: OnText | None = None,
                     cancelled: asyncio.Event | None = None) -> Completion:
        """Complete one request alongside whatever else the engine is running; await it on the worker's loop.

        Text streams to `on_text` as it is produced (None: the caller wants only the result). When
        `cancelled` is set, the request is aborted in the engine (its slot is free when this returns)
        and what was produced so far comes back with finish_reason 'cancelled'. Cancelling the awaiting
        task aborts it too (CancelledError propagates). Failures raise EngineError.
        """
        raise NotImplementedError(f"{type(self).__name__} serves batches only (supports_streaming_submit is False)")

    def choice_logprobs(self, requests: list[GenerationRequest],
                        choices: list[str]) -> list[list[float] | EngineError]:
        """Log-probability of each choice string as the continuation of each request's chat prompt (after the
        generation prompt), for multiple-choice scoring the lm-evaluation-harness way; a request that fails
        alone gets its EngineError in its place, as in `generate`. Optional capability."""
        raise EngineError(f"engine '{self.spec.engine}': choice_logprobs is not supported")

    def sleep(self) -> None:
        """Free device memory but keep the engine quick to wake; default: unload."""
        self.unload()

    def wake(self) -> None:
        self.load()

    def unload(self) -> None:
        """Drop the weights entirely."""
