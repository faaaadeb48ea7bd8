"""Continuous batching over one llama.cpp context: one thread owns it and decodes every sequence in flight.

Work (a generation or a sequence to score) is handed to the thread at any time. Between two decode
steps the thread drops work whose caller is gone, gives waiting work a free slot (a KV-cache sequence
of its own), and builds one batch: the single newest token of every generating sequence first, then
as many waiting prompt tokens as fit. So a new request joins the running batch at the next step, as in
llama.cpp's own server. A finished, cancelled or failed sequence has its KV cells removed and its slot
freed before its caller hears of it. When a decode fails with several sequences in it, each is decoded
again alone, so that only the sequence that fails is failed.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from workers.engines.base import EngineError

log = logging.getLogger(__name__)


@dataclass
class Seq:
    """Tokens bound for one KV-cache sequence; logits are wanted at positions >= want_from."""

    tokens: list[int]
    want_from: int
    slot: int = -1
    fed: int = 0

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.fed


class Work(ABC):
    """What one sequence does with its outputs. The decode thread alone calls these methods."""

    def __init__(self, seq: Seq):
        self.seq = seq
        self.future: Future = Future()

    @abstractmethod
    def take(self, ctx: Any, idx: int) -> None:
        """Use the logits of batch output `idx` (the sequence's position `seq.fed - 1` or earlier)."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once nothing more is to be decoded for this work."""

    def gone(self) -> bool:
        """True once the caller no longer wants the result (the work then ends as cancelled)."""
        return self.future.cancelled()

    def cancel(self) -> None:
        """End the work because its caller is gone; `settle` reports what it had."""

    @abstractmethod
    def result(self) -> Any:
        """What the caller gets once the work is done."""

    def settle(self, error: BaseException | None = None) -> None:
        try:
            if error is None:
                self.future.set_result(self.result())
            else:
                self.future.set_exception(error)
        except InvalidStateError:  # the caller cancelled the future: nobody is waiting
            pass


class DecodeLoop:
    """The thread that owns `ctx`: every use of the context goes through `put`."""

    def __init__(self, ctx: Any, batch: Any, n_slots: int, n_batch: int, name: str):
        self.ctx, self.batch, self.n_batch = ctx, batch, n_batch
        self._inbox: list[Work] = []
        self._free = list(range(n_slots - 1, -1, -1))
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"llamacpp-{name}", daemon=True)
        self._thread.start()

    def put(self, works: list[Work]) -> None:
        """Queue work; it joins the batch at the next step that has a free slot for it."""
        with self._cond:
            if self._closed:
                raise EngineError("the llamacpp engine was unloaded")
            self._inbox.extend(works)
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread; work not finished fails with an EngineError. The context is then free to close."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # ---- the thread

    def _run(self) -> None:
        waiting: deque[Work] = deque()
        live: list[Work] = []
        try:
            self._serve(waiting, live)
        except Exception as exc:  # a bug here must not leave callers waiting for ever
            log.exception("the llamacpp decode thread failed")
            with self._cond:
                self._closed = True
                waiting.extend(self._inbox)
            for w in [*live, *waiting]:
                self._release(w, live, EngineError(f"the llamacpp decode thread failed: {exc}"))

    def _serve(self, waiting: deque[Work], live: list[Work]) -> None:
        while True:
            with self._cond:
                while not (self._inbox or waiting or live or self._closed):
                    self._cond.wait()
                waiting.extend(self._inbox)
                self._inbox.clear()
                if self._closed:
                    for w in [*live, *waiting]:
                        self._release(w, live, EngineError("the llamacpp engine was unloaded"))
                    return
            for w in [w for w in waiting if w.done or w.gone()]:  # never started: no slot to free
                waiting.remove(w)
                if not w.done:
                    w.cancel()
                w.settle()
            for w in [w for w in live if w.gone()]:
                w.cancel()
                self._release(w, live)
            while waiting and self._free:
                w = waiting.popleft()
                w.seq.slot = self._free.pop()
                live.append(w)
            if live:
                self._step(live)
            for w in [w for w in live if w.done]:
                self._release(w, live)

    def _release(self, w: Work, live: list[Work], error: BaseException | None = None) -> None:
        """Free the work's sequence (cells and slot), then tell its caller."""
        if w.seq.slot >= 0:
            self.ctx.memory_seq_rm(w.seq.slot, -1, -1)
            self._free.append(w.seq.slot)
            w.seq.slot = -1
        if w in live:
            live.remove(w)
        w.settle(error)

    def _step(self, live: list[Work]) -> None:
        try:
            outs = self._decode(live)
        except Exception as exc:
            if len(live) == 1:
                self._release(live[0], live, _engine_error(exc))
                return
            log.warning("llama_decode failed on %d sequences (%s); decoding them one by one", len(live), exc)
            for w in list(live):
                try:
                    self._take(self._decode([w]), live)
                except Exception as one:
                    self._release(w, live, _engine_error(one))
            return
        self._take(outs, live)

    def _decode(self, works: list[Work]) -> list[tuple[Work, int]]:
        """One llama_decode over `works`' pending tokens (the shortest first: one new token per generating
        sequence, then prompts while they fit). Returns (work, batch index) for every output with logits.
        On failure every sequence is rewound to where it was, so it can be decoded again."""
        batch, outs, starts = self.batch, [], []
        batch.clear()
        n = 0
        for w in sorted(works, key=lambda w: w.seq.pending):
            seq = w.seq
            starts.append((seq, seq.fed))
            while seq.pending and n < self.n_batch:
                pos = seq.fed
                batch.add(seq.tokens[pos], pos, [seq.slot], pos >= seq.want_from)
                if pos >= seq.want_from:
                    outs.append((w, n))
                seq.fed += 1
                n += 1
        if n == 0:
            return []
        try:
            self.ctx.decode(batch)
        except Exception:
            for seq, start in starts:
                self.ctx.memory_seq_rm(seq.slot, start, -1)
                seq.fed = start
            raise
        return outs

    def _take(self, outs: list[tuple[Work, int]], live: list[Work]) -> None:
        for w, idx in outs:
            if w not in live:
                continue
            try:
                w.take(self.ctx, idx)
            except Exception as exc:  # this sequence's failure (its sampler, its callback) fails it alone
                self._release(w, live, _engine_error(exc))


def _engine_error(exc: BaseException) -> EngineError:
    return exc if isinstance(exc, EngineError) else EngineError(f"llama.cpp: {type(exc).__name__}: {exc}")
