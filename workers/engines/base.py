"""The engine interface the scheduler drives.

An engine owns one set of weights. `load` makes it resident, `sleep` frees the
device but keeps it fast to wake, `unload` drops it; `generate` completes a
batch of chats in one call and may report text as it is produced.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coe.core.settings import default_cache_dir
from workers.jobs import Completion, GenerationRequest

OnDelta = Callable[[int, str], None]
"""on_delta(row, text): new text for row `row` of the batch, in order."""
ShouldStop = Callable[[int], bool]
"""should_stop(row): True once row `row`'s caller is gone; an engine that polls it ends that row as 'cancelled'."""


class EngineError(RuntimeError):
    """The engine could not serve a batch; its jobs fail with this message."""


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


@dataclass(frozen=True)
class EngineOptions:
    """Process settings an engine needs, handed down by whoever builds the worker (never read from globals)."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    threads: int | None = None  # CPU threads for CPU engines; None = the library's default
    openai_timeout_s: float = 120.0
    openai_retries: int = 2
    vllm_args: dict = field(default_factory=dict)  # extra keyword arguments for vLLM's engine


class Engine(ABC):
    supports_sleep: bool = False
    supports_stop: bool = False  # generate() takes should_stop and ends those rows early

    def __init__(self, spec: EngineSpec):
        self.spec = spec

    @abstractmethod
    def load(self) -> None:
        """Bring weights onto the device (from disk, or from sleep)."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None,
                 should_stop: ShouldStop | None = None) -> list[Completion]:
        """Complete every request; one Completion per request, in order. `should_stop` is passed only to
        engines with `supports_stop`."""

    def sleep(self) -> None:
        """Free device memory but keep the engine quick to wake; default: unload."""
        self.unload()

    def wake(self) -> None:
        self.load()

    def unload(self) -> None:
        """Drop the weights entirely."""
