"""The `coe` command line: serve, route, experts, routes, and the training and benchmark commands."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import typer
from rich.table import Table

from coe.cli_common import ExpertsOpt, console, load_or_exit, parse_gpus, place_or_exit, prepare_weights, settings_for
from coe.cli_feedback import feedback_app
from coe.cli_plugins import mount_plugins
from coe.cli_profile import profile
from coe.cli_routes import routes_app
from coe.cli_train import train
from coe.cli_worker import worker

app = typer.Typer(help="coe: a Composition-of-Experts service behind one OpenAI-compatible endpoint.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
experts_app = typer.Typer(help="Inspect and validate experts.yaml.", no_args_is_help=True)
app.add_typer(experts_app, name="experts")
app.add_typer(routes_app, name="routes")
app.add_typer(feedback_app, name="feedback")
app.command("train")(train)
app.command("profile")(profile)
app.command("worker")(worker)
mount_plugins(app)


@experts_app.command("validate")
def experts_validate(experts_file: Path = ExpertsOpt) -> None:
    """Check experts.yaml; print every problem and exit non-zero if there is one."""
    settings = settings_for(experts_file)
    registry = load_or_exit(settings)
    console.print(f"[green]{settings.experts_file}: {len(registry.experts)} experts, valid[/]")


@experts_app.command("list")
def experts_list(experts_file: Path = ExpertsOpt) -> None:
    """Show the registered experts."""
    registry = load_or_exit(settings_for(experts_file))
    table = Table("name", "engine", "device", "params (B)", "max batch", "categories", "role")
    for e in registry.experts.values():
        role = ", ".join(r for r, on in (("fallback", e.fallback), ("aggregator", e.aggregator)) if on)
        table.add_row(e.name, e.engine, e.device, f"{e.params_b:g}", str(e.max_batch), ", ".join(e.categories), role)
    console.print(table)


@experts_app.command("plan")
def experts_plan(
    gpus: str = typer.Option(None, help="GB of each GPU, e.g. 80,80 (default: COE_GPU_MEMORY_GB, else the GPUs detected)"),
    traffic: Path = typer.Option(None, help="requests/s per expert, a JSON or YAML mapping (default: COE_TRAFFIC_FILE, else equal)"),
    experts_file: Path = ExpertsOpt,
) -> None:
    """Show where the GPU experts run (device: auto ones placed by memory and traffic) and why."""
    settings = settings_for(experts_file)
    registry = load_or_exit(settings)
    placement = place_or_exit(registry, settings, parse_gpus(gpus), traffic)
    table = Table("expert", "model", "memory GB", "req/s", "device", "tier", "why")
    for name, a in sorted(placement.experts.items(), key=lambda kv: (kv[1].device, kv[0])):
        e = registry.experts[name]
        table.add_row(name, e.model, f"{e.memory_gb:g}", f"{placement.traffic.get(name, 0.0):.3g}", a.device, a.tier, a.reason)
    console.print(table)
    gpus_table = Table("GPU", "total GB", "usable GB", "resident GB", "asleep GB", "req/s", "worker")
    for g in placement.gpus.values():
        gpus_table.add_row(g.device, f"{g.total_gb:.1f}", f"{g.usable_gb:.1f}", f"{g.resident_gb:g}", f"{g.asleep_gb:g}",
                           f"{g.traffic:.3g}", f"coe worker --device {g.device}")
    console.print(gpus_table)


@app.command()
def serve(
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8000)"),
    experts_file: Path = ExpertsOpt,
) -> None:
    """Run the OpenAI-compatible service (embedded queue and worker unless COE_REDIS_URL is set)."""
    from coe.api.app import create_app
    from coe.api.lifecycle import serve as serve_app

    settings = settings_for(experts_file)
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = settings.model_copy(update=updates)
    registry = load_or_exit(settings)
    prepare_weights(registry, registry.experts.values(), settings.cache_dir)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM: new requests get 503, requests in flight get COE_SHUTDOWN_GRACE_S to finish, then exit
    serve_app(create_app(settings), settings.host, settings.port, settings.log_level, settings.shutdown_grace_s)


@app.command()
def route(
    texts: list[str] = typer.Argument(None, help="one or more queries"),
    messages: Path = typer.Option(None, "--messages", help="a JSON file holding a chat's messages array (or - for "
                                                           "stdin): one decision for the chat, as a completion is routed"),
    k: int = typer.Option(1, help="experts per query"),
    router: str = typer.Option(None, help="router name (default: the service's)"),
    experts_file: Path = ExpertsOpt,
) -> None:
    """Route queries, or one chat, without generating: the same path as POST /v1/route."""
    import json

    from coe.api.schemas import ChatMessage, pipeline_messages
    from coe.conversation_routing import ConversationPolicy, human_turns
    from coe.service import Service

    if bool(texts) == (messages is not None):
        raise typer.BadParameter("give queries or --messages, not both and not neither")
    settings = settings_for(experts_file)
    load_or_exit(settings)
    raw = json.loads(sys.stdin.read() if str(messages) == "-" else messages.read_text()) if messages else None
    chat = pipeline_messages([ChatMessage.model_validate(m) for m in raw]) if raw is not None else None

    async def go():
        service = Service(settings)
        await service.start(embedded_worker=False)
        try:
            if chat is not None:
                decision, timings, _ = await service.pipeline.route_conversation(chat, k=k, router=router)
                return [decision], timings
            return await service.pipeline.route(texts, k=k, router=router)
        finally:
            await service.stop()

    decisions, timings = asyncio.run(go())
    texts = [human_turns(chat, ConversationPolicy.from_settings(settings))[-1]] if chat is not None else texts
    table = Table("query", "router", "category", "confidence", "fallback", "experts")
    for text, d in zip(texts, decisions):
        table.add_row(text[:60], d.router, str(d.category), f"{d.confidence:.2f}", "yes" if d.fallback else "no",
                      ", ".join(d.experts))
    console.print(table)
    console.print(f"embed {timings['embed'] * 1000:.1f} ms, route {timings['route'] * 1000:.1f} ms")


if __name__ == "__main__":
    app()
