"""The faults `coe bench load --spawn redis` scripts at fixed times of the run, and the registry probe.

At fractions of the run (for the default 60 s: 15, 30 and 40 s): SIGKILL a worker and start a
replacement; stop the bench's own Redis, keep it down a moment, start it again on its append-only
file; register an expert through replica 1 (`POST /v1/experts` with the admin key), then ask replica
2 (the only one when there is one) for it until it answers or the probe window ends. The expert is a
new role on weights a worker already holds, with no description, categories or skills, so no router
sends it traffic: only the probe, which names it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from coe_evals.load_fleet import Fleet

CPU_ENGINES = ("local", "llamacpp")
PROBE_EVERY_S = 0.5
VISIBLE_POLL_S = 0.05


@dataclass
class Events:
    """What happened when, in seconds since the load started."""

    t0: float = field(default_factory=time.monotonic)
    lines: list[dict] = field(default_factory=list)

    def add(self, kind: str, what: str) -> None:
        self.lines.append({"t_s": round(time.monotonic() - self.t0, 1), "kind": kind, "what": what})

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.lines]

    async def at(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + seconds - time.monotonic()))


@dataclass
class RegistryProbe:
    expert: str
    registered_through: int
    asked_through: int
    window_s: float
    added_status: int | None = None
    registry_visible_s: float | None = None  # from the 201 to the asked replica listing the expert in /v1/models
    registry_served_s: float | None = None  # from the 201 to the first answer of the asked replica; None: not within the window
    probes: int = 0
    statuses: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        return {"expert": self.expert, "registered_through_replica": self.registered_through,
                "asked_through_replica": self.asked_through, "added_status": self.added_status,
                "registry_visible_s": self.registry_visible_s, "registry_served_s": self.registry_served_s, "probe_window_s": self.window_s, "probes": self.probes,
                "probe_statuses": dict(self.statuses)}


def added_expert(experts_file: Path, name: str) -> dict:
    """A new role on the weights of the file's first CPU expert (so a worker already holds them)."""
    experts = yaml.safe_load(experts_file.read_text())["experts"]
    base = next(e for e in experts if e.get("engine") in CPU_ENGINES and e.get("device", "cpu") == "cpu")
    return {"name": name, "engine": base["engine"], "model": base["model"], "params_b": base["params_b"],
            "memory_gb": base.get("memory_gb", 1.0), "max_batch": base.get("max_batch", 8),
            "system_prompt": "You answer in one short sentence.", "generation": {"max_tokens": 4, "temperature": 0.0}}


async def kill_worker(fleet: Fleet, events: Events, at_s: float) -> None:
    await events.at(at_s)
    killed, started = await asyncio.to_thread(fleet.kill_and_replace_worker)
    events.add("worker_killed", killed)
    events.add("worker_started", started)


async def restart_redis(fleet: Fleet, events: Events, at_s: float, down_s: float) -> None:
    await events.at(at_s)
    events.add("redis_stopped", f"SIGTERM to the bench's redis-server (port {fleet.redis.port})")
    await asyncio.to_thread(fleet.restart_redis, down_s)
    events.add("redis_started", f"redis-server started again on its append-only file after {down_s:g} s down")


async def _wait_listed(http: httpx.AsyncClient, url: str, probe: RegistryProbe, added: float, deadline: float) -> None:
    """Poll the replica's /v1/models until it lists the new expert: the registry change taken up there."""
    while time.monotonic() < deadline:
        try:
            models = await http.get(f"{url}/v1/models", timeout=max(0.1, deadline - time.monotonic()))
            if models.status_code == 200 and any(m.get("id") == probe.expert for m in models.json().get("data", [])):
                probe.registry_visible_s = round(time.monotonic() - added, 3)
                return
        except (httpx.HTTPError, ValueError):
            pass
        await asyncio.sleep(VISIBLE_POLL_S)


async def register_and_probe(fleet: Fleet, http: httpx.AsyncClient, events: Events, at_s: float,
                             probe: RegistryProbe, body: dict) -> None:
    await events.at(at_s)
    urls = fleet.urls
    admin = {"Authorization": f"Bearer {fleet.admin_key}"}
    try:
        resp = await http.post(f"{urls[probe.registered_through - 1]}/v1/experts", json=body, headers=admin, timeout=60)
        probe.added_status = resp.status_code
    except httpx.HTTPError as exc:
        events.add("registry_change", f"POST /v1/experts to replica {probe.registered_through} got no answer: {exc!r}")
        return
    events.add("registry_change", f"POST /v1/experts ({probe.expert}) to replica {probe.registered_through}: "
                                  f"{resp.status_code}")
    if resp.status_code != 201:
        return
    added = time.monotonic()
    deadline = added + probe.window_s
    await _wait_listed(http, urls[probe.asked_through - 1], probe, added, deadline)
    if probe.registry_visible_s is not None:
        events.add("registry_visible", f"replica {probe.asked_through} listed {probe.expert} in /v1/models "
                                       f"{probe.registry_visible_s} s after the 201")
    chat = {"model": probe.expert, "max_tokens": 1, "messages": [{"role": "user", "content": "Say yes."}]}
    while (left := deadline - time.monotonic()) > 0:
        probe.probes += 1
        try:
            answer = await http.post(f"{urls[probe.asked_through - 1]}/v1/chat/completions", json=chat, timeout=left)
        except httpx.TimeoutException:
            probe.statuses["no answer within the window"] += 1
            break
        except httpx.HTTPError as exc:
            probe.statuses[type(exc).__name__] += 1
        else:
            probe.statuses[str(answer.status_code)] += 1
            if answer.status_code == 200:
                probe.registry_served_s = round(time.monotonic() - added, 3)
                events.add("registry_served", f"replica {probe.asked_through} answered for {probe.expert} "
                                              f"{probe.registry_served_s} s after the 201")
                return
        await asyncio.sleep(min(PROBE_EVERY_S, max(0.0, deadline - time.monotonic())))
    events.add("registry_not_served", f"replica {probe.asked_through} did not answer for {probe.expert} within "
                                      f"{probe.window_s:g} s of the 201 ({dict(probe.statuses)})")
