"""Which turns of a chat the router reads: the policy's roles only, the latest last; the rest never routes."""

from __future__ import annotations

import numpy as np

from dataclasses import replace

from coe.conversation_routing import ConversationPolicy, blend, human_turns, pick

AGENT_CHAT = [
    {"role": "system", "content": "You are a senior Python engineer. Always answer with code."},
    {"role": "user", "content": "What caused the fall of the Western Roman Empire?"},
    {"role": "assistant", "content": "def decline(): return ['economy', 'invasions']"},
    {"role": "tool", "content": "Traceback (most recent call last): KeyError: 'rome'"},
    {"role": "user", "content": "and why then, not earlier?"},
]


def test_system_tool_and_assistant_text_is_not_read_by_default():
    assert human_turns(AGENT_CHAT, ConversationPolicy()) == ["What caused the fall of the Western Roman Empire?",
                                                           "and why then, not earlier?"]


def test_the_policy_names_the_roles_and_how_many_recent_turns_count():
    policy = ConversationPolicy(roles=("user", "tool"), turns=2)
    assert human_turns(AGENT_CHAT, policy) == ["Traceback (most recent call last): KeyError: 'rome'",
                                               "and why then, not earlier?"]


def test_a_chat_without_a_counted_turn_is_routed_on_its_last_message():
    assert human_turns(AGENT_CHAT[:1], ConversationPolicy()) == [AGENT_CHAT[0]["content"]]


def test_the_blend_weighs_the_nearest_earlier_turn_most_and_has_unit_length():
    first, second, latest = np.eye(3, dtype=np.float32)
    mixed = blend(np.stack([first, second, latest]), ConversationPolicy(latest_weight=0.2, decay=0.5))
    assert np.isclose(np.linalg.norm(mixed), 1.0) and mixed[1] > mixed[0] > 0 and mixed[2] > 0
    assert np.allclose(blend(np.stack([first, latest]), ConversationPolicy(latest_weight=0.0)), first)


def test_a_confident_new_route_is_a_switch_unless_the_turn_leans_on_the_conversation():
    from routers import RouteDecision

    coding = RouteDecision(["stem"], "two_stage", "coding", 0.9)
    writing = RouteDecision(["generalist"], "two_stage", "writing", 0.84)
    policy = ConversationPolicy(switch_confidence=0.6, continuation_similarity=0.4)
    assert pick(writing, coding, 2, policy, leaning=0.2).category == "writing"  # "Write a toast for my sister"
    assert pick(writing, coding, 2, policy, leaning=0.7).category == "coding"  # "shorten this"
    assert pick(replace(writing, confidence=0.5), coding, 2, policy, leaning=0.2).category == "coding"


def test_a_session_keeps_its_route_unless_the_turn_is_a_new_topic():
    from coe.conversation_routing import with_affinity
    from coe.sessions import SessionRoute
    from routers import RouteDecision

    held = SessionRoute("history", ["humanities"], "two_stage")
    drifted = RouteDecision(["generalist"], "two_stage", "chat", 0.4, reason="category 'chat'")
    kept = with_affinity(drifted, False, held)
    assert (kept.category, kept.experts) == ("history", ["humanities"]) and kept.reason.startswith("session affinity")
    assert with_affinity(drifted, True, held) is drifted and with_affinity(drifted, False, None) is drifted
