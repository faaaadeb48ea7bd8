"""Which requests the semantic cache may answer, under which bucket, and what of an answer it keeps.

Opt-in: a request uses the cache when its `x-coe-cache` header says `semantic` (or, without the header, its
`coe.cache` option does), else when its key is listed in `cache_keys`, else when `cache_default` says so (`off`
unless set); `off` in the header or option wins over both defaults, and `cache_enabled=false` turns it off for every
request. Off by default because a hit answers one question with the answer another question got: only a caller who
knows its traffic repeats itself should take that risk.

Only deterministic answers are kept: every job of the plan at temperature 0 (a sampled answer is one draw, and a
caller asking for temperature > 0 wants another one). Two requests share a bucket, and so may share an answer, only
if their route, experts (and how each is configured: model, strategy, system prompt), generation parameters
(max_tokens, top_p, seed, stop, choices), the messages that are not embedded (system prompts, assistant and tool
turns, older turns), the number of counted turns, the encoder, and the caller's key (unless `cache_shared`) are equal.
A degraded answer (an expert failed, the fallback or the first answer stood in) is never kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

from coe.core.registry import Registry
from coe.core.settings import Settings
from coe.pipeline_types import BadRequest, CacheMark, ChatInput, ExpertAnswer, Outcome, Plan
from coe.semantic_cache import Hit

MODES = ("semantic", "off")
HEADER = "x-coe-cache"


def wanted(header: str | None, option: str | None, key_listed: bool, settings: Settings) -> bool:
    """Whether a request uses the cache (the module's order of precedence); a header naming no mode is a 400."""
    if header is not None and header.strip().lower() not in MODES:
        raise BadRequest(f"{HEADER}: '{header}' is not one of {', '.join(MODES)}", HEADER)
    asked = header.strip().lower() if header is not None else option
    if not settings.cache_enabled:
        return False
    if asked is not None:
        return asked == "semantic"
    return key_listed or settings.cache_default == "semantic"


def _answering(plan: Plan, registry: Registry) -> list[str]:
    """Every expert that may write the answer: the routed ones, a cascade's later steps, the aggregator."""
    d = plan.decision
    names = {*d.experts, *(e for e, _ in d.cascade), *([d.aggregator] if d.aggregator else [])}
    if len(d.experts) > 1 and registry.aggregator is not None:
        names.add(registry.aggregator.name)
    return sorted(n for n in names if n in registry.experts)


def refusal(plan: Plan, inp: ChatInput, registry: Registry) -> str | None:
    """Why the plan's answer may not be cached (some expert answers at a temperature above 0), or None."""
    temperatures = [inp.temperature] if inp.temperature is not None else [
        registry.experts[n].generation.temperature for n in _answering(plan, registry)]
    sampled = [t for t in temperatures if t > 0]
    if sampled:
        return f"temperature {sampled[0]:g} > 0: sampled answers are never cached"
    return None


def bucket(plan: Plan, messages: list[dict], positions: list[int], registry: Registry, encoder: str,
           scope: str | None) -> str:
    """A digest of everything two requests must share (the module's list); `positions`: the embedded turns."""
    d = plan.decision
    material = {
        "scope": scope, "encoder": encoder, "turns": len(positions),
        "decision": [d.router, d.category, d.experts, d.aggregator, d.cascade],
        "experts": {n: registry.experts[n].model_dump(mode="json") for n in _answering(plan, registry)},
        "requests": [{k: v for k, v in asdict(j.request).items() if k != "messages"} for j in plan.jobs],
        "fixed": [None if i in positions else m for i, m in enumerate(messages)],
    }
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def keepable(outcome: Outcome) -> bool:
    """A whole answer: no expert failed, no stand-in answered."""
    return not (outcome.failed_experts or outcome.fallback_after_error or outcome.aggregation_error)


def kept(outcome: Outcome) -> dict:
    """What the cache keeps of an outcome (JSON)."""
    return {"text": outcome.text, "finish_reason": outcome.finish_reason, "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens, "aggregator": outcome.aggregator,
            "answers": [asdict(replace(a, queue_s=0.0, generate_s=0.0)) for a in outcome.answers]}


def answered(hit: Hit, plan: Plan, timings: dict[str, float]) -> Outcome:
    """The outcome of a hit: the cached answer, under this request's decision and timings, marked as cached."""
    a = hit.answer
    return Outcome(text=a["text"], finish_reason=a["finish_reason"], prompt_tokens=a["prompt_tokens"],
                   completion_tokens=a["completion_tokens"], decision=plan.decision,
                   answers=[ExpertAnswer(**x) for x in a["answers"]], aggregator=a["aggregator"], timings=timings,
                   cache=CacheMark(hit=True, similarity=round(hit.similarity, 4), age_s=round(hit.age_s, 3)))
