"""What goes in and comes out of the pipeline: a chat request, the plan for it, the outcome, and the errors
the API turns into OpenAI-style error bodies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from routers import RouteDecision
from workers.jobs import Job


class PipelineError(Exception):
    """A failure the API turns into an OpenAI-style error with this status."""

    status = 500
    type = "server_error"
    code: str | None = None
    retry_after: float | None = None  # seconds, for the Retry-After header

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class UnknownModel(PipelineError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class BadRequest(PipelineError):
    status, type, code = 400, "invalid_request_error", None


class PromptTooLong(BadRequest):
    """The messages do not fit the context of the expert that was to answer (the worker's engine counted them)."""

    code = "context_length_exceeded"


class ExpertFailed(PipelineError):
    status, type, code = 502, "server_error", "expert_failed"


class Unavailable(PipelineError):
    status, type, code = 503, "server_error", "unavailable"


class TimedOut(PipelineError):
    status, type, code = 504, "server_error", "timeout"


class ClientGone(PipelineError):
    status, type, code = 499, "invalid_request_error", "client_closed_request"


@dataclass
class ChatInput:
    model: str
    messages: list[dict]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    k: int | None = None
    router: str | None = None
    choices: list[str] | None = None  # score these continuations instead of generating (benchmarks, profiles)
    confidence: bool = False  # every answer's confidence; a cascade asks for it on its steps whatever this says
    session: str | None = None  # keeps its route across turns (coe/sessions.py)
    cache: bool = False  # may be answered from, and is kept in, the semantic cache (coe/cache_policy.py)
    caller: str | None = None  # the key's identity (None: an open service): its cached answers, its bandit exploration
    payer: str | None = None  # the key identity whose budget pays (coe/budgets.py); None: no budget applies


@dataclass
class CacheMark:
    """What the semantic cache did for a request that asked for it."""

    hit: bool
    similarity: float | None = None  # of the cached request that answered (the lowest cosine over its turns)
    age_s: float | None = None  # since the cached answer was generated
    stored: bool = False  # a miss whose answer is now cached
    note: str = ""  # why it was not looked up or not kept


@dataclass
class Cheaper:
    """The budget changed the routing: the experts the router chose, and the share of the budget left then."""

    instead_of: list[str]
    left_share: float


@dataclass
class ExpertAnswer:
    expert: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    queue_s: float
    generate_s: float
    strategy: str = "direct"  # how it was answered (coe/strategies.py); "program->direct": the program failed
    confidence: float | None = None  # in [0, 1], what a cascade acts on; None when the engine cannot tell
    note: str = ""  # why a strategy fell back, or what it did


@dataclass
class Outcome:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    decision: RouteDecision
    answers: list[ExpertAnswer]
    aggregator: str | None
    timings: dict[str, float]
    fallback_after_error: str | None = None
    failed_experts: dict[str, str] = field(default_factory=dict)  # expert -> error; the answer is the others'
    aggregation_error: str | None = None  # the aggregator failed; the answer is the first routed expert's
    cache: CacheMark | None = None  # None: the request did not ask for the semantic cache
    cheaper: Cheaper | None = None  # the key's budget ran low: cheaper experts answered


@dataclass
class Plan:
    decision: RouteDecision
    jobs: list[Job]
    timings: dict[str, float]
    asks: list = field(default_factory=list)  # per job: the strategy's Ask, or None for a direct answer
    cheaper: Cheaper | None = None  # the key's budget ran low: cheaper experts answer
    vectors: np.ndarray | None = None  # the counted turns' embeddings, when routing computed them
    positions: list[int] = field(default_factory=list)  # where those turns are in the messages (the semantic cache's)

    @property
    def buffered(self) -> bool:
        """True when the answer is known only once an attempt is over (a strategy that is not direct, a cascade)."""
        return bool(self.decision.cascade) or any(a is not None for a in self.asks)
