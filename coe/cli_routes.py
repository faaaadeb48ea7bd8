"""`coe routes validate | list`: check and show routes.yaml (the routes the router emits)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from coe.cli_common import ExpertsOpt, console, err_console, load_or_exit, load_routes_or_exit, settings_for

routes_app = typer.Typer(help="Inspect and validate routes.yaml.", no_args_is_help=True)
RoutesOpt = typer.Option(None, "--routes", "-r", help="routes file (default: $COE_ROUTES_FILE or routes.yaml beside the experts file)")


def _settings(experts_file: Path | None, routes_file: Path | None):
    settings = settings_for(experts_file)
    return settings.model_copy(update={"routes_file": routes_file}) if routes_file else settings


def _served_by(registry) -> dict[str, list[str]]:
    served: dict[str, list[str]] = {}
    for e in registry.experts.values():
        for c in e.categories:
            served.setdefault(c.strip().lower(), []).append(e.name)
    return served


def _routes_or_exit(settings):
    """The routes file, which these commands need (the service runs without one): exit 1 when it is missing."""
    routes = load_routes_or_exit(settings)
    if routes is None:
        err_console.print(f"[bold red]{settings.routes_path}: no such file[/]")
        raise typer.Exit(1)
    return routes


@routes_app.command("validate")
def routes_validate(routes_file: Path = RoutesOpt, experts_file: Path = ExpertsOpt) -> None:
    """Check routes.yaml and that every expert category names a route; exit non-zero on a problem."""
    settings = _settings(experts_file, routes_file)
    routes = _routes_or_exit(settings)
    registry = load_or_exit(settings)
    served = _served_by(registry)
    unserved = [n for n in routes.names if n not in served]
    console.print(f"[green]{routes.path}: {len(routes.names)} routes ({len(routes.of_kind('task'))} task, "
                  f"{len(routes.of_kind('subject'))} subject), {len(routes.examples())} examples, valid[/]")
    if unserved:
        fallback = registry.fallback.name if registry.fallback else "the first expert"
        console.print(f"[yellow]no expert declares {', '.join(unserved)}: those go to {fallback}[/]")


@routes_app.command("list")
def routes_list(routes_file: Path = RoutesOpt, experts_file: Path = ExpertsOpt) -> None:
    """Show the routes, their examples and the experts that declare them."""
    settings = _settings(experts_file, routes_file)
    routes = _routes_or_exit(settings)
    served = _served_by(load_or_exit(settings))
    table = Table("route", "kind", "examples", "experts", "description")
    for r in routes.spec.routes:
        table.add_row(r.name, r.kind, str(len(r.examples)), ", ".join(served.get(r.name, [])), r.description[:70])
    console.print(table)
