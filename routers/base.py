"""The router interface: a batch of texts and their embeddings in, one decision per text out."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from coe.core.encoder import Encoder
from coe.core.registry import Registry
from coe.core.routes import Routes

Generate = Callable[[str, list[list[dict]], int], list[str]]
"""generate(expert, chats, max_tokens) -> texts: an LLM call through the service's dispatch path.
It blocks the calling thread: routers run off the event loop, in a thread pool of the service's own that the
work it waits on never needs (coe/pipeline.py)."""


@dataclass(frozen=True)
class Arm:
    """An expert a decision chose among, as the router saw it: its chance of a good answer, and what the router
    weighs against that (cost, in the same units), so that chance - penalty ranks the arms as the router did."""

    expert: str
    chance: float
    penalty: float = 0.0


@dataclass(frozen=True)
class BanditChoice:
    """What the online bandit (coe/bandit.py) did with a decision: the statistics it chose by, the router's own pick,
    and whether it explored (took an expert other than the one that looked best)."""

    context: str
    router_choice: str
    explored: bool


@dataclass
class RouteDecision:
    """Which experts answer a query, and why."""

    experts: list[str]
    router: str
    category: str | None = None
    confidence: float = 1.0
    top_categories: list[tuple[str, float]] = field(default_factory=list)
    fallback: bool = False
    reason: str = ""
    aggregator: str | None = None  # the expert that merges k > 1 answers; None = the one marked in experts.yaml
    cascade: list[tuple[str, float]] = field(default_factory=list)
    """A cascade: experts tried in order, each answer kept when its confidence reaches the step's threshold (the last
    step's answer is always kept); `experts` then names the first step."""
    arms: list[Arm] = field(default_factory=list)
    """The experts the router chose among, its pick first (empty where it gives none): the bandit's prior."""
    bandit: BanditChoice | None = None
    """Set when the online bandit made the choice (`experts` is then its choice)."""


@dataclass
class RouterContext:
    """What a router may need to build itself."""

    registry: Registry
    embedder: Encoder
    artifacts_dir: Path
    seed: int = 0
    options: dict = field(default_factory=dict)
    cost_weight: float = 0.0  # two_stage stage 2 defaults (options may override per router)
    budget_b: float | None = None
    generate: Generate | None = None  # an LLM for routers that need one (skills keywords); None = not offered
    routes: Routes | None = None  # the routes file a trained router must have been trained for; None = no file


class Router(ABC):
    name: ClassVar[str]
    serving: ClassVar[bool] = False
    """Whether a client may pick this router per request (`coe.router`): an allow-list, so a new router is
    benchmark-only until it says otherwise."""
    per_query_cost: ClassVar[bool] = False
    """Whether it weighs each query's predicted cost with ctx.cost_weight: a key whose budget runs low is then routed
    by a copy built with COE_BUDGET_COST_WEIGHT (else the pipeline picks the cheapest expert of the route)."""
    source: str = ""
    """What the decisions rest on (an artifact, measured profiles or declared categories), said at start-up."""

    @classmethod
    def build(cls, ctx: RouterContext) -> "Router":
        return cls(ctx)  # type: ignore[call-arg]

    @abstractmethod
    def route(self, texts: list[str], embeddings: np.ndarray, k: int = 1) -> list[RouteDecision]:
        """Decide experts for each text; `k` asks for up to k experts per text."""


ROUTERS: dict[str, type[Router]] = {}

# Routers that live in their own modules, imported on first use so the CLI stays fast.
_LAZY = {
    "centroid": "routers.centroid",
    "two_stage": "routers.two_stage",
    "random": "routers.baselines",
    "single_best": "routers.baselines",
    "knn": "routers.baselines",
    "oracle": "routers.baselines",
    "skills": "routers.skills",
    "quality": "routers.quality",
    "cascade": "routers.quality",
}


def register(name: str):
    def deco(cls: type[Router]) -> type[Router]:
        cls.name = name
        ROUTERS[name] = cls
        return cls

    return deco


def get_router_class(name: str) -> type[Router]:
    if name not in ROUTERS and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in ROUTERS:
        raise KeyError(f"unknown router '{name}'; known: {sorted(set(ROUTERS) | set(_LAZY))}")
    return ROUTERS[name]


def build_router(name: str, ctx: RouterContext) -> Router:
    return get_router_class(name).build(ctx)


def serving_routers() -> list[str]:
    """The routers a client may pick per request (imports every router module to ask its class)."""
    for module in sorted(set(_LAZY.values())):
        importlib.import_module(module)
    return sorted(name for name, cls in ROUTERS.items() if cls.serving)
