"""Request and response bodies: OpenAI's chat schema plus the `coe` extension."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


def well_formed(value: Any) -> Any:
    """JSON may escape half a surrogate pair ("\\ud800"); such a string is no Unicode text, and the tokenizers and
    encoders behind the API fail on it, so it is the client's error (400), found here rather than there (500).
    `value`: a string, a list of strings or text parts, or None."""
    for item in value if isinstance(value, list) else [value]:
        text = item.text if isinstance(item, TextPart) else item
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise PydanticCustomError("invalid_unicode", "not valid Unicode: a lone surrogate at character {at}",
                                          {"at": exc.start}) from None
    return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    unicode_text = field_validator("content", "name")(well_formed)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


def pipeline_messages(messages: list[ChatMessage]) -> list[dict]:
    """The pipeline's messages; OpenAI's `developer` role is the `system` role of the models' chat templates."""
    roles = {"developer": "system"}
    return [{"role": roles.get(m.role, m.role), "content": m.text()} for m in messages]


class CoeOptions(BaseModel):
    """Per-request routing controls (send as `extra_body={"coe": {...}}` with the openai client)."""

    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, ge=1, description="number of experts to consult; capped by the server")
    router: str | None = Field(None, description="router to use for this request")
    confidence: bool = Field(False, description="give every generated answer its confidence (coe.answers[].confidence: "
                                                "the mean token probability), which costs the CPU engine a few ms a "
                                                "token; cascades compute it for their steps anyway")
    cache: Literal["semantic", "off"] | None = Field(None, description="semantic: may be answered from the semantic "
                                                     "cache and is kept in it (temperature 0 only); off: never; unset: "
                                                     "the key's or server's default; the x-coe-cache header wins")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


MAX_STOPS = 4
"""Stop sequences per request, as OpenAI allows: each is checked against the text after every token."""
MAX_STOP_CHARS = 256
"""Characters per stop sequence."""

NO_TOOLS = "the experts here do not call tools"
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "tools": (([],), NO_TOOLS), "tool_choice": (("none",), NO_TOOLS),
    "functions": (([],), NO_TOOLS), "function_call": (("none",), NO_TOOLS),
    "response_format": (({"type": "text"},), "only {\"type\": \"text\"}: no expert here can be held to JSON"),
    "logprobs": ((False,), "token log-probabilities are not returned"),
    "top_logprobs": ((0,), "token log-probabilities are not returned"),
    "logit_bias": (({},), "each expert has its own token ids, so a bias by token id means nothing to a routed request"),
}
"""OpenAI fields the service cannot honour: (the values that ask for nothing, and are accepted; why the others are
refused with 400 unsupported_parameter rather than ignored)."""


class ChatCompletionRequest(BaseModel):
    # Fields OpenAI clients send that change nothing here (store, metadata, ...) are accepted and ignored;
    # those that would change the answer and cannot be honoured (UNSUPPORTED) are refused.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="a 64-bit signed integer, as in OpenAI's API")
    user: str | None = Field(None, description="names the session, unless the x-session-id header does (README, Conversations)")
    coe: CoeOptions | None = None
    tools: list[dict] | None = Field(None, description="not supported: only [] is accepted")
    tool_choice: str | dict | None = Field(None, description="not supported: only 'none' is accepted")
    functions: list[dict] | None = Field(None, description="not supported: only [] is accepted")
    function_call: str | dict | None = Field(None, description="not supported: only 'none' is accepted")
    response_format: dict | None = Field(None, description="only {\"type\": \"text\"} is accepted")
    logprobs: bool | None = Field(None, description="not supported: only false is accepted")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="not supported: only 0 is accepted")
    logit_bias: dict[str, float] | None = Field(None, description="not supported: only {} is accepted")

    unicode_text = field_validator("model", "stop", "user")(well_formed)

    @field_validator("stop")
    @classmethod
    def _few_short_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise PydanticCustomError("too_many_stops", "at most {n} stop sequences of at most {chars} characters each",
                                      {"n": MAX_STOPS, "chars": MAX_STOP_CHARS})
        return stop

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _refuse_what_cannot_be_honoured(cls, value: Any, info: ValidationInfo) -> Any:
        accepted, why = UNSUPPORTED[info.field_name]
        if value is None or value in accepted:
            return value
        raise PydanticCustomError("unsupported_parameter", "not supported: {why}", {"why": why})


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | list[str] | None = Field(None, description="one text or a batch of texts (or send `messages`)")
    messages: list[ChatMessage] | None = Field(None, description="a chat, routed as /v1/chat/completions routes it: "
                                                                 "its user turns, the latest first (README, Conversations)")
    k: int = Field(1, ge=1)
    router: str | None = None

    unicode_text = field_validator("input")(well_formed)


