"""`coe worker`: one worker process for one device, draining that device's experts' queues in Redis.

Run one per GPU (and one for `cpu` or `remote` experts if there are any) next to a `coe serve` that has the
same COE_REDIS_URL. Several workers may serve the same device's experts: each process is its own consumer.
SIGTERM or SIGINT: stop claiming, finish the running batch, exit; queued jobs stay in Redis for the next worker.

The registry is the copy in Redis every process shares (seeded from the experts file by the first process to
start, see coe/registry_store.py). The worker follows it: a new version is handed to `Worker.refresh` and
served from the next batch on (a removed expert's queued jobs are answered first, then its engine goes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from pathlib import Path

import typer

from coe.cli_common import err_console, exit_with, load_routes_or_exit, place, place_or_exit, prepare_weights, settings_for

log = logging.getLogger("coe.worker")

DEVICE_PATTERN = r"cpu|gpu:\d+|remote"


def worker(
    device: str = typer.Option(..., "--device", "-d", help="the device whose experts to serve: cpu, gpu:N or remote"),
    policy: str = typer.Option("grouped", help="grouped (batch per expert group) or fcfs (one oldest job at a time)"),
    memory_gb: float = typer.Option(None, "--memory-gb", help="memory budget for resident models (default: all fit)"),
    reclaim_idle_s: float = typer.Option(60.0, help="take over jobs another worker has held this long without progress"),
    max_deliveries: int = typer.Option(3, min=1, help="a job this many workers took and none finished (a poison job) "
                                       "is set aside in the dead-letter stream and its caller answered with an error"),
    name: str = typer.Option(None, help="consumer name (default: <host>-<pid>; must be unique per process)"),
    experts_file: Path = typer.Option(None, "--experts", "-e", help="experts file (default: $COE_EXPERTS_FILE or experts.yaml)"),
) -> None:
    """Serve one device's experts from the Redis queue (needs COE_REDIS_URL)."""

    if not re.fullmatch(DEVICE_PATTERN, device):
        err_console.print(f"[bold red]--device must be cpu, gpu:N or remote, not '{device}'[/]")
        raise typer.Exit(2)
    if policy not in ("grouped", "fcfs"):
        err_console.print(f"[bold red]--policy must be grouped or fcfs, not '{policy}'[/]")
        raise typer.Exit(2)
    settings = settings_for(experts_file)
    if not settings.redis_url:
        err_console.print("[bold red]coe worker needs COE_REDIS_URL (e.g. redis://127.0.0.1:6379/0); "
                          "without Redis, `coe serve` runs its own embedded worker[/]")
        raise typer.Exit(2)
    routes = load_routes_or_exit(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if device.startswith("gpu:") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]  # before CUDA starts: this process sees its GPU only
    asyncio.run(_run(settings, routes, device, policy, memory_gb, reclaim_idle_s, max_deliveries, name))


async def _open_registry(store, settings, routes, device: str, memory_gb: float | None):
    """The shared registry (or exit 1 with its problems), placed; the worker's memory budget; exit 2 if the
    device has no experts."""
    from coe.core.registry import RegistryError

    try:
        registry = await store.open(routes)
    except RegistryError as exc:
        exit_with(exc.path, exc.problems)
    if device.startswith("gpu:") and registry.auto_placed:
        placement = place_or_exit(registry, settings)  # every worker computes the same plan from the same inputs
        if memory_gb is None and device in placement.gpus:
            memory_gb = placement.gpus[device].usable_gb  # what the plan filled; asleep experts are woken within it
    experts = registry.on_device(device)
    if not experts:
        err_console.print(f"[bold red]no experts are placed on device '{device}' in {settings.experts_file} "
                          f"(registry version {store.held.version})[/]")
        raise typer.Exit(2)
    prepare_weights(registry, experts, settings.cache_dir)
    return registry, memory_gb


async def _run(settings, routes, device, policy, memory_gb, reclaim_idle_s, max_deliveries, name) -> None:
    from coe.registry_store import FeedStore
    from coe.service import engine_options
    from workers.queue_redis import RedisQueue
    from workers.registry_feed import RegistryFeed
    from workers.worker import Worker

    store = FeedStore(RegistryFeed(settings.redis_url), settings.experts_file)
    registry, memory_gb = await _open_registry(store, settings, routes, device, memory_gb)
    # the heartbeat must beat well inside the reclaim timeout, or live workers' jobs would be taken over
    queue = RedisQueue(settings.redis_url, max_depth=settings.max_queue_depth, heartbeat_s=min(5.0, reclaim_idle_s / 3),
                       max_deliveries=max_deliveries)
    extra = {"name": name} if name else {}
    w = Worker(registry, queue, device=device, policy=policy, memory_budget_gb=memory_gb,
               reclaim_idle_s=reclaim_idle_s, engine_options=engine_options(settings), **extra)

    async def take_up() -> None:
        snapshot = await store.current()
        new = await asyncio.to_thread(store.parse, snapshot)  # what this host lacks is logged, the rest served
        if device.startswith("gpu:") and new.auto_placed:
            place(new, settings)
        w.refresh(new)
        log.info("registry version %d taken up (was %d): serving %s", snapshot.version, store.held.version,
                 ", ".join(e.name for e in new.on_device(device)) or "nothing on this device")
        store.held = snapshot

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %s serving %s on %s (%s policy, registry version %d)", w.name, ", ".join(w.experts), device,
             policy, store.held.version)
    runner = asyncio.create_task(w.run(stop))  # announced from now on, while the models load too; rides out outages
    follower = asyncio.create_task(store.follow(take_up, stop), name="registry-follower")
    ready = asyncio.create_task(w.ready.wait())
    await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
    if w.ready.is_set():
        log.info("worker %s ready", w.name)
    try:
        await runner
    finally:
        ready.cancel()
        follower.cancel()
        log.info("worker %s stopping: %d batches, %d jobs served", w.name, w.scheduler.stats.batches,
                 w.scheduler.stats.jobs)
        await queue.close()
        await store.close()


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(worker)
    app()


if __name__ == "__main__":
    main()
