"""A stand-in for the parts of vLLM 0.24 that coe and the GPU benchmark use, for machines without a GPU.

`AsyncLLM` behaves like vLLM's (vllm.v1.engine.async_llm): `from_engine_args(AsyncEngineArgs(...))`,
`generate(prompt, sampling_params, request_id)` an async generator of RequestOutputs (DELTA: new text
only; FINAL_ONLY: one output at the end), `abort(request_id)`, `sleep(level)`, `wake_up()`,
`shutdown()`, `get_tokenizer()`, `model_config.max_model_len`, and `prompt_logprobs` (each prompt token's
log-probability is a fixed function of the token and its position: `prompt_logprob`). Every request decodes one token per
`step_s` seconds on its own, so requests interleave the way continuous batching lets them; a request
the caller stops reading (cancelled task) is aborted as vLLM does, and every abort is recorded.
Its "tokens" are words (`w0 w1 ...`). Used by the tests (`..._with_stand_in_vllm`) and by
`evals/gpu/vs_vllm.py --stand-in`.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import time
import types
from dataclasses import dataclass, field


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    def __init__(self, n: int = 1, max_tokens: int = 16, temperature: float = 1.0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
                 output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE, ignore_eos: bool = False,
                 prompt_logprobs: int | None = None, logprobs: int | None = None):
        self.n, self.max_tokens, self.temperature, self.top_p = n, max_tokens, temperature, top_p
        self.repetition_penalty, self.seed, self.stop, self.output_kind = repetition_penalty, seed, stop, output_kind
        self.ignore_eos, self.prompt_logprobs, self.logprobs = ignore_eos, prompt_logprobs, logprobs


class AsyncEngineArgs:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        for k, v in kwargs.items():
            setattr(self, k, v)


class Tokenizer:
    """Characters as token ids (BOS = 1 when special tokens are asked for); a chat template that marks roles."""

    chat_template: str | None = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" if add_generation_prompt else "")

    def encode(self, text, add_special_tokens=False):
        return [1] * add_special_tokens + [ord(c) % 256 for c in text]


def prompt_logprob(token: int, position: int) -> float:
    """The stand-in's log-probability of prompt token `token` at `position`."""
    return -0.5 - (token + 3 * position) % 7


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[dict[int, Logprob]] | None = None  # with SamplingParams.logprobs: the sampled token's, per token


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int] | None
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


@dataclass
class Record:
    """What an engine saw, for tests and the benchmark's stand-in mode."""

    calls: list[tuple] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    peak_running: int = 0


class AsyncLLM:
    instances: list[AsyncLLM] = []
    step_s = 0.01
    start_s = 0.0  # what a real engine takes: start tens of seconds, sleep about a second, wake a fraction of one
    sleep_s = 0.0
    wake_s = 0.0

    def __init__(self, args: dict):
        self.args = args
        self.record = Record()
        self.model_config = types.SimpleNamespace(max_model_len=int(args.get("max_model_len") or 2048))
        self.running: set[str] = set()
        self.sleeping = False
        self.dead = False
        AsyncLLM.instances.append(self)

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, **_) -> AsyncLLM:
        time.sleep(cls.start_s)
        return cls(engine_args.kwargs)

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    async def generate(self, prompt, sampling_params: SamplingParams, request_id: str):
        if self.sleeping or self.dead:
            raise RuntimeError(f"engine is {'asleep' if self.sleeping else 'shut down'}")
        ids = list(prompt["prompt_token_ids"])
        self.record.calls.append(("generate", request_id, sampling_params, ids))
        self.running.add(request_id)
        self.record.peak_running = max(self.record.peak_running, len(self.running))
        kind, text, tokens = sampling_params.output_kind, "", []
        scores = None
        if sampling_params.prompt_logprobs is not None:  # vLLM's layout: none for the first token
            scores = [None] + [{t: Logprob(prompt_logprob(t, j))} for j, t in enumerate(ids) if j > 0]
        try:
            for i in range(sampling_params.max_tokens):
                await asyncio.sleep(self.step_s)
                if request_id not in self.running:  # aborted from outside
                    return
                piece = f"w{i} "
                text += piece
                tokens.append(i)
                stop = next((s for s in sampling_params.stop or [] if s in text), None)
                last = stop is not None or i == sampling_params.max_tokens - 1
                reason = "stop" if stop else ("length" if last else None)
                if stop:
                    piece = piece[: max(0, len(piece) - (len(text) - text.index(stop)))]
                    text = text[: text.index(stop)]
                wanted = sampling_params.logprobs is not None
                if kind is RequestOutputKind.DELTA:
                    yield RequestOutput(request_id, ids if i == 0 else None,
                                        [CompletionOutput(0, piece, [i], reason, [{i: Logprob(-0.5)}] if wanted else None)], last)
                elif last or kind is RequestOutputKind.CUMULATIVE:
                    yield RequestOutput(request_id, ids, [CompletionOutput(0, text, list(tokens), reason,
                                                                           [{t: Logprob(-0.5)} for t in tokens] if wanted else None)],
                                        last, scores)
                if last:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)  # as vLLM: a request nobody reads any more is aborted
            raise
        finally:
            self.running.discard(request_id)

    async def abort(self, request_id) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            self.record.calls.append(("abort", rid))
            self.record.aborted.append(rid)
            self.running.discard(rid)

    async def sleep(self, level: int = 1) -> None:
        await asyncio.sleep(self.sleep_s)
        self.record.calls.append(("sleep", level))
        self.sleeping = True

    async def wake_up(self, tags=None) -> None:
        await asyncio.sleep(self.wake_s)
        self.record.calls.append(("wake_up",))
        self.sleeping = False

    def shutdown(self) -> None:
        self.record.calls.append(("shutdown",))
        self.dead = True


def modules() -> dict[str, types.ModuleType]:
    """sys.modules entries that make `import vllm...` find the stand-in."""
    names = {
        "vllm": {"SamplingParams": SamplingParams, "AsyncEngineArgs": AsyncEngineArgs, "__version__": "stand-in"},
        "vllm.engine": {}, "vllm.engine.arg_utils": {"AsyncEngineArgs": AsyncEngineArgs},
        "vllm.v1": {}, "vllm.v1.engine": {}, "vllm.v1.engine.async_llm": {"AsyncLLM": AsyncLLM},
        "vllm.sampling_params": {"SamplingParams": SamplingParams, "RequestOutputKind": RequestOutputKind},
    }
    out = {}
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        out[name] = mod
    return out


def install() -> None:
    """Make the stand-in importable as `vllm` in this process (the benchmark's --stand-in mode)."""
    sys.modules.update(modules())
