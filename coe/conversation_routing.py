"""Routing a conversation, not one message: the latest human turn first, the earlier ones as context.

Only the turns of the roles the policy names are read (default: `user`), so a system prompt, a tool's output or
an assistant's answer never moves the route. With one such turn the router sees it alone, as before. With more, the
router decides two texts in one batch: the latest turn alone, and the conversation (the earlier turns' embeddings,
the nearest weighing most, blended with the latest turn's by `latest_weight`; its text, latest first, for a router's
lexical features). The conversation's decision stands unless the latest
turn alone is confident (at least `switch_confidence`) of another route and does not lean on the conversation (its
embedding is not within `continuation_similarity` of a continuation phrase, coe/conversation_cues.py): that is a topic
switch. Elliptical follow-ups carry no topic of their own, but some read as one alone ("make it shorter" as writing):
the continuation phrases keep those on the conversation's route.
Measured and calibrated on the conversation set's validation part: evals/bench_conversations.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from coe.core.settings import Settings
from coe.sessions import SessionRoute, SessionStore
from routers import RouteDecision, Router


@dataclass(frozen=True)
class ConversationPolicy:
    """Defaults: calibrated on the conversation set's validation part (README, Conversations)."""

    roles: tuple[str, ...] = ("user",)
    turns: int = 4  # the most recent counted turns the router reads
    latest_weight: float = 0.0  # the latest turn's share of the blended embedding (0: the earlier turns are the prior)
    decay: float = 0.5  # each earlier turn weighs this much of the one after it
    switch_confidence: float = 0.55  # the latest turn alone this confident of another route is a new topic
    continuation_similarity: float = 0.4  # ... unless it is this close (cosine) to a continuation phrase

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConversationPolicy":
        return cls(roles=tuple(settings.routing_roles), turns=settings.routing_turns,
                   latest_weight=settings.routing_latest_weight, switch_confidence=settings.routing_switch_confidence,
                   continuation_similarity=settings.routing_continuation_similarity)


def counted(messages: list[dict], policy: ConversationPolicy) -> list[int]:
    """The positions of the turns that count, oldest first (at most `policy.turns`); with none, the last message's."""
    positions = [i for i, m in enumerate(messages)
                 if m.get("role") in policy.roles and str(m.get("content") or "").strip()]
    if not positions:
        return [len(messages) - 1] if messages else []
    return positions[-policy.turns:]


def human_turns(messages: list[dict], policy: ConversationPolicy) -> list[str]:
    """The texts of the turns that count, oldest first (at most `policy.turns`); with none, the last message's."""
    return [str(messages[i].get("content") or "") for i in counted(messages, policy)] or [""]


def blend(vectors: np.ndarray, policy: ConversationPolicy) -> np.ndarray:
    """The latest turn's embedding with the earlier turns' (nearest first, each `decay` of the next), unit length."""
    earlier = vectors[:-1][::-1]
    weights = policy.decay ** np.arange(len(earlier))
    context = (weights[:, None] * earlier).sum(axis=0) / weights.sum()
    mixed = policy.latest_weight * vectors[-1] + (1 - policy.latest_weight) * context
    return mixed / max(float(np.linalg.norm(mixed)), 1e-12)


def conversation_text(turns: list[str]) -> str:
    """The turns as one text for a router's lexical features, the latest first."""
    return "\n".join(reversed(turns))


def continuation(latest: np.ndarray, cues: np.ndarray) -> float:
    """How close the latest turn is to a continuation phrase (coe/conversation_cues.py): the highest cosine."""
    return float((cues @ latest).max()) if len(cues) else -1.0


def decide(router: Router, turns: list[str], vectors: np.ndarray, k: int, policy: ConversationPolicy,
           cues: np.ndarray) -> tuple[RouteDecision, bool]:
    """One decision for a conversation whose counted turns are `turns` (embedded as `vectors`, same order), and
    whether its latest turn is a new topic; `cues` are the continuation phrases' embeddings."""
    leaning = continuation(vectors[-1], cues)
    if len(turns) == 1:
        decision = router.route(turns, vectors, k)[0]
        return decision, new_topic(decision, policy, leaning)
    alone, in_context = router.route([turns[-1], conversation_text(turns)],
                                     np.stack([vectors[-1], blend(vectors, policy)]), k)
    decision = pick(alone, in_context, len(turns), policy, leaning)
    return decision, decision.category != in_context.category


def new_topic(alone: RouteDecision, policy: ConversationPolicy, leaning: float) -> bool:
    """Whether a turn names a topic of its own: the router is confident of it alone, and it does not lean on the
    conversation (`leaning`: its continuation score)."""
    return not alone.fallback and alone.confidence >= policy.switch_confidence and leaning < policy.continuation_similarity


def pick(alone: RouteDecision, in_context: RouteDecision, n_turns: int, policy: ConversationPolicy,
         leaning: float) -> RouteDecision:
    """The conversation's decision, or the latest turn's where it is a new topic of another route."""
    if alone.category != in_context.category and new_topic(alone, policy, leaning):
        return replace(alone, reason=f"new topic (latest turn alone p={alone.confidence:.2f} >= "
                                     f"{policy.switch_confidence:.2f}): {alone.reason}")
    return replace(in_context, reason=f"conversation of {n_turns} turns: {in_context.reason}")


def with_affinity(decision: RouteDecision, is_new: bool, held: SessionRoute | None) -> RouteDecision:
    """The session's route where it has one and the latest turn is no new topic; else the decision."""
    if held is None or is_new or held.router != decision.router or len(held.experts) != len(decision.experts):
        return decision
    if held.experts == decision.experts:
        return decision
    return replace(decision, category=held.category, experts=list(held.experts), fallback=False, bandit=None,
                   reason=f"session affinity: stays with '{held.category}' ({decision.reason})")


async def session_route(store: SessionStore, session: str, decision: RouteDecision, is_new: bool) -> RouteDecision:
    """The decision with the session's affinity applied (with_affinity), remembered as the session's route."""
    decision = with_affinity(decision, is_new, await store.get(session))
    await store.put(session, SessionRoute(decision.category, decision.experts, decision.router))
    return decision
