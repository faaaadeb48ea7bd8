"""The `llamacpp` engine: a GGUF file as it is (quantised, no conversion), on the CPU, through llama.cpp.

It drives llama-cpp-python's low-level API so that a group of jobs decodes together: every request is
one sequence of one KV cache (one stream per sequence), and each step puts the newest token of every
generating sequence, then as many waiting prompt tokens as fit, into one `llama_batch`. A sequence
that finishes frees its slot for the next waiting request. Each row has its own llama.cpp sampler
chain (repetition penalty over prompt and output, temperature, top_p, a seeded draw; greedy below
MIN_TEMPERATURE), its own stop conditions (the vocab's end-of-generation tokens, max_tokens, the
context, stop strings) and its own stream of text. A row whose `should_stop` turns true (its caller is
gone) leaves the batch at the next step, or never starts, with finish_reason "cancelled".

Prompts use the chat template stored in the GGUF. A model without one (a base model such as
Gemma-3-270M) gets a plain completion-style transcript (decoding.plain_prompt) and stops before it
writes the next user turn.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coe.core.assets import AssetError, resolve_model_path
from workers.engines.base import Engine, EngineError, EngineSpec, OnDelta, ShouldStop
from workers.engines.decoding import (MIN_TEMPERATURE, PLAIN_STOPS, ChoicePlan, RowText, log_softmax, plain_messages,
                                      plain_prompt, token_budget)
from workers.jobs import Completion, GenerationRequest

log = logging.getLogger(__name__)

CONTEXT_PER_SEQUENCE = 4096
"""Tokens (prompt + output) one request may use, at most the model's trained context. llama.cpp allocates
the KV cache up front for max_batch sequences of this length."""
MAX_SLOTS = 64
"""Sequences decoded together at most; more requests in one call wait for a finished one's slot."""
BATCH_TOKENS = 512
"""Tokens per llama_decode call; longer prompts are fed over several steps."""
SEED_RANGE = 0xFFFFFFFF
"""llama.cpp seeds are 32-bit, and 0xFFFFFFFF itself means 'pick one at random'."""


@dataclass
class _Seq:
    """Tokens bound for one KV-cache sequence; logits are wanted at positions >= want_from."""

    tokens: list[int]
    want_from: int
    slot: int = -1
    fed: int = 0

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.fed


