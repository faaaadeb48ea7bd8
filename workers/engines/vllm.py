"""The `vllm` engine: vLLM's offline `LLM` inside the worker that owns the GPU.

load    starts an engine (weights read, memory profiled, KV cache made, CUDA graphs
        captured): tens of seconds.
sleep   `LLM.sleep(level=1)`: weights copied to host memory, KV cache dropped, the
        device memory given back; the engine process stays.
wake    `LLM.wake_up()`: weights copied back; a fraction of a second.
unload  the engine is shut down and its device memory freed.

On a GPU each engine gets `gpu_memory_utilization = memory_gb / the GPU's total memory`, so
the expert's `memory_gb` in experts.yaml is what it really takes (weights, KV cache
and activations) and the scheduler's memory budget matches the device (on `device: cpu`, vLLM's CPU
backend, vLLM sizes the KV cache from VLLM_CPU_KVCACHE_SPACE, set by whoever starts the worker).
vLLM's own arguments for every engine of a worker come from the worker's settings (COE_VLLM_ENGINE_ARGS,
a JSON object such as '{"enforce_eager": true, "max_model_len": 4096}'); they override the derived ones.
The GPU is chosen by the process (`coe worker --device gpu:N` sets CUDA_VISIBLE_DEVICES before CUDA starts).

The chat template is applied here with the model's tokenizer, and prompts go to
vLLM as token ids with one SamplingParams per request, so every row keeps its own
temperature, top_p, repetition_penalty, seed, stop strings and max_tokens. vLLM
does not stream through the offline API: `on_delta` gets each row's whole text
once, at the end.

vllm is imported only when an engine loads, so the rest of the service runs where
it is not installed.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from workers.engines.base import Engine, EngineError, EngineSpec, OnDelta
from workers.engines.decoding import plain_messages
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


def memory_utilization(memory_gb: float, total_gb: float) -> float:
    """The fraction of the GPU an expert that needs `memory_gb` may take."""
    if memory_gb > total_gb * MAX_UTILIZATION:
        raise EngineError(f"expert needs {memory_gb} GB but the GPU has {total_gb:.1f} GB")
    return round(memory_gb / total_gb, 4)




def _plain_prompt(messages: list[dict]) -> str:
    """A prompt for tokenizers without a chat template."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


class VllmEngine(Engine):
    """One vLLM engine (its own engine-core process) for one set of weights."""

    supports_sleep = True

    def __init__(self, spec: EngineSpec, **engine_args: Any):
        super().__init__(spec)
        self.engine_args = engine_args
        self.llm: Any = None
        self.tokenizer: Any = None
        self.asleep = False
        self.max_model_len = 0
        self.load_s = 0.0
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self.spec.model_path or self.spec.model

    def llm_args(self, total_gb: float | None = None) -> dict:
        """The arguments `LLM(...)` gets: derived from the spec, then the worker's vllm_args, then the constructor's."""
        args = {"model": self.model, "max_num_seqs": self.spec.max_batch, "seed": 0}
        if self.spec.device != "cpu":
            total = gpu_total_gb(0) if total_gb is None else total_gb  # the worker process sees only its GPU
            args["gpu_memory_utilization"] = memory_utilization(self.spec.memory_gb, total)
            args["enable_sleep_mode"] = True
        args.update(self.spec.options.vllm_args)
        args.update(self.engine_args)
        return args

    # ---- lifecycle

    def load(self) -> None:
        with self._lock:
            if self.llm is not None:
                if self.asleep:
                    self._wake()
                return
            try:
                from vllm import LLM
            except ImportError as exc:
                raise EngineError(f"vllm is not installed: {exc}") from exc
            args = self.llm_args()
            t0 = time.perf_counter()
            try:
                llm = LLM(**args)
            except Exception as exc:
                raise EngineError(f"vllm could not start {self.spec.model}: {type(exc).__name__}: {exc}") from exc
            self.llm = llm
            self.asleep = False
            self.max_model_len = int(llm.llm_engine.model_config.max_model_len)
            self.tokenizer = None if args.get("skip_tokenizer_init") else llm.get_tokenizer()
            self.load_s = time.perf_counter() - t0
            log.info("vllm engine %s started in %.1fs (gpu_memory_utilization=%s)", self.spec.key, self.load_s,
                     args.get("gpu_memory_utilization"))

    def sleep(self) -> None:
        with self._lock:
            if self.llm is None or self.asleep:
                return
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.llm is None:
            self.load()
            return
        with self._lock:
            self._wake()

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def unload(self) -> None:
        with self._lock:
            llm, self.llm, self.tokenizer, self.asleep = self.llm, None, None, False
            if llm is None:
                return
            for stop in (getattr(llm, "shutdown", None), getattr(getattr(llm.llm_engine, "engine_core", None), "shutdown", None)):
                if stop is not None:
                    try:
                        stop()
                        break
                    except Exception:  # best effort: the process is going away either way
                        log.debug("vllm shutdown failed", exc_info=True)
            del llm
            gc.collect()
            try:
                import torch

                if torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
            except ImportError:
                pass

    # ---- generation

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.tokenizer is None:
            raise EngineError("this engine was started without a tokenizer (skip_tokenizer_init); it cannot take chats")
        msgs = plain_messages(messages)
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            text = _plain_prompt(msgs)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def sampling_params(self, request: GenerationRequest, room: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1, max_tokens=max(1, min(request.max_tokens, room)), temperature=request.temperature, top_p=request.top_p,
            repetition_penalty=request.repetition_penalty, seed=request.seed, stop=[s for s in request.stop if s] or None,
        )

    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None) -> list[Completion]:
        if not requests:
            return []
        with self._lock:
            if self.llm is None or self.asleep:
                raise EngineError(f"vllm engine {self.spec.key} is not resident")
            prompts, params = [], []
            for i, req in enumerate(requests):
                ids = self.prompt_ids(req.messages)
                room = self.max_model_len - len(ids)
                if room < 1:
                    raise EngineError(f"request {i}: prompt of {len(ids)} tokens does not fit the {self.max_model_len}-token context")
                prompts.append({"prompt_token_ids": ids})
                params.append(self.sampling_params(req, room))
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = []
        for i, out in enumerate(outputs):
            o = out.outputs[0]
            completions.append(Completion(text=o.text, prompt_tokens=len(out.prompt_token_ids or prompts[i]["prompt_token_ids"]),
                                          completion_tokens=len(o.token_ids), finish_reason=o.finish_reason or "length"))
            if on_delta is not None and o.text:
                on_delta(i, o.text)
        return completions


ENGINE_CLASS = VllmEngine
