"""The engines both systems of evals/gpu/vs_vllm.py run on: started once, owned by the benchmark, timed alike.

Each system borrows the same started engines in turn. A `Borrowed` engine passes everything through
to its engine except `unload`: coe's Worker unloads what it holds when it stops (right for a service,
whose engines would otherwise die with the process), and here that would turn the next system's wakes
into full engine starts. Every residency change either system makes (sleep, wake, a start where an
engine had none) is timed by one `SwitchClock`, so switch time is counted the same way on both sides:
the seconds inside the engines' sleep and wake calls. Waiting for a model to drain before it is put
to sleep is a policy's choice, and shows in the requests' latency, not here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class SwitchClock:
    wakes: int = 0
    sleeps: int = 0
    starts: int = 0
    seconds: float = 0.0

    def report(self) -> dict:
        return {"switches": self.wakes + self.starts, "wakes": self.wakes, "sleeps": self.sleeps,
                "engine_starts": self.starts, "switch_s": round(self.seconds, 3)}


class Borrowed:
    """A started engine lent to one system for one run; residency changes timed, `unload` left to the owner."""

    def __init__(self, engine: Any, clock: SwitchClock):
        self._engine, self._clock = engine, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def sleep(self) -> None:
        if self._engine.llm is None or self._engine.asleep:
            return
        self._timed(self._engine.sleep)
        self._clock.sleeps += 1

    def wake(self) -> None:
        started = self._engine.llm is None
        if not started and not self._engine.asleep:
            return
        self._timed(self._engine.wake)
        if started:
            self._clock.starts += 1
        else:
            self._clock.wakes += 1

    load = wake  # coe's scheduler loads a cold group; here that is a wake, or a start counted as one

    def unload(self) -> None:
        """Kept started: the benchmark unloads its engines once, at the end."""

    def _timed(self, change) -> None:
        t0 = time.perf_counter()
        try:
            change()
        finally:
            self._clock.seconds += time.perf_counter() - t0


def lend(engines: dict, clock: SwitchClock) -> dict:
    """Every engine of `engines` (name -> engine) borrowed under one clock."""
    return {name: Borrowed(engine, clock) for name, engine in engines.items()}
