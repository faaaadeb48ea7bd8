"""The `vllm` engine: vLLM's AsyncLLM (continuous batching) inside the worker that owns the GPU.

load    `AsyncLLM.from_engine_args(...)` on the engine's own event loop (engine_loop.py): an engine-core
        process starts (weights read, memory profiled, KV cache made, CUDA graphs captured): tens of seconds.
submit  one request joins vLLM's running batch as soon as the worker claims it
        (`generate(prompt, sampling_params, request_id)`); its text streams back as vLLM produces it
        (RequestOutputKind.DELTA; FINAL_ONLY when nobody streams); a cancelled request is aborted
        (`abort(request_id)`), which frees its slot and KV-cache blocks at once.
sleep   `sleep(level=1)`: weights copied to host memory, KV cache dropped, device memory given back;
        only with nothing running (the worker drains an engine before it puts it to sleep).
wake    `wake_up()`: weights copied back; a fraction of a second.
unload  `shutdown()`: the engine-core process ends and its device memory is freed.

On a GPU each engine gets `gpu_memory_utilization = memory_gb / the GPU's total memory`, so the
expert's `memory_gb` in experts.yaml is what it really takes (weights, KV cache and activations) and
the scheduler's memory budget matches the device (on `device: cpu`, vLLM's CPU backend, vLLM sizes the
KV cache from VLLM_CPU_KVCACHE_SPACE, set by whoever starts the worker). `max_num_seqs` is the
expert's max_batch: the worker keeps at most that many of its jobs in the engine. vLLM's own arguments
come from `spec.options.vllm_args` (the service's COE_VLLM_ENGINE_ARGS, handed down) and override the
derived ones. The GPU is chosen by the process (`coe worker --device gpu:N` sets CUDA_VISIBLE_DEVICES
before CUDA starts).

The chat template is applied here with the model's tokenizer, and prompts go to vLLM as token ids with
one SamplingParams per request (temperature, top_p, repetition_penalty, seed, stop strings, max_tokens);
a base model without a template gets the same plain transcript and stops as on the CPU engines.
A GGUF model (`package:`, `parts:` or a .gguf path) is converted once into a cached Hugging Face folder
(coe.core.weights), which vLLM loads in bfloat16 on a GPU unless vllm_args name a dtype.
Multiple-choice scoring (`choice_logprobs`) reads vLLM's prompt log-probabilities of prompt + choice.
vllm is imported only when an engine loads, so the rest of the service runs where it is not installed.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from coe.core.assets import PACKAGE_PREFIX, PARTS_PREFIX, AssetError
from coe.core.weights import is_hf_folder, prepare_local_weights
from workers.engines.base import ContextLengthExceeded, EngineError, EngineSpec
from workers.engines.decoding import PLAIN_STOPS, per_request, plain_messages, plain_prompt
from workers.engines.engine_loop import Emit, LoopEngine
from workers.jobs import Completion, GenerationRequest

log = logging.getLogger(__name__)

MAX_UTILIZATION = 0.95


def gpu_total_gb(index: int = 0) -> float:
    """Total memory of GPU `index` in GiB, read through NVML when it is there (no CUDA context made)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML: ask torch (this makes a CUDA context in the worker process)
        import torch

        if not torch.cuda.is_available():
            raise EngineError("the vllm engine needs a GPU and none is visible") from None
        return torch.cuda.get_device_properties(index).total_memory / 2**30


def is_gguf_ref(model: str) -> bool:
    """True for weights vLLM should get converted: a model package or split model, a .gguf file, or a folder
    holding one; a Hugging Face folder or a hub-style id goes to vLLM as it is."""
    if model.startswith((PACKAGE_PREFIX, PARTS_PREFIX)) or model.endswith(".gguf"):
        return True
    path = Path(model).expanduser()
    return path.is_dir() and not is_hf_folder(path) and any(path.glob("*.gguf"))


def memory_utilization(memory_gb: float, total_gb: float) -> float:
    """The fraction of the GPU an expert that needs `memory_gb` may take."""
    if memory_gb > total_gb * MAX_UTILIZATION:
        raise EngineError(f"expert needs {memory_gb} GB but the GPU has {total_gb:.1f} GB")
    return round(memory_gb / total_gb, 4)


