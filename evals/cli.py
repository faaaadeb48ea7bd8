"""`coe bench ...` commands (mounted into coe/cli.py as `app.add_typer(bench_app, name="bench")`)."""

from __future__ import annotations

from pathlib import Path

import typer

bench_app = typer.Typer(help="Benchmarks (results as JSON + Markdown + PNG).", no_args_is_help=True)


@bench_app.command("routing")
def routing(
    sample: int = typer.Option(None, help="a smoke run: this many validation/test questions per subcategory (3x for train)"),
    out: Path = typer.Option(Path("evals/results"), help="where routing.json/.md/.png go"),
    peer: bool = typer.Option(True, help="measure the peer semantic-router side by side (needs the 'bench' extra)"),
    runtime: str = typer.Option(None, help="encoder runtime of the fast routers (default: the service's, COE_ENCODER_RUNTIME)"),
    max_seq_length: int = typer.Option(None, help="query truncation in tokens (default: the service's, COE_ENCODER_MAX_SEQ_LENGTH)"),
    knn_k: int = typer.Option(10, help="k of the kNN baseline"),
    data: list[str] = typer.Option(None, help="train the service's router on these sources, as coe train --data does "
                                              "(default: mmlu + user-requests); each file's test rows are reported"),
    new_route: bool = typer.Option(True, help="also measure a route declared with 10 examples (one more training)"),
    accuracy_only: bool = typer.Option(False, help="quick accuracy run: no peer, no latency/throughput, only the "
                                                   "service's two_stage variant (unless --variant)"),
    variant: list[str] = typer.Option(None, help="train only these two_stage variants (repeatable), e.g. two_stage, "
                                                 "'two_stage[mmlu-only]', 'two_stage[fp32]'; default: all"),
) -> None:
    """Accuracy, macro-F1, fallback, latency and throughput of every router on MMLU, the service's router on
    held-out user requests per route, and the peer, in one run."""
    from coe_evals.bench_routing import bench_routing

    res = bench_routing(sample=sample, out_dir=out, include_peer=peer, fast_runtime=runtime,
                        fast_max_seq_length=max_seq_length, knn_k=knn_k, data=data or None, new_route=new_route,
                        timing=not accuracy_only, variants=variant or None, log=typer.echo)
    typer.echo(f"wrote {out}/routing.json, routing.md, routing.png in {res['seconds']} s")


from coe_evals.bench_recruit import recruit  # noqa: E402

bench_app.command("recruit")(recruit)

from coe_evals.bench_serving import serving  # noqa: E402

bench_app.command("serving")(serving)

from coe_evals.bench_load import load  # noqa: E402

bench_app.command("load")(load)

from coe_evals.bench_chaos import chaos  # noqa: E402

bench_app.command("chaos")(chaos)

from coe_evals.bench_fuzz import fuzz  # noqa: E402

bench_app.command("fuzz")(fuzz)

from coe_evals.bench_quality import quality  # noqa: E402

bench_app.command("quality")(quality)

from coe_evals.bench_answers import answers  # noqa: E402

bench_app.command("answers")(answers)

from coe_evals.bench_cache import cache  # noqa: E402

bench_app.command("cache")(cache)

from coe_evals.bench_bandit import bandit  # noqa: E402

bench_app.command("bandit")(bandit)



@bench_app.command("engine")
def engine(
    experts: Path = typer.Option(Path("experts.yaml"), help="the experts whose weights are measured"),
    out: Path = typer.Option(Path("evals/results"), help="where engine.json and engine.md go"),
    max_tokens: int = typer.Option(64, help="tokens generated per request (greedy)"),
    prompts: int = typer.Option(3, help="prompts run one at a time for the batch-1 figures"),
    engines: str = typer.Option("llamacpp,local", help="engines to compare, comma-separated; llamacpp+confidence: "
                                                      "llama.cpp with each request asking for its confidence"),
    threads: int = typer.Option(None, help="CPU threads of both engines (default: every core)"),
) -> None:
    """llama.cpp (cyllama) vs transformers on each expert's weights: batch 1 and 8 concurrent streams, tokens/s and
    time to first token, with the llama-cpp-python source build as the ceiling where one is installed."""
    from coe_evals.bench_engine import bench_engine

    bench_engine(experts, out, max_tokens=max_tokens, prompts=prompts, engines=tuple(filter(None, engines.split(","))),
                 threads=threads, log=typer.echo)
    typer.echo(f"wrote {out}/engine.json and engine.md")


if __name__ == "__main__":
    bench_app()
