"""Decoding helpers every engine shares: chat messages as plain text, greedy cut-off, stop strings, safe streaming."""

from __future__ import annotations

from dataclasses import dataclass

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
