"""`coe feedback export`: what users said about answers (POST /v1/feedback), as JSONL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from coe.cli_common import console, err_console, load_routes_or_exit

feedback_app = typer.Typer(help="Feedback users gave on answers (POST /v1/feedback).", no_args_is_help=True)


@feedback_app.command("export")
def export(
    out: Path = typer.Argument(..., help="JSONL file to write"),
    training: bool = typer.Option(False, "--training", help="only corrections, as rows coe train --data reads (text, "
                                                           "label, split): the route named, or the one route of the "
                                                           "expert named; labels that are not routes now are left out"),
) -> None:
    """Every feedback entry with the completion it is about (from Redis where COE_REDIS_URL is set, else the
    SQLite file under COE_ARTIFACTS_DIR). With --training and no correction to export, nothing is written (exit 1):
    coe train refuses an empty file."""
    from coe.core.settings import get_settings
    from coe.feedback import export_rows, make_feedback_store, training_rows

    settings = get_settings()

    async def collect() -> list:
        store = make_feedback_store(settings)
        try:
            return [pair async for pair in store.export()]
        finally:
            await store.close()

    pairs = asyncio.run(collect())
    if training:
        routes = load_routes_or_exit(settings)
        rows, notes = training_rows(pairs, routes.names if routes else None, _expert_routes(settings, routes))
        for note in notes:
            console.print(f"[yellow]{note}[/yellow]", highlight=False)
        if not rows:
            err_console.print("no corrections to export: nothing written")
            raise typer.Exit(1)
    else:
        rows = export_rows(pairs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    console.print(f"wrote {len(rows)} {'training rows' if training else 'feedback entries'} to {out}")


def _expert_routes(settings, routes) -> dict[str, list[str]]:
    """Each expert's declared categories from the experts file (none where it cannot be read: corrections that name
    only an expert are then left out, and say why)."""
    from coe.core.registry import RegistryError, parse_registry

    try:
        registry = parse_registry(settings.experts_file.read_text(), settings.experts_file, routes, host=False)
    except (OSError, RegistryError) as exc:
        console.print(f"[yellow]{settings.experts_file}: {exc}; corrections naming only an expert are left out[/yellow]")
        return {}
    return {e.name: list(e.categories) for e in registry.experts.values()}
