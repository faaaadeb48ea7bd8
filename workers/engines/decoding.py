"""Decoding helpers every engine shares: chat messages as plain text, greedy cut-off, context budget,
stop strings, safe streaming, and multiple-choice scoring."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from workers.engines.base import ContextLengthExceeded, EngineError

if TYPE_CHECKING:
    import numpy as np

R = TypeVar("R")
T = TypeVar("T")

MIN_TEMPERATURE = 1e-4
"""Temperatures below this decode greedily: the limit they tend to, without overflow."""


def plain_messages(messages: list[dict]) -> list[dict]:
    """Chat messages with plain-string content (OpenAI-style text parts are joined)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({"role": m.get("role", "user"), "content": content or ""})
    return out


def plain_prompt(messages: list[dict]) -> str:
    """A completion-style prompt for a base model that has no chat template: a transcript ending where
    the assistant's answer starts. PLAIN_STOPS keeps the model from writing the next user turn."""
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in plain_messages(messages)]
    return "\n\n".join(turns + ["Assistant:"])


PLAIN_STOPS = ["\n\nUser:", "\nUser:"]


def per_request(requests: list[R], admit: Callable[[int, R], T]) -> list[T | EngineError]:
    """admit(i, request) for every request; one whose admission fails (its prompt does not fit, its chat template or
    sampler cannot be made) gets an EngineError in its place, so it fails alone."""
    out: list[T | EngineError] = []
    for i, request in enumerate(requests):
        try:
            out.append(admit(i, request))
        except EngineError as exc:
            out.append(exc)
        except Exception as exc:
            out.append(EngineError(f"{type(exc).__name__}: {exc}"))
    return out


def token_budget(n_prompt: int, max_tokens: int, context: int) -> int:
    """How many tokens a request may generate: max_tokens, cut to what the context has left; a prompt that
    leaves no room raises ContextLengthExceeded."""
    room = context - n_prompt
    if room < 1:
        raise ContextLengthExceeded(n_prompt, context)
    return max(0, min(max_tokens, room))


@dataclass
class ChoicePlan:
    """How to score choices as continuations of one prompt, the lm-evaluation-harness way.

    Choice c's log-probability sums log p(c[j] | prompt + c[:j]). The log-probabilities it needs come from
    one sequence, prompt + c[:-1], at positions n_prompt-1 onwards; choices with the same all-but-last
    tokens share a sequence, so single-token choices ("A".."D") cost one pass over the prompt.
    """

    n_prompt: int
    choices: list[list[int]]
    sequences: list[list[int]]
    which: list[int]  # choice -> its sequence

    @classmethod
    def build(cls, prompt: list[int], choices: list[list[int]]) -> "ChoicePlan":
        sequences: list[list[int]] = []
        which = []
        for c in choices:
            if not c:
                raise EngineError("a choice to score is empty")
            seq = prompt + c[:-1]
            if seq not in sequences:
                sequences.append(seq)
            which.append(sequences.index(seq))
        return cls(len(prompt), choices, sequences, which)

    def scores(self, logprobs: list["np.ndarray"]) -> list[float]:
        """`logprobs[s]`: log-softmax rows of sequence s at positions n_prompt-1 onwards, shape (k, vocab)."""
        return [float(sum(logprobs[s][j, tok] for j, tok in enumerate(c))) for c, s in zip(self.choices, self.which)]


def log_softmax(logits: "np.ndarray") -> "np.ndarray":
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


@dataclass
class RowText:
    """One row's text as tokens arrive: a stop string ends it, and only text that cannot still
    turn into a stop string is streamed."""

    index: int
    stops: list[str]
    text: str = ""
    sent: int = 0  # characters already given to on_delta

    def add(self, piece: str) -> bool:
        """Append `piece`; True (and the text cut before it) when a stop string is now complete."""
        before = len(self.text)
        self.text += piece
        if not self.stops or not piece:
            return False
        hits = [i for i in (self.text.find(s, max(0, before - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def flush(self, on_delta, done: bool) -> None:
        """Stream what is safe to show: everything once done, else all but a possible stop-string start."""
        if on_delta is None:
            return
        upto = len(self.text) if done else len(self.text) - held_back(self.text, self.stops)
        if upto > self.sent:
            on_delta(self.index, self.text[self.sent:upto])
            self.sent = upto
