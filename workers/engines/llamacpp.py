"""The `llamacpp` engine: a GGUF file as it is (quantised, no conversion), on the CPU, through llama.cpp.

The binding is cyllama 0.2.18 (MIT; a prebuilt cp311 manylinux wheel of llama.cpp b9190: nothing is compiled
on the machine). Judged against llama-cpp-python, which builds from source only (4-26 minutes here), its
low-level module `cyllama.llama.llama_cpp` covers what this engine needs: per-sequence KV removal
(`memory_seq_rm`), a sampler chain with penalties, temperature, top_p and a seeded draw, thread counts,
the Jinja chat template stored in the GGUF, multi-sequence `LlamaBatch`es and `llama_decode`. Its weak
points: no stubs or signatures (learnt from its docstrings and its own Python callers), one maintainer,
and in this version `LlamaContext.get_logits[_ith]` read a `model.n_vocab` that LlamaModel lacks (worked
around by `_Model`) and copy the row into a Python list (under a millisecond for 49k tokens, a few for
Qwen's 152k). Its high-level batching (`batch_generate`, `BatchGenerator`) is not used.

Continuous batching (`submit`, and `generate` and `choice_logprobs` through the same queue): one decode
thread owns the context (llamacpp_batch.DecodeLoop). Every request is one KV-cache sequence with its own
sampler chain (repetition penalty over prompt and output, temperature, top_p, a seeded draw; greedy below
MIN_TEMPERATURE), its own stop conditions (the vocab's end-of-generation tokens, max_tokens, the context,
stop strings) and its own stream of text (RowText: nothing that could still become a stop string is shown).
A request whose caller is gone (`cancelled`, a cancelled task, `should_stop`) leaves the batch at the next
step with finish_reason "cancelled", its sequence freed. A completion whose request asks for `confidence` carries
`mean_logprob`, the mean log-probability of its generated tokens under the model's raw logits (before temperature):
only on request, since cyllama hands the logits over as a Python list of the whole vocabulary (152k floats for
Qwen), several milliseconds a token, which at 8 streams cost more than the decode step itself.

Threads: options.threads (COE_TORCH_THREADS) or every core, as llama.cpp's server does. llama.cpp's threads
wait for each other at every operation, so on cores another process keeps busy, fewer threads are faster:
SmolLM2 at batch 1 on 2 cores, one of them taken by another job, gave 0.9 tokens/s with 2 threads and 33.5
with 1. n_batch is 512 tokens (llama.cpp's n_ubatch): a long prompt is fed in chunks between which the
running sequences keep generating; 128, 256, 512 and 2048 gave the same 25-26 tokens/s for the 0.5B at 8
streams of short prompts (2 threads), so it matters only for long prompts.

Prompts use the chat template stored in the GGUF, or the expert's `chat_template`. A model with neither is
refused at load, unless the expert is marked `completion` (a base model such as Gemma-3-270M): it then gets
a plain transcript (decoding.plain_prompt) and stops before it writes the next user turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from cyllama.llama import llama_cpp as cy

from coe.core.assets import AssetError, resolve_model_path
from workers.engines.base import CANCELLED, Engine, EngineError, EngineSpec, OnDelta, OnText, ShouldStop
from workers.engines.chat_template import ChatTemplate
from workers.engines.decoding import (MIN_TEMPERATURE, PLAIN_STOPS, ChoicePlan, RowText, log_softmax, per_request,
                                      plain_prompt, token_budget)
from workers.engines.llamacpp_batch import DecodeLoop, Seq, Work
from workers.jobs import Completion, GenerationRequest

log = logging.getLogger(__name__)

CONTEXT_PER_SEQUENCE = 4096
"""Tokens (prompt + output) one request may use, at most the model's trained context. llama.cpp allocates
the KV cache up front for every slot at this length."""
MAX_SLOTS = 64
"""Sequences decoded together at most; more requests wait for a finished one's slot."""
BATCH_TOKENS = 512
"""Tokens per llama_decode call; a longer prompt is fed over several steps, between which the other
sequences keep generating."""
SEED_RANGE = 0xFFFFFFFF
"""llama.cpp seeds are 32-bit, and 0xFFFFFFFF itself means 'pick one at random'."""
UTF8_HOLD = 4
"""Tokens held back at most while they end inside a UTF-8 character (a character has at most 4 bytes)."""


