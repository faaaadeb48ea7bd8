"""A sentence-transformers encoder (Transformer + mean pooling + L2 norm) run by ONNX Runtime.

The model is exported once from the local weights with torch.onnx and, for `onnx-int8`,
fused (ONNX Runtime's BERT optimizer: one Attention, SkipLayerNorm and BiasGelu op per layer)
and dynamically quantised to int8 (weights int8, activations quantised on the fly). The
fused graph gives the same vectors (mean cosine to fp32 0.9933, as unfused int8) and roughly
halves single-query latency. The files are cached under <cache>/onnx/<encoder id>/.

Dynamic quantisation takes one activation scale per tensor, that is per batch: a text embedded beside
others got another vector than alone (cosine down to 0.94 on the user requests; 14 of their 414 routes
changed). The int8 model therefore runs each text alone, so a served query, a micro-batch of concurrent
queries and the benchmark's batches give one vector per text (evals/bench_encoder_rows.py: the cost).
Tokenisation uses the model's own fast tokenizer. No optimum dependency; no hub access.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RUNTIMES = ("onnx", "onnx-int8")


def _export(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel

    # eager attention exports the plain MatMul/Softmax pattern that the optimizer fuses into one Attention op
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    model.eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones((2, 16), dtype=torch.long)
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            Wrapper(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(tmp),
            input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
            opset_version=17, dynamo=False,
        )
    tmp.replace(out)


def _fuse_and_quantize(src: Path, model_dir: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((model_dir / "config.json").read_text())
    fused = out.with_suffix(".fused.tmp.onnx")
    optimize_model(str(src), model_type="bert", num_heads=int(config["num_attention_heads"]),
                   hidden_size=int(config["hidden_size"]), opt_level=1).save_model_to_file(str(fused))
    tmp = out.with_suffix(".tmp.onnx")
    quantize_dynamic(str(fused), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops carry no type info
    fused.unlink()
    tmp.replace(out)


def onnx_model_file(model_dir: Path, cache_dir: Path, encoder_id: str, runtime: str) -> Path:
    """The exported (and, for onnx-int8, quantised) model file, made on first use."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown encoder runtime '{runtime}'; known: torch, {', '.join(RUNTIMES)}")
    folder = Path(cache_dir).expanduser() / "onnx" / encoder_id.replace("/", "_").replace("@", "_")
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model_eager.onnx"
    if not fp32.exists():
        _export(model_dir, fp32)
    if runtime == "onnx":
        return fp32
    int8 = folder / "model_fused_int8.onnx"
    if not int8.exists():
        _fuse_and_quantize(fp32, model_dir, int8)
    return int8


class OnnxEncoder:
    def __init__(self, model_file: Path, model_dir: Path, max_seq_length: int, threads: int | None = None,
                 rowwise: bool = False):
        from tokenizers import Tokenizer

        self.model_file = model_file
        self.threads = threads or os.cpu_count() or 1
        self.session = self._session(self.threads)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.tokenizer.no_padding()
        self.max_seq_length = max_seq_length
        self.rowwise = rowwise  # one text per run: a dynamically quantised model's vectors depend on the batch
        self._lanes: list | None = None  # single-thread sessions that embed a batch's rows side by side
        self._pool: ThreadPoolExecutor | None = None

    def _session(self, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle ORT threads would spin for a while after each call, taking the cores the router needs next.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self.model_file), opts, providers=["CPUExecutionProvider"])

    def _rows(self, encs) -> np.ndarray:
        """Each text alone; a batch's rows split over one single-thread session per core (ONNX Runtime releases
        the GIL), which wins back most of what batching gave: one text on two threads is mostly hand-offs."""
        if len(encs) == 1 or self.threads == 1:
            return np.vstack([self._run([e]) for e in encs])
        if self._lanes is None:
            self._lanes = [self._session(1) for _ in range(self.threads)]
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="coe-encoder")
        shares = [idx for idx in np.array_split(np.arange(len(encs)), len(self._lanes)) if len(idx)]
        done = self._pool.map(lambda lane, idx: np.vstack([self._run([encs[i]], lane) for i in idx]), self._lanes, shares)
        return np.vstack(list(done))

    def _run(self, encs, session=None) -> np.ndarray:
        n, width = len(encs), max(len(e.ids) for e in encs)
        ids = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        hidden = (session or self.session).run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        # one text (a served query): the same ids without encode_batch's hand-off to its thread pool (half the time)
        encs = [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.tokenizer.encode_batch(texts)
        if self.rowwise:
            return self._rows(encs)
        # length-sorted batches pad less; results are put back in input order
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        chunks = []
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            chunks.append((idx, self._run([encs[i] for i in idx])))
        out = np.zeros((len(texts), chunks[0][1].shape[1]), dtype=np.float32)
        for idx, vecs in chunks:
            out[idx] = vecs
        return out
