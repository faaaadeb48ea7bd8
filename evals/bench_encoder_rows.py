"""What embedding each text alone costs the int8 encoder, against batches of 64, side by side in one process.

The dynamically quantised model takes one activation scale per batch, so the service embeds each text alone
(coe/onnx_encoder.py; a batch's rows on one single-thread session per core). This measures the price: texts per second both ways, interleaved repetitions on the same
texts (MMLU test questions and the user requests), and how far the batched vectors are from the served ones.

    python -m coe_evals.bench_encoder_rows [--out evals/results/encoder-rows.json]
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import typer

REPS = 5


def _rate(encode, texts: list[str]) -> float:
    t0 = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - t0)


def measure(n_mmlu: int = 1024) -> dict:
    from coe.core.settings import get_settings
    from coe.data.labelled import USER_REQUESTS
    from coe.data.mmlu import by_split, load_mmlu
    from coe.embedder import make_embedder

    settings = get_settings()
    served = make_embedder(settings).onnx
    texts = {"mmlu test questions": [q.question for q in by_split(load_mmlu(settings.cache_dir), "test")[:n_mmlu]],
             "user requests": [json.loads(line)["text"] for line in USER_REQUESTS.read_text().splitlines() if line.strip()]}
    out = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runtime": served.__class__.__name__,
           "max_seq_length": served.max_seq_length, "cpus": os.cpu_count(), "load_before": os.getloadavg(), "sets": {}}
    for name, batch in texts.items():
        served.encode(batch[:64])  # warm-up
        alone, batched = [], []
        for _ in range(REPS):  # interleaved, so both ways see the same load
            served.rowwise = True
            alone.append(_rate(served.encode, batch))
            served.rowwise = False
            batched.append(_rate(served.encode, batch))
        vec_batched = served.encode(batch)
        served.rowwise = True
        vec_alone = served.encode(batch)
        cos = (vec_batched * vec_alone).sum(axis=1)
        out["sets"][name] = {"n": len(batch), "texts_per_s_alone": round(float(np.median(alone)), 1),
                             "texts_per_s_batched_64": round(float(np.median(batched)), 1),
                             "ratio_alone_to_batched": round(float(np.median(alone) / np.median(batched)), 3),
                             "cosine_batched_vs_alone_min": round(float(cos.min()), 4),
                             "cosine_batched_vs_alone_mean": round(float(cos.mean()), 5)}
    out["load_after"] = os.getloadavg()
    return out


def main(out: Path = typer.Option(Path("evals/results/encoder-rows.json"), help="where the record goes")) -> None:
    """Measure and write the record (and print it)."""
    record = measure()
    out.write_text(json.dumps(record, indent=1) + "\n")
    typer.echo(json.dumps(record, indent=1))


if __name__ == "__main__":
    typer.run(main)
