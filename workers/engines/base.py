"""The engine interface the scheduler drives.

An engine owns one set of weights. `load` makes it resident, `sleep` frees the
device but keeps it fast to wake, `unload` drops it; `generate` completes a
batch of chats in one call and may report text as it is produced.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from workers.jobs import Completion, GenerationRequest

OnDelta = Callable[[int, str], None]
"""on_delta(row, text): new text for row `row` of the batch, in order."""


def plain_messages(messages: list[dict]) -> list[dict]:
    """Chat messages with plain-string content (OpenAI-style text parts are joined)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({"role": m.get("role", "user"), "content": content or ""})
    return out


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


class Engine(ABC):
    supports_sleep: bool = False

    def __init__(self, spec: EngineSpec):
        self.spec = spec

    @abstractmethod
    def load(self) -> None:
        """Bring weights onto the device (from disk, or from sleep)."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None) -> list[Completion]:
        """Complete every request; one Completion per request, in order."""

    def sleep(self) -> None:
        """Free device memory but keep the engine quick to wake; default: unload."""
        self.unload()

    def wake(self) -> None:
        self.load()

    def unload(self) -> None:
        """Drop the weights entirely."""