@dataclass
class _Row:
    """One request's decoding state."""

    index: int
    request: GenerationRequest
    seq: _Seq
    n_prompt: int
    max_new: int
    sampler: Any
    out: RowText
    utf8: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    n_new: int = 0
    finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class LlamaCppEngine(Engine):
    """A GGUF model in llama.cpp on the CPU; one `generate` or `choice_logprobs` call at a time."""

    supports_sleep = False
    supports_stop = True

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        self.lc: Any = None
        self.model: Any = None
        self.ctx: Any = None
        self.vocab: Any = None
        self.batch: Any = None
        self.formatter: Any = None
        self.gguf: Path | None = None
        self.n_slots = 1
        self.max_context = CONTEXT_PER_SEQUENCE
        self.n_vocab = 0
        self.load_s = 0.0
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.ctx is not None

    # ---- lifecycle

    def load(self) -> None:
        with self._lock:
            if self.ctx is not None:
                return
            import llama_cpp as lc

            if logging.getLogger("llama-cpp-python").level == logging.NOTSET:  # llama.cpp logs every tensor otherwise
                logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
            t0 = time.perf_counter()
            gguf = self._gguf_path()
            lc.llama_backend_init()
            model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
            if not model:
                raise EngineError(f"llama.cpp cannot load {gguf}")
            threads = self.spec.options.threads or os.cpu_count() or 1
            self.n_slots = max(1, min(self.spec.max_batch, MAX_SLOTS))
            params = lc.llama_context_default_params()
            params.n_ctx = self.n_slots * min(CONTEXT_PER_SEQUENCE, lc.llama_model_n_ctx_train(model))
            params.n_batch = params.n_ubatch = BATCH_TOKENS
            params.n_seq_max = self.n_slots
            params.n_threads = params.n_threads_batch = threads
            params.kv_unified = False  # one stream per sequence: rows never see each other's cells
            ctx = lc.llama_init_from_model(model, params)
            if not ctx:
                lc.llama_model_free(model)
                raise EngineError(f"llama.cpp cannot make a context for {gguf} ({self.n_slots} x {params.n_ctx // self.n_slots} tokens)")
            self.lc, self.model, self.ctx, self.gguf = lc, model, ctx, gguf
            self.vocab = lc.llama_model_get_vocab(model)
            self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
            self.max_context = lc.llama_n_ctx_seq(ctx)
            self.batch = lc.llama_batch_init(BATCH_TOKENS, 0, 1)
            self.formatter = self._chat_formatter()
            self.load_s = time.perf_counter() - t0
            log.info("llamacpp engine %s loaded %s in %.1fs (%d threads, %d x %d-token sequences, chat template: %s)",
                     self.spec.key, gguf.name, self.load_s, threads, self.n_slots, self.max_context, self.formatter is not None)

    def _gguf_path(self) -> Path:
        try:
            path = resolve_model_path(self.spec.model_path or self.spec.model, cache_dir=self.spec.options.cache_dir)
        except AssetError as exc:
            raise EngineError(f"cannot load llamacpp model {self.spec.model}: {exc}") from exc
        ggufs = [path] if path.is_file() else sorted(path.glob("*.gguf"))
        if not ggufs or ggufs[0].suffix != ".gguf":
            raise EngineError(f"the llamacpp engine reads a .gguf file; none at {path}")
        return ggufs[0]

    def _chat_formatter(self) -> Any:
        raw = self.lc.llama_model_chat_template(self.model, None)
        if not raw:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        return Jinja2ChatFormatter(template=raw.decode(), eos_token=self._special(self.lc.llama_vocab_eos(self.vocab)),
                                   bos_token=self._special(self.lc.llama_vocab_bos(self.vocab)))

    def unload(self) -> None:
        with self._lock:
            if self.ctx is None:
                return
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.lc.llama_model_free(self.model)
            self.ctx = self.model = self.vocab = self.batch = self.formatter = None

    # ---- text and tokens

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat rendered with the model's own template (which writes any BOS itself), as token ids."""
        if self.formatter is None:
            return self.tokenize(plain_prompt(messages), add_special=True, parse_special=False)
        text = self.formatter(messages=plain_messages(messages)).prompt
        return self.tokenize(text, add_special=False, parse_special=True)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        size = len(data) + 8
        while True:
            ids = (self.lc.llama_token * size)()
            n = self.lc.llama_tokenize(self.vocab, data, len(data), ids, size, add_special, parse_special)
            if n >= 0:
                return list(ids[:n])
            size = -n

    def _piece(self, token: int) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lc.llama_token_to_piece(self.vocab, token, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def _special(self, token: int) -> str:
        return "" if token < 0 else (self.lc.llama_vocab_get_text(self.vocab, token) or b"").decode(errors="replace")

    # ---- generation

    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None,
                 should_stop: ShouldStop | None = None) -> list[Completion]:
        if not requests:
            return []
        with self._lock:
            if self.ctx is None:
                raise EngineError(f"llamacpp engine {self.spec.key} is not loaded")
            rows: list[_Row] = []
            try:
                for i, req in enumerate(requests):
                    rows.append(self._row(i, req))
                self._decode(rows, on_delta, should_stop)
            finally:
                for r in rows:
                    self.lc.llama_sampler_free(r.sampler)
        return [Completion(text=r.out.text, prompt_tokens=r.n_prompt, completion_tokens=r.n_new,
                           finish_reason=r.finish_reason or "length") for r in rows]

    def _row(self, i: int, req: GenerationRequest) -> _Row:
        ids = self.prompt_ids(req.messages)
        max_new = token_budget(i, len(ids), req.max_tokens, self.max_context)
        stops = [s for s in req.stop if s] + (PLAIN_STOPS if self.formatter is None else [])
        return _Row(i, req, _Seq(ids, len(ids) - 1), len(ids), max_new, self._sampler(req, ids), RowText(i, stops))

    def _sampler(self, req: GenerationRequest, prompt: list[int]) -> Any:
        """The row's sampler chain: penalty (over prompt and output), then temperature, top_p and a seeded draw."""
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if req.repetition_penalty != 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_penalties(self.n_vocab, self.max_context, req.repetition_penalty, 0.0, 0.0))
        if req.temperature < MIN_TEMPERATURE:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            seed = (req.seed if req.seed is not None else secrets.randbits(32)) % SEED_RANGE
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(req.temperature))
            if req.top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(req.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        if req.repetition_penalty != 1.0:
            for tok in prompt:  # the penalty counts the prompt's tokens too, as the local engine does
                lc.llama_sampler_accept(chain, tok)
        return chain

    def _decode(self, rows: list[_Row], on_delta: OnDelta | None, should_stop: ShouldStop | None = None) -> None:
        for r in rows:
            if r.max_new == 0:
                r.finish_reason = "length"
        waiting = [r for r in rows if not r.done]
        live: list[_Row] = []
        free = list(range(self.n_slots - 1, -1, -1))
        self._clear()
        try:
            while waiting or live:
                if should_stop is not None:
                    waiting = [r for r in waiting if not self._stopped(r, should_stop)]
                    for row in [r for r in live if self._stopped(r, should_stop)]:
                        self._free(row, live, free)
                while waiting and free:
                    live.append(waiting.pop(0))
                    live[-1].seq.slot = free.pop()
                for row, idx in self._step([r.seq for r in live], live):
                    token = self.lc.llama_sampler_sample(row.sampler, self.ctx, idx)
                    self._advance(row, token, on_delta)
                    if row.done:
                        self._free(row, live, free)
                    else:
                        row.seq.tokens.append(token)
        finally:
            self._clear()

    @staticmethod
    def _stopped(row: _Row, should_stop: ShouldStop) -> bool:
        """True (and the row finished as 'cancelled') once the row's caller is gone."""
        if should_stop(row.index):
            row.finish_reason = "cancelled"
            return True
        return False

    def _free(self, row: _Row, live: list[_Row], free: list[int]) -> None:
        """A finished row leaves the batch: its KV-cache sequence is cleared and its slot reused."""
        self.lc.llama_memory_seq_rm(self._memory(), row.seq.slot, -1, -1)
        free.append(row.seq.slot)
        live.remove(row)

    def _advance(self, row: _Row, token: int, on_delta: OnDelta | None) -> None:
        """Add one sampled token to `row`: update its text, finish it if it should stop, stream what is safe."""
        row.n_new += 1  # an end token counts as a completion token, never shown as text
        if self.lc.llama_vocab_is_eog(self.vocab, token):
            row.finish_reason = "stop"
        elif row.out.add(row.utf8.decode(self._piece(token))):
            row.finish_reason = "stop"
        elif row.n_new >= row.max_new:
            row.finish_reason = "length"
        row.out.flush(on_delta, row.done)

    def _step(self, seqs: list[_Seq], owners: list) -> list[tuple[Any, int]]:
        """Decode one llama_batch: the single pending token of each generating sequence first, then prompt
        tokens while they fit. Returns (owner, batch index) for every output with logits, in batch order."""
        batch, n, outs = self.batch, 0, []
        for seq, owner in sorted(zip(seqs, owners), key=lambda so: so[0].pending):
            while seq.pending and n < BATCH_TOKENS:
                pos = seq.fed
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = seq.tokens[pos], pos, 1
                batch.seq_id[n][0] = seq.slot
                batch.logits[n] = pos >= seq.want_from
                if pos >= seq.want_from:
                    outs.append((owner, n))
                seq.fed += 1
                n += 1
        batch.n_tokens = n
        if n == 0:
            return []
        status = self.lc.llama_decode(self.ctx, batch)
        if status == 1:
            raise EngineError("llama.cpp found no room in its KV cache for this batch")
        if status != 0:
            raise EngineError(f"llama_decode failed (status {status})")
        return outs

    def _memory(self) -> Any:
        return self.lc.llama_get_memory(self.ctx)

    def _clear(self) -> None:
        self.lc.llama_memory_clear(self._memory(), False)  # mark every cell free; no need to zero them

    # ---- multiple-choice scoring

    def choice_logprobs(self, requests: list[GenerationRequest], choices: list[str]) -> list[list[float]]:
        """Log-probability of each choice as the continuation of each request's chat prompt (see ChoicePlan)."""
        import numpy as np

        with self._lock:
            if self.ctx is None:
                raise EngineError(f"llamacpp engine {self.spec.key} is not loaded")
            choice_ids = [self.tokenize(c, add_special=False, parse_special=False) for c in choices]
            plans = [ChoicePlan.build(self.prompt_ids(r.messages), choice_ids) for r in requests]
            seqs, owners = [], []
            for p, plan in enumerate(plans):
                for s, tokens in enumerate(plan.sequences):
                    token_budget(p, len(tokens), 1, self.max_context)
                    seqs.append(_Seq(tokens, plan.n_prompt - 1))
                    owners.append((p, s))
            rows: dict[tuple[int, int], list] = {o: [] for o in owners}
            self._clear()
            try:
                for start in range(0, len(seqs), self.n_slots):  # as many sequences at once as there are slots
                    wave, wave_owners = seqs[start:start + self.n_slots], owners[start:start + self.n_slots]
                    for slot, seq in enumerate(wave):
                        seq.slot = slot
                    while any(s.pending for s in wave):
                        for owner, idx in self._step(wave, wave_owners):
                            logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))
                            rows[owner].append(log_softmax(logits))
                    self._clear()
            finally:
                self._clear()
        return [plan.scores([np.stack(rows[(p, s)]) for s in range(len(plan.sequences))]) for p, plan in enumerate(plans)]


ENGINE_CLASS = LlamaCppEngine
