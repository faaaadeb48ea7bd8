"""Sub-commands that other packages add to `coe` through the `coe.cli` entry-point group.

The benchmarks (`coe bench ...`) live above the product and register themselves this way, so the
product never imports them: a missing or broken plugin costs only its own command.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

import typer

GROUP = "coe.cli"
log = logging.getLogger("coe.cli")


def mount_plugins(app: typer.Typer) -> None:
    """Add every `coe.cli` entry point (a Typer app) as a sub-command named after the entry point."""
    for ep in entry_points(group=GROUP):
        try:
            plugin = ep.load()
        except Exception as exc:  # one broken plugin must not take the whole CLI down
            log.warning("coe: the '%s' commands are unavailable: %s", ep.name, exc)
            continue
        app.add_typer(plugin, name=ep.name)
