"""`coe train`: fit the router for the declared routes on MMLU, the routes' examples and the user's data,
and write its versioned artifact.

Mounted into coe/cli.py as `app.command("train")(train)`. Embeddings of the data set are
cached on disk (keyed by encoder, runtime and texts), so a second run only refits.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Train routers.", no_args_is_help=True)

LEVELS = ("subcategory", "category")


def embed_with_progress(embedder, texts: list[str], cache_dir: Path, label: str = "embedding questions"):
    """cached_embeddings, with a progress bar when the cache is cold."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from coe.data.embedding_cache import cached_embeddings

    class Chunked:
        """Forwards to the embedder in chunks so the bar moves."""

        def __init__(self, inner, bar, task):
            self.inner, self.bar, self.task = inner, bar, task
            self.id, self.runtime_id = inner.id, inner.runtime_id

        def encode(self, items, show_progress=False):
            out = []
            for s in range(0, len(items), 512):
                out.append(self.inner.encode(items[s : s + 512]))
                self.bar.advance(self.task, len(out[-1]))
            return np.concatenate(out)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=False) as bar:
        task = bar.add_task(label, total=len(texts))
        vecs = cached_embeddings(Chunked(embedder, bar, task), texts, cache_dir)
        bar.update(task, completed=len(texts))
    return vecs


def train_router(sources: list[str] | None = None, level: str = "subcategory", classifier: str = "logreg",
                 out: Path | None = None, tau_target: str | None = None, lexical: bool = True, settings=None,
                 embedder=None, quiet: bool = False, moves_warn: float | None = None) -> Path:
    """Train the two-stage router on `sources` (mmlu, user-requests, JSONL/CSV paths) and the routes' examples;
    the function `coe train` and first-run setup call. Nothing is written unless training succeeds. The validation
    items the new router sends elsewhere than the previous artifact did are reported (coe/route_moves.py)."""
    from rich.console import Console

    from coe.core.registry import load_registry
    from coe.core.routes import load_routes_if_present
    from coe.core.settings import get_settings
    from coe.embedder import make_embedder
    from coe.route_moves import WARN_SHARE
    from coe.train_data import DEFAULT_SOURCES, gather, labeled_sets
    from routers.base import RouterContext
    from routers.two_stage.router import make_expert_map
    from routers.two_stage.train import train_two_stage

    if level not in LEVELS:
        raise typer.BadParameter(f"level must be one of {', '.join(LEVELS)}")
    console = Console(quiet=quiet)
    settings = settings or get_settings()
    out = Path(out or settings.artifacts_dir)
    routes = load_routes_if_present(settings.routes_path)
    data = gather(list(sources or DEFAULT_SOURCES), routes, settings.cache_dir, level)
    for note in data.notes:
        console.print(f"[yellow]{note}[/yellow]")
    console.print(f"training on {data.record['name']}" + (f" for the {len(routes.names)} routes of {routes.path}" if routes else ""))
    embedder = embedder or make_embedder(settings)
    train, validation, tests = labeled_sets(data, lambda texts: embed_with_progress(embedder, texts, settings.cache_dir))

    registry = None
    try:
        registry = load_registry(settings.experts_file, routes)
    except Exception as exc:  # the map is a record only; the router rebuilds it from the live registry
        console.print(f"[yellow]no expert map recorded: {exc}[/yellow]")

    def expert_map(labels, weights):
        if registry is None:
            return None
        ctx = RouterContext(registry, embedder, out, cost_weight=settings.router_cost_weight,
                            budget_b=settings.router_budget_b)
        return make_expert_map(ctx, labels, data.parents, weights).to_json()

    review, moves = _moves_review(out)
    record = {**data.record, "n_train": len(train.texts), "n_validation": len(validation.texts),
              **{f"n_test_{name}": len(t.texts) for name, t in tests.items()}}
    with console.status("training") as status:
        path = train_two_stage(
            train, validation, tests=tests, artifacts_dir=out,
            encoder={"ref": embedder.ref, "id": embedder.id, "runtime": embedder.runtime_id},
            level=level, classifier=classifier, lexical=lexical,
            tau_target=tau_target or settings.router_tau_target, parents=data.parents, expert_map=expert_map,
            data=record, routes={"fingerprint": routes.fingerprint(), "names": routes.names, "file": str(routes.path)} if routes else None,
            progress=lambda msg: status.update(f"training: {msg}"), review=review,
        )
    manifest = json.loads((path / "manifest.json").read_text())
    console.print(f"wrote {path} in {manifest['train_seconds']} s  tau={manifest['tau']:.3f}")
    for name, m in manifest["metrics"].items():
        console.print(f"{name:16s} {m}")
    _print_moves(console, manifest["review"], moves, WARN_SHARE if moves_warn is None else moves_warn)
    return path


