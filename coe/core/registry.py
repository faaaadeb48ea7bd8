"""The expert registry: experts.yaml, its schema, and errors that name file, expert, field and reason."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coe.core.assets import AssetError, check_model_ref, is_local_ref, resolve_model_path
from coe.core.file_problems import FileProblems, describe
from coe.core.placement import DEFAULT_HEADROOM, Item, Placement, PlacementError, plan

if TYPE_CHECKING:
    from coe.core.routes import Routes

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RESERVED_NAMES = {"coe"}
CPU_ENGINES = ("local", "llamacpp")
"""Engines that run local weights on this machine's CPU."""


class GenerationDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)


class ExpertConfig(BaseModel):
    """One expert model as a user declares it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    engine: Literal["local", "llamacpp", "vllm", "openai"]
    model: str = Field(min_length=1, description="package:<module>[/file], parts:<name>, a local path, or a model id")
    api_base: str | None = Field(None, description="base URL of an OpenAI-compatible server (engine: openai)")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the provider key")
    device: str = Field("cpu", pattern=r"^(cpu|gpu:\d+|remote|auto)$",
                        description="cpu, gpu:N, remote, or auto (a GPU chosen by the placement: coe experts plan)")
    memory_gb: float = Field(1.0, gt=0)
    max_batch: int = Field(8, ge=1, le=1024)
    params_b: float = Field(gt=0, description="active parameters, billions")
    cost_per_1k_tokens: float = Field(0.0, ge=0)
    price_per_1k_input: float | None = Field(None, ge=0, description="price of 1,000 prompt tokens (budgets); unset: "
                                             "cost_per_1k_tokens, or parameters x tokens when that is 0 too")
    price_per_1k_output: float | None = Field(None, ge=0, description="price of 1,000 completion tokens (budgets)")
    description: str = ""
    categories: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)
    strategy: Literal["direct", "program", "choices"] = Field(
        "direct", description="how the model is asked (coe/strategies.py): direct answer, program-of-thought run in the "
                              "sandbox, or option scoring of lettered multiple choice")
    system_prompt: str | None = None
    chat_template: str | None = Field(None, min_length=1, description="a Jinja chat template replacing the model's own (llamacpp)")
    completion: bool = Field(False, description="a base model: answers through a plain completion prompt, no chat template")
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    fallback: bool = False
    aggregator: bool = False

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_NAMES:
            raise ValueError(f"'{v}' is reserved for the routed endpoint")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name_not_key(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", v):
            raise ValueError("must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never a literal key")
        return v

    @model_validator(mode="after")
    def _engine_fields(self) -> "ExpertConfig":
        if self.engine == "openai" and not self.api_base and not self.api_key_env:
            raise ValueError("engine 'openai' needs api_base (a self-hosted server) or api_key_env (a hosted provider)")
        if self.engine != "openai" and (self.api_base or self.api_key_env):
            raise ValueError(f"api_base/api_key_env only apply to engine 'openai', not '{self.engine}'")
        if self.engine in CPU_ENGINES and self.device.startswith("gpu"):
            raise ValueError(f"engine '{self.engine}' runs on the CPU; use engine 'vllm' for a GPU")
        if self.device == "auto" and self.engine != "vllm":
            raise ValueError(f"device 'auto' places experts on GPUs; engine '{self.engine}' does not run on one")
        return self

    @property
    def weights_key(self) -> str:
        """Experts with the same engine, model and device share one set of loaded weights."""
        return f"{self.engine}|{self.model}|{self.device}"


class ExpertsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    experts: list[ExpertConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _registry_rules(self) -> "ExpertsFile":
        seen: set[str] = set()
        for e in self.experts:
            if e.name in seen:
                raise ValueError(f"expert '{e.name}': duplicate name")
            seen.add(e.name)
        for e in self.experts:  # one engine serves a weights group: its experts must agree on how it is prompted
            first = next(x for x in self.experts if x.weights_key == e.weights_key)
            if (e.chat_template, e.completion) != (first.chat_template, first.completion):
                raise ValueError(f"expert '{e.name}': chat_template and completion must match those of '{first.name}', "
                                 "which shares its weights (same engine, model and device)")
        for flag in ("fallback", "aggregator"):
            flagged = [e.name for e in self.experts if getattr(e, flag)]
            if len(flagged) > 1:
                raise ValueError(f"expert '{flagged[1]}', field '{flag}': only one expert may be marked {flag} (already: '{flagged[0]}')")
        return self


class RegistryError(FileProblems):
    """An invalid experts file; `problems` holds one human-readable line per problem."""


def _describe(path: Path, raw: dict, err: dict) -> str:
    return describe(path, raw, err, "experts", "expert")


class Registry:
    """The validated experts, with lookups the rest of the service needs."""

    def __init__(self, spec: ExpertsFile, path: Path):
        self.spec = spec
        self.path = path
        self.experts: dict[str, ExpertConfig] = {e.name: e for e in spec.experts}
        self.placement: Placement | None = None

    @property
    def names(self) -> list[str]:
        return list(self.experts)

    @property
    def fallback(self) -> ExpertConfig | None:
        return next((e for e in self.experts.values() if e.fallback), None)

    @property
    def aggregator(self) -> ExpertConfig | None:
        return next((e for e in self.experts.values() if e.aggregator), None)

    @property
    def devices(self) -> list[str]:
        """The devices the experts run on (cpu, gpu:0, ...), sorted: one embedded worker each."""
        return sorted({e.device for e in self.experts.values()})

    def model_path(self, expert: ExpertConfig, cache_dir: Path | None = None) -> Path:
        """The expert's weights on disk; a split (`parts:`) model is assembled into `cache_dir` first."""
        return resolve_model_path(expert.model, self.path.parent, cache_dir)

    @property
    def auto_placed(self) -> list[ExpertConfig]:
        return [e for e in self.experts.values() if e.device == "auto"]

    def place(self, gpus_gb: list[float], traffic: dict[str, float] | None = None,
              headroom: float = DEFAULT_HEADROOM) -> Placement:
        """Decide (coe.core.placement) which GPU each `device: auto` expert runs on; `on_device` follows it."""
        items = [Item(e.name, f"{e.engine}|{e.model}", e.memory_gb, e.device)
                 for e in self.experts.values() if e.device == "auto" or e.device.startswith("gpu:")]
        self.placement = plan(items, gpus_gb, traffic, headroom)
        return self.placement

    def resolved(self, expert: ExpertConfig) -> ExpertConfig:
        """The expert with the device it really runs on (an `auto` one: the placement's GPU)."""
        if expert.device != "auto":
            return expert
        device = self.placement.device_of(expert.name) if self.placement else None
        if device is None:
            raise PlacementError(f"expert '{expert.name}' has device 'auto' and no placement was made (Registry.place)")
        return expert.model_copy(update={"device": device})

    def on_device(self, device: str) -> list[ExpertConfig]:
        """The experts a worker for `device` serves; `auto` ones where the placement put them."""
        if not device.startswith("gpu:"):
            return [e for e in self.experts.values() if e.device == device]
        return [r for e in self.experts.values() if e.device in (device, "auto") and (r := self.resolved(e)).device == device]