class _Model(cy.LlamaModel):
    """cyllama 0.2.18's LlamaContext.get_logits_ith reads `model.n_vocab`, which LlamaModel lacks."""

    @property
    def n_vocab(self) -> int:
        return self.get_vocab().n_vocab


def token_logprob(logits: list[float], token: int) -> float:
    """log softmax(logits)[token], from the raw logits."""
    x = np.asarray(logits, dtype=np.float32)
    top = x.max()
    return float(x[token] - top - np.log(np.exp(x - top).sum(dtype=np.float64)))


class _Gen(Work):
    """One request being generated: its sampler, stop conditions, text and confidence."""

    def __init__(self, engine: "LlamaCppEngine", index: int, ids: list[int], max_new: int, sampler: Any,
                 stops: list[str], on_delta: OnDelta | None, should_stop: ShouldStop | None, confidence: bool = False):
        super().__init__(Seq(ids, len(ids) - 1))
        self.vocab, self.index, self.n_prompt, self.max_new = engine.vocab, index, len(ids), max_new
        self.sampler, self.on_delta, self.should_stop = sampler, on_delta, should_stop
        self.out = RowText(index, stops)
        self.abort = threading.Event()
        self.held: list[int] = []  # tokens whose bytes end inside a UTF-8 character
        self.n_new = 0
        self.confidence = confidence
        self.logprob_sum = 0.0
        self.finish_reason: str | None = "length" if max_new == 0 else None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def gone(self) -> bool:
        return (self.abort.is_set() or self.future.cancelled()
                or (self.should_stop is not None and self.should_stop(self.index)))

    def cancel(self) -> None:
        self.finish_reason = CANCELLED

    def take(self, ctx: Any, idx: int) -> None:
        token = self.sampler.sample(ctx, idx)
        if self.confidence:
            self.logprob_sum += token_logprob(ctx.get_logits_ith(idx), token)
        self.n_new += 1  # an end token counts as a completion token, never shown as text
        if self.vocab.is_eog(token):
            self.finish_reason = "stop"
        elif self.out.add(self._text(token)):
            self.finish_reason = "stop"
        elif self.n_new >= self.max_new:
            self.finish_reason = "length"
        self.out.flush(self.on_delta, self.done)
        if not self.done:
            self.seq.tokens.append(token)

    def _text(self, token: int) -> str:
        """The token's text, or '' while its bytes end inside a character (held until it is complete)."""
        if not self.held:
            piece = self.vocab.token_to_piece(token, 0, False)
            if "\ufffd" not in piece:
                return piece
        self.held.append(token)
        text = self.vocab.detokenize(self.held, remove_special=False, unparse_special=False)
        if text.endswith("\ufffd") and len(self.held) < UTF8_HOLD:
            return ""
        self.held.clear()
        return text

    def result(self) -> Completion:
        return Completion(text=self.out.text, prompt_tokens=self.n_prompt, completion_tokens=self.n_new,
                          finish_reason=self.finish_reason or "length",
                          mean_logprob=self.logprob_sum / self.n_new if self.n_new and self.confidence else None)


class _Score(Work):
    """One sequence of a multiple-choice plan: log-softmax rows at positions want_from onwards."""

    def __init__(self, tokens: list[int], want_from: int):
        super().__init__(Seq(tokens, want_from))
        self.rows: list[np.ndarray] = []

    @property
    def done(self) -> bool:
        return self.seq.pending == 0

    def take(self, ctx: Any, idx: int) -> None:
        self.rows.append(log_softmax(np.asarray(ctx.get_logits_ith(idx), dtype=np.float32)))

    def result(self) -> np.ndarray:
        return np.stack(self.rows)


