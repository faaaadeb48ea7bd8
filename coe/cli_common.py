"""What every `coe` sub-command shares: settings with a per-command experts file, the registry or a clean exit."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from coe.core.registry import Registry, RegistryError, load_registry
from coe.core.routes import Routes, RoutesError, load_routes_if_present
from coe.core.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)

ExpertsOpt = typer.Option(None, "--experts", "-e", help="experts file (default: $COE_EXPERTS_FILE or experts.yaml)")


def settings_for(experts_file: Path | None) -> Settings:
    settings = get_settings()
    return settings.model_copy(update={"experts_file": experts_file}) if experts_file else settings


def _exit_with(path: Path, problems: list[str]) -> None:
    err_console.print(f"[bold red]{path} is invalid:[/]")
    for problem in problems:
        err_console.print(f"  - {problem}", markup=False, highlight=False)
    raise typer.Exit(1)


def load_routes_or_exit(settings: Settings) -> Routes | None:
    """The routes (None without a routes file), or every problem printed and exit code 1."""
    try:
        return load_routes_if_present(settings.routes_path)
    except RoutesError as exc:
        _exit_with(settings.routes_path, exc.problems)


def load_or_exit(settings: Settings) -> Registry:
    """The registry checked against the routes, or every problem printed and exit code 1."""
    routes = load_routes_or_exit(settings)
    try:
        return load_registry(settings.experts_file, routes)
    except RegistryError as exc:
        _exit_with(settings.experts_file, exc.problems)


def prepare_weights(registry: Registry, experts, cache_dir: Path) -> None:
    """Convert the local GGUF weights of `experts` once (with progress), so the service or worker starts fast."""
    from coe.core.weights import prepare_local_weights

    for ref in sorted({str(registry.model_path(e)) for e in experts if e.engine == "local"}):
        try:
            prepare_local_weights(ref, cache_dir)
        except Exception as exc:  # the worker reports it per request; other experts still serve
            err_console.print(f"[yellow]warning: cannot prepare weights {ref}: {exc}[/]")