def served_as(expert: ExpertConfig) -> str:
    """What a live worker serving `expert` announces, and what the API checks before queueing its jobs: its device,
    or `auto:<name>` for a `device: auto` expert, whose GPU only the workers' placement knows (the API may have none)."""
    return f"auto:{expert.name}" if expert.device == "auto" else expert.device


def category_problems(spec: ExpertsFile, path: Path, routes: "Routes") -> list[str]:
    """Categories that name no route: such an expert would never be chosen for them."""
    known = set(routes.names)
    problems = []
    for i, e in enumerate(spec.experts):
        unknown = [c for c in e.categories if c.strip().lower() not in known]
        if unknown:
            problems.append(f"{path}, expert '{e.name}' (experts[{i}]), field 'categories': {unknown} "
                            f"{'is not a route' if len(unknown) == 1 else 'are not routes'} of {routes.path} "
                            f"(add the route there, or use one of: {', '.join(routes.names)})")
    return problems


def _host_problems(spec: ExpertsFile, path: Path) -> list[str]:
    """What this host lacks to serve the experts: weights not on disk, an api_key_env not set here."""
    problems = []
    for i, e in enumerate(spec.experts):
        if e.engine in CPU_ENGINES or (e.engine == "vllm" and is_local_ref(e.model)):
            try:
                check_model_ref(e.model, path.parent)
            except AssetError as exc:
                problems.append(f"{path}, expert '{e.name}' (experts[{i}]), field 'model': {exc}")
        if e.api_key_env and e.api_key_env not in os.environ:
            problems.append(f"{path}, expert '{e.name}' (experts[{i}]), field 'api_key_env': environment variable {e.api_key_env} is not set")
    return problems


def host_problems(registry: Registry) -> list[str]:
    return _host_problems(registry.spec, registry.path)


def parse_registry(text: str, path: Path, routes: "Routes | None" = None, host: bool = True) -> Registry:
    """Validate experts-file text (and, given the routes, that categories name routes); raise RegistryError
    listing every problem. `host=False` leaves out what only this host lacks (host_problems): a registry the
    fleet shares is run as it is, and a process reports what it cannot serve of it."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(path, [f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise RegistryError(path, [f"{path}: must be a mapping with an 'experts' list"])
    try:
        spec = ExpertsFile.model_validate(raw)
    except ValidationError as exc:
        raise RegistryError(path, [_describe(path, raw, e) for e in exc.errors()]) from None
    problems = category_problems(spec, path, routes) if routes is not None else []
    if host:
        problems += _host_problems(spec, path)
    if problems:
        raise RegistryError(path, problems)
    return Registry(spec, path)


def load_registry(path: Path, routes: "Routes | None" = None) -> Registry:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(path, [f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_registry(text, path, routes)