def _moves_review(out: Path):
    """(review hook for train_two_stage, the list it fills with RouteMoves): the previous artifact's decisions are
    read now, before the new artifact becomes the latest."""
    from coe.route_moves import compare, matched, previous_decisions

    previous, name = previous_decisions(out)
    moves: list = []

    def review(texts: list[str], routes: list[str], labels: list[str]) -> dict:
        if previous is None:
            return {"moves": None, "note": name}
        before, after, truth = matched(previous, texts, routes, labels)
        moves.extend(compare(before, after, truth))
        return {"moves": {m.route: m.as_json() for m in moves}, "compared_with": name, "n_items": len(before)}

    return review, moves


def _print_moves(console, review: dict, moves: list, warn_share: float) -> None:
    from rich.table import Table

    from coe.route_moves import warnings

    if review["moves"] is None:
        console.print(f"route moves: {review['note']}")
        return
    moved = [m for m in moves if m.moved]
    console.print(f"route moves against {review['compared_with']}: {sum(m.moved for m in moves)} of "
                  f"{review['n_items']} validation items now take another route")
    if moved:
        table = Table("previous route", "items", "moved", "share", "now to", "right before", "right now")
        for m in moved:
            table.add_row(m.route, str(m.held), str(m.moved), f"{m.share:.1%}",
                          ", ".join(f"{to} {n}" for to, n in m.moved_to.items()), str(m.right_before), str(m.right_after))
        console.print(table)
    for line in warnings(moves, warn_share):
        console.print(f"[yellow]warning: {line}[/yellow]", highlight=False)


def why_retrain(artifacts_dir: Path, routes) -> str | None:
    """Why the served artifact cannot serve as it is (none, an older format, other routes), or None if it can."""
    from routers.two_stage.artifact import ArtifactError, read_manifest, resolve_version

    try:
        path = resolve_version(artifacts_dir)
        manifest = read_manifest(path)
    except ArtifactError as exc:
        return str(exc)
    trained = (manifest.get("routes") or {}).get("fingerprint")
    if routes is not None and trained != routes.fingerprint():
        return f"{path} was trained for other routes than those of {routes.path}"
    return None

def train(
    router: str = typer.Option("two_stage", help="router to train (two_stage)"),
    data: list[str] = typer.Option(None, help="training data, repeatable: mmlu (MMLU's train split; validation for tau), "
                                              "user-requests (the shipped user requests' tune split), or a .jsonl/.csv "
                                              "file of text,label[,split]. Default: mmlu + user-requests. The routes' "
                                              "examples are always used."),
    level: str = typer.Option("subcategory", help="label level: subcategory (the routes) or category (MMLU's 4; no routes file)"),
    classifier: str = typer.Option("logreg", help="stage-1 classifier on embeddings: logreg or mlp"),
    lexical: bool = typer.Option(True, help="add the TF-IDF (word + char n-gram) model to the embedding model"),
    tau_target: str = typer.Option(None, help="accuracy:X, fallback:X or tau:X (default: settings.router_tau_target)"),
    out: Path = typer.Option(None, help="artifacts folder (default: settings.artifacts_dir)"),
    moves_warn: float = typer.Option(None, help="warn when a route loses more than this share of its validation items "
                                                "to other routes against the previous artifact (default 0.05)"),
    if_stale: bool = typer.Option(False, "--if-stale", help="train only if no artifact can serve: none yet, an older "
                                                            "format, or trained for other routes (make serve uses it)"),
) -> None:
    """Fit the two-stage router for the routes of routes.yaml and write a versioned artifact (classifier, labels,
    tau, map, encoder runtime, routes, data hashes, metrics)."""
    from coe.cli_common import err_console, load_routes_or_exit
    from coe.core.settings import get_settings
    from coe.data.labelled import DataFileError
    from coe.train_data import TrainingDataError

    if router != "two_stage":
        raise typer.BadParameter("only the two_stage router is trained; baselines build from its artifact")
    settings = get_settings()
    routes = load_routes_or_exit(settings)
    if if_stale:
        why = why_retrain(Path(out or settings.artifacts_dir), routes)
        if why is None:
            typer.echo(f"the two_stage artifact under {out or settings.artifacts_dir} serves these routes; nothing to do")
            return
        typer.echo(f"training the two_stage router: {why}")
    try:
        train_router(data or None, level, classifier, out, tau_target, lexical, settings, moves_warn=moves_warn)
    except (DataFileError, TrainingDataError) as exc:
        err_console.print("[bold red]cannot train:[/]")
        where = f"{exc.path}: " if isinstance(exc, DataFileError) else ""
        for problem in exc.problems:
            err_console.print(f"  - {where}{problem}", markup=False, highlight=False)
        raise typer.Exit(1) from None


app.command("train")(train)

if __name__ == "__main__":
    app()
