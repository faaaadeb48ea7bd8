"""`coe train`: fit a router on a data set and write its versioned artifact.

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


def train_mmlu_two_stage(level: str = "subcategory", classifier: str = "logreg", out: Path | None = None,
                         tau_target: str | None = None, lexical: bool = True, settings=None, embedder=None,
                         quiet: bool = False) -> Path:
    """Train the two-stage router on MMLU's train split; the function `coe train` and first-run setup call."""
    from rich.console import Console

    from coe.core.registry import load_registry
    from coe.embedder import make_embedder
    from coe.core.settings import get_settings
    from coe.data.mmlu import CATEGORY_TO_SUBCATEGORIES, by_split, data_hash, load_mmlu
    from routers.base import RouterContext
    from routers.two_stage.router import make_expert_map
    from routers.two_stage.train import LabeledSet, train_two_stage

    if level not in LEVELS:
        raise typer.BadParameter(f"level must be one of {', '.join(LEVELS)}")
    console = Console(quiet=quiet)
    settings = settings or get_settings()
    out = Path(out or settings.artifacts_dir)
    console.print(f"loading MMLU (cache {settings.cache_dir})")
    questions = load_mmlu(settings.cache_dir)
    embedder = embedder or make_embedder(settings)
    vecs = embed_with_progress(embedder, [q.question for q in questions], settings.cache_dir)
    index = {id(q): i for i, q in enumerate(questions)}

    def labeled(split: str) -> LabeledSet:
        qs = by_split(questions, split)
        return LabeledSet([q.question for q in qs], vecs[[index[id(q)] for q in qs]], [q.label(level) for q in qs],
                          [q.subject for q in qs])

    registry = None
    try:
        registry = load_registry(settings.experts_file)
    except Exception as exc:  # the map is a record only; the router rebuilds it from the live registry
        console.print(f"[yellow]no expert map recorded: {exc}[/yellow]")
    parents = CATEGORY_TO_SUBCATEGORIES if level == "category" else None

    def expert_map(labels, weights):
        if registry is None:
            return None
        ctx = RouterContext(registry, embedder, out, cost_weight=settings.router_cost_weight,
                            budget_b=settings.router_budget_b)
        return make_expert_map(ctx, labels, parents, weights).to_json()

    with console.status("training") as status:
        path = train_two_stage(
            labeled("train"), labeled("validation"), test=labeled("test"), artifacts_dir=out,
            encoder={"ref": embedder.ref, "id": embedder.id, "runtime": embedder.runtime_id},
            level=level, classifier=classifier, lexical=lexical,
            tau_target=tau_target or settings.router_tau_target, parents=parents, expert_map=expert_map,
            data={"name": "mmlu", "hash": data_hash(questions), "text": "question", "n_train": len(by_split(questions, "train")),
                  "n_validation": len(by_split(questions, "validation")), "n_test": len(by_split(questions, "test"))},
            progress=lambda msg: status.update(f"training: {msg}"),
        )
    manifest = json.loads((path / "manifest.json").read_text())
    m = manifest["metrics"]
    console.print(f"wrote {path} in {manifest['train_seconds']} s  tau={manifest['tau']:.3f}")
    console.print(f"validation {m['validation']}\ntest       {m.get('test')}")
    return path


def artifact_exists(artifacts_dir: Path) -> bool:
    from routers.two_stage.artifact import ArtifactError, resolve_version

    try:
        resolve_version(artifacts_dir)
        return True
    except ArtifactError:
        return False


def train(
    router: str = typer.Option("two_stage", help="router to train (two_stage)"),
    data: str = typer.Option("mmlu", help="training data (mmlu: the 60% train split; tau on the 20% validation split)"),
    level: str = typer.Option("subcategory", help="label level: subcategory (17) or category (4)"),
    classifier: str = typer.Option("logreg", help="stage-1 classifier on embeddings: logreg or mlp"),
    lexical: bool = typer.Option(True, help="add the TF-IDF (word + char n-gram) model to the embedding model"),
    tau_target: str = typer.Option(None, help="accuracy:X, fallback:X or tau:X (default: settings.router_tau_target)"),
    out: Path = typer.Option(None, help="artifacts folder (default: settings.artifacts_dir)"),
    if_missing: bool = typer.Option(False, "--if-missing", help="do nothing if a trained artifact already exists"),
) -> None:
    """Fit the two-stage router and write a versioned artifact (classifier, labels, tau, map, encoder, data hash, metrics)."""
    from coe.core.settings import get_settings

    if router != "two_stage":
        raise typer.BadParameter("only the two_stage router is trained; baselines build from its artifact")
    if data != "mmlu":
        raise typer.BadParameter("only --data mmlu is available")
    settings = get_settings()
    if if_missing and artifact_exists(Path(out or settings.artifacts_dir)):
        typer.echo(f"two_stage artifact present under {out or settings.artifacts_dir}; nothing to do")
        return
    train_mmlu_two_stage(level, classifier, out, tau_target, lexical, settings)


app.command("train")(train)

if __name__ == "__main__":
    app()
