"""Engines whose client is asyncio-native (vLLM's AsyncLLM, LiteLLM's acompletion), driven from anywhere.

Such a client belongs to one event loop. Each engine gets its own loop in its own thread, and the
client lives there; then the same engine serves the worker's loop (`submit`, one request at a time,
text handed back to the caller's loop as it comes), a worker thread (`generate`, a batch) and a plain
script (`load`, `sleep`, ... block until done). A slow start (an engine start takes tens of seconds)
blocks only the engine's own loop, never the worker's.
"""

from __future__ import annotations

import asyncio
import threading
from abc import abstractmethod
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from workers.engines.base import CANCELLED, ContextLengthExceeded, Engine, EngineError, EngineSpec, OnDelta, OnText
from workers.jobs import Completion, GenerationRequest

T = TypeVar("T")

Emit = Callable[[str, int], None]
"""emit(text, tokens): new text of the request and how many tokens it took; called on the engine's loop."""

ABORT_WAIT_S = 10.0
"""How long `submit` waits, after a cancel, for the engine to confirm the request has left it."""


class EngineLoop:
    """An event loop running in a daemon thread of its own."""

    def __init__(self, name: str):
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
            self._thread.start()
            self.loop = loop
        return self.loop

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run `coro` on this loop; cancelling the returned future cancels the task."""
        return asyncio.run_coroutine_threadsafe(coro, self.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this loop and block until it is done (from any thread but this loop's own)."""
        return self.spawn(coro).result()

    def stop(self) -> None:
        loop, thread, self.loop, self._thread = self.loop, self._thread, None, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        if not thread.is_alive():
            loop.close()


class _Seen:
    """What a submitted request produced so far (written on the engine's loop, read after it ended)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tokens = 0

    def add(self, text: str, tokens: int) -> None:
        self.parts.append(text)
        self.tokens += tokens


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the caller's loop has closed: nobody is listening any more
        pass


class LoopEngine(Engine):
    """An engine that runs requests as coroutines on its own loop: `complete` is all a subclass writes."""

    supports_streaming_submit = True

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        self.runner = EngineLoop(f"engine:{spec.key}")

    @abstractmethod
    async def complete(self, request: GenerationRequest, emit: Emit, stream: bool) -> Completion:
        """Run one request on the engine's loop; emit text as it comes (in one piece at the end when not `stream`).

        Cancellation of this coroutine must abort the request in the backend before it re-raises.
        """

    async def submit(self, request: GenerationRequest, on_text: OnText | None = None,
                     cancelled: asyncio.Event | None = None) -> Completion:
        caller = asyncio.get_running_loop()
        seen, ended = _Seen(), asyncio.Event()

        def emit(text: str, tokens: int) -> None:
            seen.add(text, tokens)
            if on_text is not None and text:
                _call_soon(caller, on_text, text)

        async def run() -> Completion:
            try:
                return await self.complete(request, emit, stream=on_text is not None)
            finally:
                _call_soon(caller, ended.set)

        inner = asyncio.wrap_future(self.runner.spawn(run()))
        try:
            if cancelled is None:
                return await inner
            stop = asyncio.ensure_future(cancelled.wait())
            try:
                await asyncio.wait({inner, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if inner.done():
                return inner.result()
            inner.cancel()  # cancels `run` on the engine's loop: the backend aborts the request
            try:
                await asyncio.wait_for(ended.wait(), ABORT_WAIT_S)
            except TimeoutError:
                pass
            return Completion(text="".join(seen.parts), prompt_tokens=0, completion_tokens=seen.tokens,
                              finish_reason=CANCELLED)
        except asyncio.CancelledError:
            inner.cancel()
            raise

    def generate(self, requests: list[GenerationRequest],
                 on_delta: OnDelta | None = None) -> list[Completion | EngineError]:
        """A batch, all submitted at once to the engine's own loop (the backend batches them); blocks. A prompt
        over the context gets its ContextLengthExceeded in its place; any other failure is raised."""
        if not requests:
            return []

        def emitter(row: int):
            return lambda text, tokens: on_delta(row, text) if on_delta is not None and text else None

        async def batch() -> list[Completion | EngineError]:
            done = await asyncio.gather(*(self.complete(r, emitter(i), stream=on_delta is not None)
                                          for i, r in enumerate(requests)), return_exceptions=True)
            failed = [d for d in done if isinstance(d, BaseException) and not isinstance(d, ContextLengthExceeded)]
            if failed:
                raise failed[0]
            return list(done)

        return self.runner.call(batch())
