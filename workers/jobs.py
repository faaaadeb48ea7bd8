"""What travels between the API and the workers: jobs in, results (and streamed text) out."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field


@dataclass
class GenerationRequest:
    """One chat to complete; the engine applies the model's chat template.

    With `choices`, nothing is generated: the engine scores each choice as the text that follows
    the chat (the template with the generation prompt; when the chat ends with an assistant
    message, that message is continued instead, as a prefill) and the Completion carries one
    log-probability per choice (summed over the choice's tokens) in `choice_logprobs`.
    """

    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    choices: list[str] | None = None
    confidence: bool = False  # fill Completion.mean_logprob: llama.cpp reads the whole vocabulary's logits per token


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    choice_logprobs: list[float] | None = None  # with request.choices: one per choice, in order
    mean_logprob: float | None = None  # with request.confidence: mean log p(token) of the generated tokens under the raw logits


@dataclass
class Job:
    expert: str
    request: GenerationRequest
    stream: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    enqueued_at: float = field(default_factory=time.time)
    deadline: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Job":
        d = json.loads(raw)
        d["request"] = GenerationRequest(**d["request"])
        return cls(**d)


ENGINE_ERROR = "engine_error"  # the engine (or its model's load) failed
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the prompt does not fit the model's context: the client's error
CANCELLED = "cancelled"  # the caller gave up while the job ran; nobody reads this result
INTERRUPTED = "interrupted"  # a streamed job lost its worker after text was sent; it cannot be continued
BAD_JOB = "bad_job"  # the queued job could not be decoded (dead-lettered)
POISON = "poison"  # every worker that took the job died or hung on it, `max_deliveries` times (dead-lettered)


@dataclass
class JobResult:
    job_id: str
    expert: str
    completion: Completion | None = None
    error: str | None = None
    error_type: str | None = None
    worker: str = ""
    queue_s: float = 0.0
    generate_s: float = 0.0
    batch_size: int = 1

    @property
    def ok(self) -> bool:
        return self.completion is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "JobResult":
        d = json.loads(raw)
        if d.get("completion"):
            d["completion"] = Completion(**d["completion"])
        return cls(**d)