class VllmEngine(LoopEngine):
    """One AsyncLLM (its own engine-core process) for one set of weights."""

    supports_sleep = True

    def __init__(self, spec: EngineSpec, **engine_args: Any):
        super().__init__(spec)
        self.engine_args = engine_args
        self.llm: Any = None
        self.tokenizer: Any = None
        self.asleep = False
        self.max_model_len = 0
        self.load_s = 0.0
        self.weights: str | None = None  # what vLLM loads: the model, or the folder a GGUF was converted into
        self.running: set[str] = set()  # request ids inside vLLM; touched on the engine's loop only

    @property
    def model(self) -> str:
        return self.spec.model_path or self.spec.model

    def llm_args(self, total_gb: float | None = None) -> dict:
        """The AsyncEngineArgs: derived from the spec, then the worker's vllm_args, then the constructor's."""
        args = {"model": self.weights or self.model, "max_num_seqs": self.spec.max_batch, "seed": 0,
                "disable_log_stats": True}
        if self.spec.device != "cpu":
            total = gpu_total_gb(0) if total_gb is None else total_gb  # the worker process sees only its GPU
            args["gpu_memory_utilization"] = memory_utilization(self.spec.memory_gb, total)
            args["enable_sleep_mode"] = True
            if self.weights:  # converted from a GGUF in float32: the quantised weights lose nothing in bf16
                args["dtype"] = "bfloat16"
        args.update(self.spec.options.vllm_args)
        args.update(self.engine_args)
        return args

    # ---- lifecycle: blocking calls (worker threads, scripts) run on the engine's loop

    def load(self) -> None:
        self.runner.call(self._load())

    def sleep(self) -> None:
        self.runner.call(self._sleep())

    def wake(self) -> None:
        self.runner.call(self._wake())

    def unload(self) -> None:
        if self.runner.loop is None:
            return
        self.runner.call(self._unload())
        self.runner.stop()

    async def _load(self) -> None:
        if self.llm is not None:
            await self._wake()
            return
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise EngineError(f"vllm is not installed: {exc}") from exc
        if is_gguf_ref(self.model) and self.weights is None:
            try:
                folder = await asyncio.to_thread(prepare_local_weights, self.model, self.spec.options.cache_dir)
            except (AssetError, OSError, ValueError) as exc:
                raise EngineError(f"cannot prepare local model {self.spec.model} for vllm: {exc}") from exc
            self.weights = None if str(folder) == self.model else str(folder)
        args = self.llm_args()
        t0 = time.perf_counter()
        try:
            llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
            tokenizer = None
            if not args.get("skip_tokenizer_init"):
                tokenizer = llm.get_tokenizer()
                if inspect.isawaitable(tokenizer):  # a coroutine in some vLLM releases
                    tokenizer = await tokenizer
        except Exception as exc:
            raise EngineError(f"vllm could not start {self.spec.model}: {type(exc).__name__}: {exc}") from exc
        self.llm, self.tokenizer, self.asleep = llm, tokenizer, False
        self.max_model_len = int(llm.model_config.max_model_len)
        self.load_s = time.perf_counter() - t0
        log.info("vllm engine %s started in %.1fs (gpu_memory_utilization=%s)", self.spec.key, self.load_s,
                 args.get("gpu_memory_utilization"))

    async def _sleep(self) -> None:
        if self.llm is None or self.asleep:
            return
        if self.running:
            raise EngineError(f"vllm engine {self.spec.key} cannot sleep with {len(self.running)} requests running")
        await self.llm.sleep(level=1)
        self.asleep = True

    async def _wake(self) -> None:
        if self.llm is None:
            await self._load()
        elif self.asleep:
            await self.llm.wake_up()
            self.asleep = False

    async def _unload(self) -> None:
        llm, self.llm, self.tokenizer, self.asleep = self.llm, None, None, False
        if llm is None:
            return
        try:
            if self.running:
                await llm.abort(list(self.running))
            llm.shutdown()
        except Exception:  # best effort: the engine is going away either way
            log.debug("vllm shutdown failed", exc_info=True)
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # ---- requests

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.tokenizer is None:
            raise EngineError("this engine was started without a tokenizer (skip_tokenizer_init); it cannot take chats")
        if not self.has_template:  # a base model: the CPU engines' transcript, with its begin-of-text token
            return list(self.tokenizer.encode(plain_prompt(messages), add_special_tokens=True))
        text = self.tokenizer.apply_chat_template(plain_messages(messages), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def sampling_params(self, request: GenerationRequest, room: int, stream: bool = True) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        stops = [s for s in request.stop if s] + ([] if self.has_template else PLAIN_STOPS)
        return SamplingParams(
            n=1, max_tokens=max(1, min(request.max_tokens, room)), temperature=request.temperature, top_p=request.top_p,
            repetition_penalty=request.repetition_penalty, seed=request.seed, stop=stops or None,
            logprobs=0 if request.confidence else None,  # the sampled token's own: Completion.mean_logprob
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        )

    # ---- multiple-choice scoring

    def choice_logprobs(self, requests: list[GenerationRequest],
                        choices: list[str]) -> list[list[float] | EngineError]:
        """Log-probability of each choice as the continuation of each request's chat prompt (the sum over the
        choice's tokens, as decoding.ChoicePlan defines it); every prompt + choice joins vLLM's batch at once,
        and its prefix cache computes a shared prompt once. A prompt too long for the context fails alone."""
        return self.runner.call(self._choice_logprobs(requests, choices))

    async def _choice_logprobs(self, requests: list[GenerationRequest],
                               choices: list[str]) -> list[list[float] | EngineError]:
        if self.llm is None or self.asleep:
            raise EngineError(f"vllm engine {self.spec.key} is not resident")
        choice_ids = [list(self.tokenizer.encode(c, add_special_tokens=False)) for c in choices]
        if not all(choice_ids):
            raise EngineError("a choice to score is empty")

        def admit(_i: int, request: GenerationRequest) -> list[int]:
            prompt = self.prompt_ids(request.messages)
            if len(prompt) + max(map(len, choice_ids)) > self.max_model_len:
                raise ContextLengthExceeded(len(prompt), self.max_model_len)
            return prompt

        prompts = per_request(requests, admit)
        fit = [p for p in prompts if not isinstance(p, EngineError)]
        flat = iter(await asyncio.gather(*(self._continuation_logprob(prompt + c, len(prompt))
                                           for prompt in fit for c in choice_ids)))
        return [p if isinstance(p, EngineError) else [next(flat) for _ in choice_ids] for p in prompts]

    async def _continuation_logprob(self, ids: list[int], n_prompt: int) -> float:
        """Sum of log p(ids[j] | ids[:j]) for j >= n_prompt, from one prompt-logprobs pass (no token is sampled)."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        params = SamplingParams(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=1,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        rid = uuid.uuid4().hex
        self.running.add(rid)
        try:
            final = None
            async for out in self.llm.generate({"prompt_token_ids": ids}, params, rid):
                final = out
        except Exception as exc:
            raise EngineError(f"vllm engine {self.spec.key}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.running.discard(rid)
        if final is None or final.prompt_logprobs is None:
            raise EngineError(f"vllm engine {self.spec.key} returned no prompt log-probabilities")
        return float(sum(final.prompt_logprobs[j][ids[j]].logprob for j in range(n_prompt, len(ids))))

    async def complete(self, request: GenerationRequest, emit: Emit, stream: bool) -> Completion:
        if self.llm is None or self.asleep:
            raise EngineError(f"vllm engine {self.spec.key} is not resident")
        ids = self.prompt_ids(request.messages)
        room = self.max_model_len - len(ids)
        if room < 1:
            raise ContextLengthExceeded(len(ids), self.max_model_len)
        params = self.sampling_params(request, room, stream)
        rid = uuid.uuid4().hex
        llm, parts, tokens, finish, logprob = self.llm, [], 0, None, 0.0
        self.running.add(rid)
        try:
            async for out in llm.generate({"prompt_token_ids": ids}, params, rid):
                o = out.outputs[0]
                if o.text or o.token_ids:
                    emit(o.text, len(o.token_ids))
                    parts.append(o.text)
                    tokens += len(o.token_ids)
                    logprob += sum(step[t].logprob for t, step in zip(o.token_ids, o.logprobs or []) if t in step)
                finish = o.finish_reason or finish
        except asyncio.CancelledError:
            try:
                await llm.abort(rid)  # frees the slot now, not when the request would have ended
            except Exception:
                log.warning("vllm engine %s could not abort request %s", self.spec.key, rid, exc_info=True)
            raise
        except Exception as exc:
            raise EngineError(f"vllm engine {self.spec.key}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.running.discard(rid)
        return Completion(text="".join(parts), prompt_tokens=len(ids), completion_tokens=tokens,
                          finish_reason=finish or "length",
                          mean_logprob=logprob / tokens if tokens and request.confidence else None)


ENGINE_CLASS = VllmEngine
