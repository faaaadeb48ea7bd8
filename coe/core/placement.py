"""Where experts with `device: auto` run: a placement over the GPUs present, by memory and by traffic.

A pure function: the experts, each GPU's memory and the measured traffic (requests/s per expert) in;
a GPU and a tier per expert, with the reason, out. One worker serves each GPU; the registry's
`on_device("gpu:N")` hands that worker what the placement put on gpu:N. The rules, in order:

1. Experts that share weights (same engine and model) are one unit: one GPU, their traffic added up.
   An auto unit whose weights a fixed expert already holds joins that expert's GPU at no extra memory.
2. Fixed experts (`device: gpu:N`) stay where they are; their memory and traffic count on that GPU.
3. Auto units go hottest first (ties: the largest first), each to the GPU with the least traffic so far
   among those where it fits resident (memory_gb against the GPU's total times the headroom, minus
   what is resident there already); ties: the most free memory. So load is balanced, the hottest
   experts are spread over the GPUs, and the biggest take the roomiest places.
4. A unit that fits resident nowhere goes, asleep, to the least-loaded GPU that can hold it alone;
   the worker there wakes it on demand (its scheduler evicts the least recently used).
5. A unit larger than every GPU (after headroom) cannot be placed: an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

DEFAULT_HEADROOM = 0.9
"""Share of a GPU's memory the placement fills; the rest is left for the CUDA context and fragmentation."""


class PlacementError(ValueError):
    """The experts cannot be placed on these GPUs."""


@dataclass(frozen=True)
class Item:
    """One expert as the planner sees it."""

    name: str
    weights: str  # experts with equal `weights` share one copy (engine|model)
    memory_gb: float
    device: str  # "auto", or the fixed "gpu:N"


@dataclass
class Assignment:
    device: str
    tier: Literal["resident", "asleep"]
    reason: str


@dataclass
class GpuLoad:
    device: str
    total_gb: float
    usable_gb: float
    resident_gb: float = 0.0
    asleep_gb: float = 0.0
    traffic: float = 0.0

    @property
    def free_gb(self) -> float:
        return self.usable_gb - self.resident_gb


@dataclass
class Placement:
    experts: dict[str, Assignment]
    gpus: dict[str, GpuLoad]
    traffic: dict[str, float] = field(default_factory=dict)

    def device_of(self, name: str) -> str | None:
        a = self.experts.get(name)
        return a.device if a else None


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def plan(items: list[Item], gpus_gb: list[float], traffic: dict[str, float] | None = None,
         headroom: float = DEFAULT_HEADROOM) -> Placement:
    """Place every `auto` item on one of the GPUs (index i has gpus_gb[i] GB); see the module's rules."""
    if not gpus_gb:
        raise PlacementError("no GPUs to place on: none detected; give their memory (e.g. --gpus 80,80 or COE_GPU_MEMORY_GB)")
    rate = {i.name: (traffic.get(i.name, 0.0) if traffic is not None else 1.0) for i in items}
    gpus = {f"gpu:{n}": GpuLoad(f"gpu:{n}", gb, gb * headroom) for n, gb in enumerate(gpus_gb)}
    out: dict[str, Assignment] = {}
    held: dict[str, str] = {}  # weights -> gpu holding them for fixed experts
    for i in items:
        if i.device == "auto":
            continue
        gpu = gpus.get(i.device)
        if gpu is None:
            raise PlacementError(f"expert '{i.name}' is fixed on {i.device}, but there are only {len(gpus)} GPUs")
        if i.weights not in held:
            gpu.resident_gb += i.memory_gb
            held[i.weights] = i.device
        gpu.traffic += rate[i.name]
        out[i.name] = Assignment(i.device, "resident", "fixed in experts.yaml")
    units: dict[str, list[Item]] = {}
    for i in items:
        if i.device == "auto":
            units.setdefault(i.weights, []).append(i)

    def heat(members: list[Item]) -> float:
        return sum(rate[m.name] for m in members)

    order = sorted(units.values(), key=lambda ms: (-heat(ms), -max(m.memory_gb for m in ms), ms[0].name))
    for members in order:
        mem, hot = max(m.memory_gb for m in members), heat(members)
        names = ", ".join(m.name for m in members)
        if members[0].weights in held:
            gpu = gpus[held[members[0].weights]]
            gpu.traffic += hot
            tier, reason = "resident", f"its weights are already on {gpu.device} (a fixed expert)"
        else:
            fits = [g for g in gpus.values() if g.free_gb >= mem]
            if fits:
                gpu = min(fits, key=lambda g: (g.traffic, -g.free_gb, g.device))
                reason = (f"{_fmt(hot)} req/s, {_fmt(mem)} GB: {gpu.device} had the least traffic "
                          f"({_fmt(gpu.traffic)} req/s) among GPUs with room ({_fmt(gpu.free_gb)} GB free)")
                gpu.resident_gb += mem
                tier = "resident"
            else:
                can = [g for g in gpus.values() if g.usable_gb >= mem]
                if not can:
                    raise PlacementError(f"expert(s) {names} need {_fmt(mem)} GB; the largest GPU offers "
                                         f"{_fmt(max(g.usable_gb for g in gpus.values()))} GB after headroom")
                gpu = min(can, key=lambda g: (g.traffic, g.asleep_gb, g.device))
                reason = (f"{_fmt(mem)} GB fits resident on no GPU; asleep on the least-loaded one "
                          f"({_fmt(gpu.traffic)} req/s), woken on demand")
                gpu.asleep_gb += mem
                tier = "asleep"
            gpu.traffic += hot
            held[members[0].weights] = gpu.device
        for m in members:
            others = [o.name for o in members if o is not m]
            out[m.name] = Assignment(gpu.device, tier, reason + (f"; shares weights with {', '.join(others)}" if others else ""))
    return Placement(out, gpus, rate)


def load_traffic(path: Path) -> dict[str, float]:
    """Requests/s per expert from a JSON or YAML mapping (e.g. {"stem": 3.2, "law": 0.4})."""
    try:
        raw = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PlacementError(f"{path}: cannot read traffic: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, int | float) and v >= 0 for v in raw.values()):
        raise PlacementError(f"{path}: traffic must map expert names to requests per second (numbers >= 0)")
    return {str(k): float(v) for k, v in raw.items()}


def detect_gpus_gb() -> list[float]:
    """Total memory (GiB) of each GPU this machine has, through NVML; empty where there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        return [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total / 2**30
                for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()
