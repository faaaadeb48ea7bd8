"""`coe feedback export`: what users said about answers (POST /v1/feedback), as JSONL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from coe.cli_common import console

feedback_app = typer.Typer(help="Feedback users gave on answers (POST /v1/feedback).", no_args_is_help=True)


@feedback_app.command("export")
def export(
    out: Path = typer.Argument(..., help="JSONL file to write"),
    training: bool = typer.Option(False, "--training", help="only corrections that name a route, as rows coe train "
                                                           "--data reads (text, label, split)"),
) -> None:
    """Every feedback entry with the completion it is about (from Redis where COE_REDIS_URL is set, else the
    SQLite file under COE_ARTIFACTS_DIR)."""
    from coe.core.settings import get_settings
    from coe.feedback import export_rows, make_feedback_store

    async def collect() -> list:
        store = make_feedback_store(get_settings())
        try:
            return [pair async for pair in store.export()]
        finally:
            await store.close()

    rows = export_rows(asyncio.run(collect()), training)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    console.print(f"wrote {len(rows)} {'training rows' if training else 'feedback entries'} to {out}")