class LlamaCppEngine(Engine):
    """A GGUF model in llama.cpp on the CPU, decoding every request in flight in one batch."""

    supports_sleep = False
    supports_stop = True
    supports_streaming_submit = True

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        self.model: Any = None
        self.ctx: Any = None
        self.vocab: Any = None
        self.template: ChatTemplate | None = None
        self.decoder: DecodeLoop | None = None
        self.gguf: Path | None = None
        self.threads = 1
        self.n_slots = 1
        self.max_context = CONTEXT_PER_SEQUENCE
        self.load_s = 0.0
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.decoder is not None

    # ---- lifecycle

    def load(self) -> None:
        with self._lock:
            if self.decoder is not None:
                return
            t0 = time.perf_counter()
            gguf = self._gguf_path()
            if log.getEffectiveLevel() > logging.DEBUG:
                cy.disable_logging()  # llama.cpp logs every tensor otherwise
            try:
                model = _Model(str(gguf), cy.LlamaModelParams(), verbose=False)
            except Exception as exc:
                raise EngineError(f"llama.cpp cannot load {gguf}: {exc}") from exc
            template = self._chat_template(model, gguf)
            self.threads = self.spec.options.threads or os.cpu_count() or 1
            self.n_slots = max(1, min(self.spec.max_batch, MAX_SLOTS))
            params = cy.LlamaContextParams()
            params.n_ctx = self.n_slots * min(CONTEXT_PER_SEQUENCE, model.n_ctx_train)
            params.n_batch = params.n_ubatch = BATCH_TOKENS
            params.n_seq_max = self.n_slots
            params.n_threads = params.n_threads_batch = self.threads
            params.kv_unified = False  # one stream per sequence: sequences never attend to each other's cells
            try:
                ctx = cy.LlamaContext(model, params, verbose=False)
            except Exception as exc:
                raise EngineError(f"llama.cpp cannot make a context for {gguf} ({self.n_slots} x "
                                  f"{params.n_ctx // self.n_slots} tokens): {exc}") from exc
            self.model, self.ctx, self.vocab, self.template, self.gguf = model, ctx, model.get_vocab(), template, gguf
            self.max_context = ctx.n_ctx_seq
            batch = cy.LlamaBatch(n_tokens=BATCH_TOKENS, embd=0, n_seq_max=1)
            self.decoder = DecodeLoop(ctx, batch, self.n_slots, BATCH_TOKENS, self.spec.key)
            self.load_s = time.perf_counter() - t0
            log.info("llamacpp engine %s loaded %s in %.1fs (%d threads, %d x %d-token sequences, prompt: %s)",
                     self.spec.key, gguf.name, self.load_s, self.threads, self.n_slots, self.max_context,
                     "plain transcript" if template is None else "chat template")

    def _gguf_path(self) -> Path:
        try:
            path = resolve_model_path(self.spec.model_path or self.spec.model, cache_dir=self.spec.options.cache_dir)
        except AssetError as exc:
            raise EngineError(f"cannot load llamacpp model {self.spec.model}: {exc}") from exc
        ggufs = [path] if path.is_file() else sorted(path.glob("*.gguf"))
        if not ggufs or ggufs[0].suffix != ".gguf":
            raise EngineError(f"the llamacpp engine reads a .gguf file; none at {path}")
        return ggufs[0]

    def _chat_template(self, model: Any, gguf: Path) -> ChatTemplate | None:
        """The expert's template, else the GGUF's; None for a completion model. A chat model needs one."""
        if self.spec.completion:
            return None
        source = self.spec.chat_template or model.get_default_chat_template()
        if not source:
            who = ", ".join(f"'{e}'" for e in self.spec.experts) or f"for {self.spec.model}"
            raise EngineError(f"expert {who}: {gguf.name} has no chat template (a base model cannot answer a chat); "
                              "give the expert `chat_template: <jinja>` in experts.yaml, or `completion: true` "
                              "to prompt it with a plain transcript")
        vocab = model.get_vocab()
        special = [vocab.token_to_piece(t, 0, True) if t >= 0 else "" for t in (vocab.token_bos(), vocab.token_eos())]
        return ChatTemplate(source, bos_token=special[0], eos_token=special[1])

    def unload(self) -> None:
        with self._lock:
            if self.decoder is None:
                return
            self.decoder.close()
            self.ctx.close()
            self.model.close()
            self.decoder = self.ctx = self.model = self.vocab = self.template = None

    # ---- text and tokens

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat rendered with the chat template (which writes any BOS itself), as token ids."""
        if self.template is None:
            return self.vocab.tokenize(plain_prompt(messages), True, False)
        return self.vocab.tokenize(self.template.render(messages), False, True)

    # ---- generation

    def _decoder(self) -> DecodeLoop:
        if self.decoder is None:
            raise EngineError(f"llamacpp engine {self.spec.key} is not loaded")
        return self.decoder

    def _gen(self, i: int, req: GenerationRequest, on_delta: OnDelta | None, should_stop: ShouldStop | None) -> _Gen:
        ids = self.prompt_ids(req.messages)
        max_new = token_budget(len(ids), req.max_tokens, self.max_context)
        stops = [s for s in req.stop if s] + (PLAIN_STOPS if self.template is None else [])
        return _Gen(self, i, ids, max_new, self._sampler(req, ids), stops, on_delta, should_stop, req.confidence)

    def _sampler(self, req: GenerationRequest, prompt: list[int]) -> Any:
        """The request's sampler chain: penalty (over prompt and output), then temperature, top_p and a seeded draw."""
        chain = cy.LlamaSampler(cy.LlamaSamplerChainParams())
        if req.repetition_penalty != 1.0:
            chain.add_penalties(self.max_context, req.repetition_penalty, 0.0, 0.0)
        if req.temperature < MIN_TEMPERATURE:
            chain.add_greedy()
        else:
            chain.add_temp(req.temperature)
            if req.top_p < 1.0:
                chain.add_top_p(req.top_p, 1)
            chain.add_dist((req.seed if req.seed is not None else secrets.randbits(32)) % SEED_RANGE)
        if req.repetition_penalty != 1.0:
            for tok in prompt:  # the penalty counts the prompt's tokens too, as the local engine does
                chain.accept(tok)
        return chain

    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None,
                 should_stop: ShouldStop | None = None) -> list[Completion | EngineError]:
        """Every request that fits the context joins the running batch; blocks until all are done. A request that
        fails (too long, or its sequence failed) gets its EngineError in its place; the others are not failed."""
        if not requests:
            return []
        decoder = self._decoder()
        gens = per_request(requests, lambda i, r: self._gen(i, r, on_delta, should_stop))
        decoder.put([g for g in gens if isinstance(g, _Gen)])
        return [g if isinstance(g, EngineError) else _outcome(g) for g in gens]

    async def submit(self, request: GenerationRequest, on_text: OnText | None = None,
                     cancelled: asyncio.Event | None = None) -> Completion:
        loop = asyncio.get_running_loop()
        emit = None if on_text is None else (lambda _row, text: loop.call_soon_threadsafe(on_text, text))
        gen = self._gen(0, request, emit, None)
        self._decoder().put([gen])
        done = asyncio.wrap_future(gen.future)
        watcher = asyncio.ensure_future(cancelled.wait()) if cancelled is not None else None
        try:
            if watcher is not None:
                await asyncio.wait({done, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not done.done():
                    gen.abort.set()  # ends as 'cancelled' at the next step, its sequence freed first
            return await done
        except asyncio.CancelledError:
            gen.abort.set()
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    # ---- multiple-choice scoring

    def choice_logprobs(self, requests: list[GenerationRequest],
                        choices: list[str]) -> list[list[float] | EngineError]:
        """Log-probability of each choice as the continuation of each request's chat prompt (see ChoicePlan);
        every plan's sequences join the running batch, one slot each. A request that fails (too long, or one of
        its sequences failed) gets its EngineError in its place."""
        decoder = self._decoder()
        choice_ids = [self.vocab.tokenize(c, False, False) for c in choices]

        def admit(_i: int, request: GenerationRequest) -> tuple[ChoicePlan, list[_Score]]:
            plan = ChoicePlan.build(self.prompt_ids(request.messages), choice_ids)
            for tokens in plan.sequences:
                token_budget(len(tokens), 1, self.max_context)
            return plan, [_Score(tokens, plan.n_prompt - 1) for tokens in plan.sequences]

        admitted = per_request(requests, admit)
        decoder.put([w for a in admitted if not isinstance(a, EngineError) for w in a[1]])
        return [a if isinstance(a, EngineError) else _scores(*a) for a in admitted]


def _outcome(work: Work) -> Any:
    """The work's result, or the EngineError that failed it alone."""
    try:
        return work.future.result()
    except EngineError as exc:
        return exc


def _scores(plan: ChoicePlan, works: list[_Score]) -> list[float] | EngineError:
    rows = [_outcome(w) for w in works]
    failed = [r for r in rows if isinstance(r, EngineError)]
    return failed[0] if failed else plan.scores(rows)


ENGINE_CLASS = LlamaCppEngine