class CategoryProbability(BaseModel):
    category: str
    probability: float


class CascadeStep(BaseModel):
    expert: str
    accept_at: float = Field(description="the confidence this expert's answer needs to be kept (the last step's "
                                         "answer is always kept)")


class DecisionOut(BaseModel):
    """A routing decision as clients see it, in /v1/route results and in a completion's `coe` object."""

    router: str
    category: str | None
    confidence: float
    top_categories: list[CategoryProbability]
    fallback: bool
    experts: list[str]
    reason: str
    cascade: list[CascadeStep] = Field(default_factory=list, description="a cascade's steps, in order; empty otherwise")


class RouteResult(DecisionOut):
    text: str


class RouteResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[RouteResult]
    timings: dict[str, float]


class ExpertAnswerOut(BaseModel):
    expert: str
    content: str
    completion_tokens: int
    finish_reason: str
    strategy: str = Field("direct", description="how the expert answered: direct, program, choices, or "
                                                "'<strategy>->direct' when the strategy fell back to a direct answer")
    confidence: float | None = Field(None, description="the answer's confidence in [0, 1] (what a cascade acts on)")
    note: str = ""


class CacheOut(BaseModel):
    """What the semantic cache did; present only when the request used it."""

    hit: bool = Field(description="the answer is a cached one, generated for an earlier request")
    similarity: float | None = Field(None, description="a hit's similarity: the lowest cosine between this request's "
                                     "counted turns and the cached request's")
    age_s: float | None = Field(None, description="a hit's age: seconds since the cached answer was generated")
    stored: bool = Field(False, description="a miss whose answer is now cached")
    note: str = Field("", description="why the request was not looked up, or its answer not kept")


class CheaperOut(BaseModel):
    """The key's budget ran low, so routing chose cheaper experts than the router would have."""

    instead_of: list[str] = Field(description="the experts the router chose before the budget changed the choice")
    budget_left: float = Field(description="the share of the key's budget left (the smallest of its caps) then")


class BanditOut(BaseModel):
    """What the online bandit did (README, Learning from feedback)."""

    route: str = Field(description="the statistics it chose by: the router and its category, or the router and its pick")
    router_choice: str = Field(description="the expert the router chose")
    changed: bool = Field(description="the bandit answered with another expert than the router's")
    explored: bool = Field(description="the expert was drawn although another looked better (within the key's share)")


class CoeInfo(DecisionOut):
    bandit: BanditOut | None = Field(None, description="set when the online bandit made the choice (COE_BANDIT)")
    aggregator: str | None
    cheaper: CheaperOut | None = Field(None, description="set when the key's budget running low changed the choice")
    answers: list[ExpertAnswerOut]
    fallback_after_error: str | None = None
    failed_experts: dict[str, str] = Field(default_factory=dict, description="experts whose answer failed, with the "
                                           "error; the answer is made of the others")
    aggregation_error: str | None = Field(None, description="the aggregator failed; the answer is the first routed "
                                          "expert's")
    cache: CacheOut | None = Field(None, description="the semantic cache's doing, when the request used it")
    timings: dict[str, float]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    coe: CoeInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "coe"
    engine: str | None = None
    params_b: float | None = None
    device: str | None = None
    categories: list[str] = []
    fallback: bool = False
    aggregator: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    registry_version: int = Field(description="the version of the expert registry these models come from")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class RegistryErrorDetail(ErrorDetail):
    problems: list[str] = Field(default_factory=list, description="one line per problem, as `coe experts validate` prints them")


class RegistryErrorResponse(BaseModel):
    error: RegistryErrorDetail


class RegistryChangeOut(BaseModel):
    object: Literal["registry.change"] = "registry.change"
    experts: list[str] = Field(description="the experts now registered")
    added: list[str]
    removed: list[str]
    router: str = Field(description="the router rebuilt for the new registry")
    backup: str | None = Field(None, description="where the previous experts file was kept (none with Redis)")
    registry_version: int = Field(description="the registry's version after the change (every replica reaches it)")


class BudgetCap(BaseModel):
    cap: float | None = Field(description="the cap per window; null: none")
    used: float
    reserved: float = Field(description="held by requests still running")


class BudgetOut(BaseModel):
    key: str = Field(description="the key's identity: key-<first 16 hex digits of its SHA-256>")
    window_s: float
    resets_at: float = Field(description="Unix time the current window ends")
    tokens: BudgetCap
    cost: BudgetCap
    left: float = Field(description="the smallest share left of any cap")
    cost_aware: bool = Field(description="whether routing prefers cheaper experts for this key now")


class BudgetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BudgetOut]
