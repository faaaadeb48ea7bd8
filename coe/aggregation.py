"""The prompt that turns k expert answers into one (Symbolic-MoE's aggregation step)."""

from __future__ import annotations

AGGREGATION_INSTRUCTIONS = (
    "You are given a question and candidate answers written by different experts. "
    "Some candidates may be wrong. Compare them, keep what is correct, fix what is not, "
    "and write one final answer to the question. Do not mention the candidates."
)


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""


def aggregation_messages(messages: list[dict], answers: list[tuple[str, str]]) -> list[dict]:
    """A single user turn holding the question and every (expert, answer) candidate."""
    blocks = [f"Question:\n{last_user_text(messages)}"]
    for i, (_expert, text) in enumerate(answers, 1):
        blocks.append(f"Candidate answer {i}:\n{text.strip()}")
    blocks.append("Final answer:")
    return [{"role": "user", "content": AGGREGATION_INSTRUCTIONS + "\n\n" + "\n\n".join(blocks)}]
