"""Expert models for the GPU benchmarks, built on the device (no model hub is reachable there).

config.json of real architectures and sizes (Qwen2.5 0.5B/1.5B/3B, Llama-3.2 1B/3B, Llama-3.1-8B layer
shapes, from their published config.json) with RANDOM bf16 weights, and a small real tokenizer (SmolLM2's) whose vocabulary (49,152) replaces the
models' own, so the embedding matrices are smaller than the originals'. Speed depends on shapes, not on
values; answers are noise. `link_model` gives another expert the same files under its own folder (its
own engine, its own weights key), so N experts of one architecture cost one build.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Real layer shapes (from the models' published config.json); vocab replaced by the tokenizer's.
ARCHS = {
    "qwen2.5-0.5b": dict(arch="Qwen2ForCausalLM", model_type="qwen2", hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, tie=True, rope_theta=1e6),
    "llama-3.2-1b": dict(arch="LlamaForCausalLM", model_type="llama", hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, tie=True, rope_theta=5e5),
    "qwen2.5-1.5b": dict(arch="Qwen2ForCausalLM", model_type="qwen2", hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, tie=True, rope_theta=1e6),
    "llama-3.2-3b": dict(arch="LlamaForCausalLM", model_type="llama", hidden_size=3072, intermediate_size=8192,
                         num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, tie=True, rope_theta=5e5),
    "qwen2.5-3b": dict(arch="Qwen2ForCausalLM", model_type="qwen2", hidden_size=2048, intermediate_size=11008,
                       num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, tie=True, rope_theta=1e6),
    "llama-3.1-8b": dict(arch="LlamaForCausalLM", model_type="llama", hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, tie=False, rope_theta=5e5),
}
VOCAB = 49_152
"""SmolLM2's tokenizer, which every built model uses: its vocabulary sets the embedding matrices' size."""
OVERHEAD_GB = 3.0
"""An engine's memory beyond weights and KV cache: activations of the profiling pass, CUDA graphs, sampler.
An estimate (vLLM 0.24, max_num_batched_tokens 8192); the benchmark records the GPU memory really in use."""


def config_for(name: str, vocab: int, tok_cfg: dict) -> dict:
    a = ARCHS[name]
    cfg = {
        "architectures": [a["arch"]], "model_type": a["model_type"], "hidden_size": a["hidden_size"],
        "intermediate_size": a["intermediate_size"], "num_hidden_layers": a["num_hidden_layers"],
        "num_attention_heads": a["num_attention_heads"], "num_key_value_heads": a["num_key_value_heads"],
        "head_dim": a["hidden_size"] // a["num_attention_heads"], "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096, "rope_theta": a["rope_theta"], "tie_word_embeddings": a["tie"],
        "vocab_size": vocab, "torch_dtype": "bfloat16", "bos_token_id": tok_cfg.get("bos_token_id", 1),
        "eos_token_id": tok_cfg.get("eos_token_id", 2), "attention_bias": False,
    }
    if a["model_type"] == "qwen2":
        cfg["use_sliding_window"] = False
    return cfg


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for layer in range(n):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
        if cfg["model_type"] == "qwen2":  # Qwen2 has q/k/v biases
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,), p + "self_attn.v_proj.bias": (kv,)})
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    return shapes


def params(arch: str, vocab: int = VOCAB) -> int:
    """Parameters of `arch` with the tokenizer's vocabulary."""
    n = 0
    for shape in tensor_shapes(config_for(arch, vocab, {})).values():
        size = 1
        for d in shape:
            size *= d
        n += size
    return n


def kv_bytes_per_token(arch: str) -> int:
    """bf16 keys and values of one token over every layer."""
    a = ARCHS[arch]
    return 2 * a["num_hidden_layers"] * a["num_key_value_heads"] * (a["hidden_size"] // a["num_attention_heads"]) * 2


def memory_need_gb(arch: str, cached_tokens: int) -> float:
    """GPU memory an engine of `arch` needs: bf16 weights, KV cache for `cached_tokens`, `OVERHEAD_GB`; rounded up
    to half a GB. This is the `memory_gb` (hence vLLM's gpu_memory_utilization) each expert gets."""
    gb = (params(arch) * 2 + kv_bytes_per_token(arch) * cached_tokens) / 2**30 + OVERHEAD_GB
    return -(-gb // 0.5) * 0.5


def build_model(folder: Path, arch: str, tokenizer: Path, seed: int) -> dict:
    """config.json + random bf16 safetensors + the tokenizer files, in `folder`."""
    import torch
    from safetensors.torch import save_file

    tok_cfg = json.loads((tokenizer / "config.json").read_text()) if (tokenizer / "config.json").exists() else {}
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = config_for(arch, len(vocab), tok_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    for f in tokenizer.iterdir():
        if f.is_file() and f.name != "config.json" and not f.name.endswith(".safetensors"):
            shutil.copy(f, folder / f.name)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = torch.Generator(device="cuda").manual_seed(seed)
    tensors, count = {}, 0
    for name, shape in tensor_shapes(cfg).items():
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.bfloat16, device="cuda")
        else:
            t = (torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32) * 0.02).to(torch.bfloat16)
        tensors[name] = t.cpu()
        count += t.numel()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    torch.cuda.empty_cache()  # what the build cached on the GPU belongs to the engines that start next
    return {"arch": arch, "params": count, "bytes": count * 2}


def link_model(source: Path, folder: Path) -> Path:
    """`folder` holding symbolic links to the files of `source`."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    return folder
