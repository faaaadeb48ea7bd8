"""The multi-turn routing set: conversations of 2-4 human turns over the shipped routes, labelled per turn.

Each conversation opens with a held-out user request (the test split of coe/data/user_requests.jsonl, never
trained on); each later turn is either an elliptical follow-up that stays on the topic (written for this set,
coe/data/conversation_templates.py) or a genuine switch to another held-out request of another route. Nothing
comes from MMLU or any training data (tests/test_conversations_data.py checks). Built by `build()`, seeded and
deterministic; the shipped file is its output (`python -m coe.data.conversations` rewrites it).

Conversations are split validation / test by their first request (a third to validation): thresholds are
calibrated on validation only, and the two halves use disjoint follow-up wordings.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coe.data import conversation_templates as templates
from coe.data.labelled import USER_REQUESTS, read_labelled

CONVERSATIONS = Path(__file__).resolve().parent / "conversations.jsonl"
SEED = 26
SWITCH_P = 0.3
FOLLOW_UP_P = 0.5  # of the follow-ups, the share worded for the route (the rest are generic: "why?")
TurnKind = Literal["first", "follow-up", "switch"]


@dataclass(frozen=True)
class Turn:
    text: str
    label: str  # the route the turn should reach: the conversation's topic at this turn
    kind: TurnKind


@dataclass(frozen=True)
class Conversation:
    id: str
    split: Literal["validation", "test"]
    turns: list[Turn]

    def messages(self, answer: str = "") -> list[dict]:
        """The chat a client would send at the last turn: human turns, with `answer` as each assistant turn between."""
        out: list[dict] = []
        for turn in self.turns:
            if out and answer:
                out.append({"role": "assistant", "content": answer})
            out.append({"role": "user", "content": turn.text})
        return out


def split_of(text: str) -> Literal["validation", "test"]:
    return "validation" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 3 == 0 else "test"


def build(seed: int = SEED) -> list[Conversation]:
    """One conversation per held-out user request, in file order."""
    rng = random.Random(seed)
    rows = [r for r in read_labelled(USER_REQUESTS) if r.split == "test"]
    by_split = {s: [r for r in rows if split_of(r.text) == s] for s in ("validation", "test")}
    out = []
    for n, first in enumerate(rows):
        split = split_of(first.text)
        turns = [Turn(first.text, first.label, "first")]
        for _ in range(rng.choice((1, 1, 2, 3))):
            topic = turns[-1].label
            if rng.random() < SWITCH_P:
                other = rng.choice([r for r in by_split[split] if r.label != topic])
                turns.append(Turn(rng.choice(templates.SWITCH_LEADS) + other.text, other.label, "switch"))
                continue
            worded = rng.random() < FOLLOW_UP_P
            choices = templates.pool(templates.BY_ROUTE[topic] if worded else templates.GENERIC, split)
            used = {t.text for t in turns}
            turns.append(Turn(rng.choice([c for c in choices if c not in used]), topic, "follow-up"))
        out.append(Conversation(f"conv-{n:04d}", split, turns))
    return out


def to_jsonl(conversations: list[Conversation]) -> str:
    return "".join(json.dumps({"id": c.id, "split": c.split, "turns": [t.__dict__ for t in c.turns]}) + "\n"
                   for c in conversations)


def load(path: Path = CONVERSATIONS) -> list[Conversation]:
    out = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        out.append(Conversation(obj["id"], obj["split"], [Turn(**t) for t in obj["turns"]]))
    return out


if __name__ == "__main__":
    CONVERSATIONS.write_text(to_jsonl(build()))
