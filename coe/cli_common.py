"""What every `coe` sub-command shares: settings with a per-command experts file, the registry or a clean exit."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from coe.core.placement import Placement, PlacementError, detect_gpus_gb, load_traffic
from coe.core.registry import CPU_ENGINES, Registry, RegistryError, load_registry
from coe.core.routes import Routes, RoutesError, load_routes_if_present
from coe.core.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)

ExpertsOpt = typer.Option(None, "--experts", "-e", help="experts file (default: $COE_EXPERTS_FILE or experts.yaml)")


def settings_for(experts_file: Path | None) -> Settings:
    settings = get_settings()
    return settings.model_copy(update={"experts_file": experts_file}) if experts_file else settings


def exit_with(path: Path, problems: list[str]) -> None:
    err_console.print(f"[bold red]{path} is invalid:[/]")
    for problem in problems:
        err_console.print(f"  - {problem}", markup=False, highlight=False)
    raise typer.Exit(1)


def load_routes_or_exit(settings: Settings) -> Routes | None:
    """The routes (None without a routes file), or every problem printed and exit code 1."""
    try:
        return load_routes_if_present(settings.routes_path)
    except RoutesError as exc:
        exit_with(settings.routes_path, exc.problems)


def load_or_exit(settings: Settings) -> Registry:
    """The registry checked against the routes, or every problem printed and exit code 1."""
    routes = load_routes_or_exit(settings)
    try:
        return load_registry(settings.experts_file, routes)
    except RegistryError as exc:
        exit_with(settings.experts_file, exc.problems)


def parse_gpus(text: str | None) -> list[float] | None:
    """'80,80' -> [80.0, 80.0]; None stays None."""
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        err_console.print(f"[bold red]--gpus must be GB per GPU separated by commas (e.g. 80,80), not '{text}'[/]")
        raise typer.Exit(2) from None


def place(registry: Registry, settings: Settings, gpus_gb: list[float] | None = None,
          traffic_file: Path | None = None) -> Placement:
    """Place the `device: auto` experts on the GPUs given, else COE_GPU_MEMORY_GB, else those detected
    (PlacementError when they do not fit)."""
    gpus = gpus_gb or settings.gpu_memory_gb or detect_gpus_gb()
    path = traffic_file or settings.traffic_file
    return registry.place(gpus, load_traffic(path) if path else None, settings.placement_headroom)


def place_or_exit(registry: Registry, settings: Settings, gpus_gb: list[float] | None = None,
                  traffic_file: Path | None = None) -> Placement:
    """`place`, or the reason printed and exit code 1."""
    try:
        return place(registry, settings, gpus_gb, traffic_file)
    except PlacementError as exc:
        err_console.print(f"[bold red]cannot place the experts: {exc}[/]")
        raise typer.Exit(1) from None


def prepare_weights(registry: Registry, experts, cache_dir: Path) -> None:
    """Assemble split models and convert the local engine's GGUF weights once (with progress), so the
    service or worker starts fast."""
    from coe.core.weights import prepare_local_weights

    seen = set()
    for e in experts:
        if e.engine not in CPU_ENGINES or (e.engine, e.model) in seen:
            continue
        seen.add((e.engine, e.model))
        try:
            path = registry.model_path(e, cache_dir)  # assembles a split model once
            if e.engine == "local":
                prepare_local_weights(path, cache_dir)
        except Exception as exc:  # the worker reports it per request; other experts still serve
            err_console.print(f"[yellow]warning: cannot prepare weights {e.model}: {exc}[/]")
