"""The multi-turn part of `coe bench routing`: per-turn route accuracy on the conversation set
(coe/data/conversations.py) for the last message alone (the router before conversations) and for the
context-aware router (coe/conversation_routing.py), first turns, follow-ups and topic switches apart.

The blend weight and the switch threshold are chosen on the set's validation conversations only (best mean of
follow-up and switch accuracy) and reported on the test conversations, with the shipped defaults beside them. Latency is
the service's path for the 4th turn of a 4-turn chat: the new turn embedded (the earlier ones are in the service's
embedding cache, coe/embed_batcher.py), then the router, one chat at a time.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np

KINDS = ("first", "follow-up", "switch")
WEIGHTS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8)
CONTINUATION = tuple(round(0.3 + 0.05 * i, 2) for i in range(6)) + (1.0,)  # 1.0: no continuation phrase counts
THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(15))  # 1.0: never a new topic


def _cases(conversations):
    """(conversation, turn index) for every turn: the chat as it stood when that turn was sent."""
    return [(c, i) for c in conversations for i in range(len(c.turns))]


def _score(cases, pred: list[str | None]) -> dict:
    out = {}
    for kind in KINDS:
        hits = [p == c.turns[i].label for (c, i), p in zip(cases, pred) if c.turns[i].kind == kind]
        out[kind] = {"n": len(hits), "accuracy": round(float(np.mean(hits)), 4) if hits else None}
    later = [p == c.turns[i].label for (c, i), p in zip(cases, pred) if i > 0]
    out["later_turns"] = {"n": len(later), "accuracy": round(float(np.mean(later)), 4)}
    kept = [p == c.turns[i].label for n, ((c, i), p) in enumerate(zip(cases, pred))  # the turn before routed right
            if c.turns[i].kind == "follow-up" and pred[n - 1] == c.turns[i - 1].label]
    out["follow-up_after_a_right_turn"] = {"n": len(kept), "accuracy": round(float(np.mean(kept)), 4) if kept else None}
    return out


def _in_context(router, cases, vec, policy):
    """(case index, counted turns, the router's decision on the conversation) for every later turn, in one batch."""
    from coe.conversation_routing import blend, conversation_text

    many = [n for n, (_, i) in enumerate(cases) if i > 0]
    turns = [[t.text for t in cases[n][0].turns[max(0, cases[n][1] + 1 - policy.turns):cases[n][1] + 1]] for n in many]
    vectors = np.stack([blend(np.stack([vec[t] for t in ts]), policy) for ts in turns])
    return many, turns, router.route([conversation_text(ts) for ts in turns], vectors)


def _predictions(router, cases, vec, policy, alone, leaning, in_context=None) -> list[str | None]:
    """The context-aware router's category per case, with the service's rule (coe/conversation_routing.py);
    `leaning`: each case's continuation score."""
    from coe.conversation_routing import pick

    many, turns, decisions = in_context or _in_context(router, cases, vec, policy)
    pred = [d.category for d in alone]
    for n, ts, d in zip(many, turns, decisions):
        pred[n] = pick(alone[n], d, len(ts), policy, leaning[n]).category
    return pred


def calibrate(router, cases, vec, alone, leaning, base):
    """The policy (blend weight, switch threshold, continuation similarity) with the best mean of follow-up and switch accuracy on these cases
    (both matter: staying on topic and noticing a new one), and the grid."""
    grid = []
    for w in WEIGHTS:
        weighted = replace(base, latest_weight=w)
        in_context = _in_context(router, cases, vec, weighted)
        for th in THRESHOLDS:
            for cs in CONTINUATION:
                policy = replace(weighted, switch_confidence=th, continuation_similarity=cs)
                pred = _predictions(router, cases, vec, policy, alone, leaning, in_context)
                grid.append({"latest_weight": w, "switch_confidence": th, "continuation_similarity": cs,
                             "accuracy": float(np.mean(
                                 [np.mean([p == c.turns[i].label for (c, i), p in zip(cases, pred) if c.turns[i].kind == kind])
                                  for kind in ("follow-up", "switch")]))})
    best = max(grid, key=lambda g: round(g["accuracy"], 6))
    return replace(base, **{k: v for k, v in best.items() if k != "accuracy"}), grid


def time_four_turn_chats(router, embed: Callable[[list[str]], np.ndarray], conversations, policy, cues,
                         n: int = 100) -> dict:
    """p50/p99 of routing the 4th turn of 4-turn chats as the service does (embed the new turn, blend, route), and
    of routing that turn alone (the last message), interleaved on the same chats so machine load hits both alike."""
    from coe.conversation_routing import decide

    chats = [c for c in conversations if len(c.turns) == 4][:n]
    cached = {c.id: embed([t.text for t in c.turns[:3]]) for c in chats}
    lat: dict[str, list[float]] = {"context": [], "last_message": []}
    warm_up = chats[:5]  # the first five (or fewer) twice
    for c in warm_up + chats:
        t0 = time.perf_counter()
        vectors = np.concatenate([cached[c.id], embed([c.turns[3].text])])
        decide(router, [t.text for t in c.turns], vectors, 1, policy, cues)
        t1 = time.perf_counter()
        router.route([c.turns[3].text], embed([c.turns[3].text]))
        lat["context"].append((t1 - t0) * 1000)
        lat["last_message"].append((time.perf_counter() - t1) * 1000)
    return {"n": len(chats), **{f"{k}_p{q}_ms": round(float(np.percentile(v[len(warm_up):], q)), 2)
                                for k, v in lat.items() for q in (50, 99)}}


def bench_conversations(router, embed: Callable[[list[str]], np.ndarray], timing: bool = True,
                        log: Callable[[str], None] = print, n_chats: int = 100,
                        embed_set: Callable[[list[str]], np.ndarray] | None = None) -> dict:
    """Per-turn accuracy, last message alone vs the conversation, on the set's test part; policy from validation.
    `embed` is the service's path (timed); `embed_set` (default `embed`) embeds the whole set once, and may read a
    cache of the same encoder's vectors; `n_chats` 4-turn chats are timed."""
    from coe.conversation_cues import CONTINUATIONS
    from coe.conversation_routing import ConversationPolicy, continuation
    from coe.data.conversations import load

    conversations = load()
    texts = sorted({t.text for c in conversations for t in c.turns})
    vec = dict(zip(texts, (embed_set or embed)(texts)))
    cues = embed(list(CONTINUATIONS))
    shipped = ConversationPolicy()
    parts = {s: [c for c in conversations if c.split == s] for s in ("validation", "test")}
    cases = {s: _cases(cs) for s, cs in parts.items()}
    alone = {s: router.route([c.turns[i].text for c, i in cs], np.stack([vec[c.turns[i].text] for c, i in cs]))
             for s, cs in cases.items()}
    leaning = {s: [continuation(vec[c.turns[i].text], cues) for c, i in cs] for s, cs in cases.items()}
    chosen, grid = calibrate(router, cases["validation"], vec, alone["validation"], leaning["validation"], shipped)
    out = {"n_conversations": {s: len(cs) for s, cs in parts.items()},
           "calibrated": {"latest_weight": chosen.latest_weight, "switch_confidence": chosen.switch_confidence,
                          "continuation_similarity": chosen.continuation_similarity,
                          "validation_mean_follow_up_switch": round(max(g["accuracy"] for g in grid), 4)},
           "shipped": {"latest_weight": shipped.latest_weight, "switch_confidence": shipped.switch_confidence,
                       "continuation_similarity": shipped.continuation_similarity,
                       "roles": list(shipped.roles), "turns": shipped.turns}}
    for split in ("validation", "test"):
        out[split] = {
            "last_message": _score(cases[split], [d.category for d in alone[split]]),
            "context_calibrated": _score(cases[split], _predictions(router, cases[split], vec, chosen, alone[split],
                                                                    leaning[split])),
            "context_shipped": _score(cases[split], _predictions(router, cases[split], vec, shipped, alone[split],
                                                                 leaning[split])),
        }
    if timing:
        out["latency_4_turns"] = time_four_turn_chats(router, embed, parts["test"], shipped, cues, n_chats)
    t = out["test"]
    log(f"{'  conversations (test)':28s} follow-ups {t['last_message']['follow-up']['accuracy']:.3f} -> "
        f"{t['context_shipped']['follow-up']['accuracy']:.3f}, switches {t['last_message']['switch']['accuracy']:.3f} -> "
        f"{t['context_shipped']['switch']['accuracy']:.3f}, first {t['last_message']['first']['accuracy']:.3f} -> "
        f"{t['context_shipped']['first']['accuracy']:.3f}")
    return out


def markdown_section(res: dict) -> list[str]:
    """The report's table: per-turn accuracy on the test conversations, last message alone vs the conversation."""
    conv = res.get("conversations")
    if not conv:
        return []
    t, cal, shipped = conv["test"], conv["calibrated"], conv["shipped"]
    lines = ["", "## Conversations (the service's router, per turn, test conversations)", "",
             f"{conv['n_conversations']['test']} test conversations (coe/data/conversations.jsonl; "
             f"{conv['n_conversations']['validation']} validation conversations chose the policy). Shipped policy: "
             f"roles {shipped['roles']}, last {shipped['turns']} turns, latest weight {shipped['latest_weight']}, switch "
             f"confidence {shipped['switch_confidence']}, continuation similarity {shipped['continuation_similarity']}; "
             f"calibrated on validation here: latest weight {cal['latest_weight']}, switch confidence "
             f"{cal['switch_confidence']}, continuation similarity {cal['continuation_similarity']}.", "",
             "| turns | n | last message only | conversation (shipped policy) | conversation (calibrated here) |",
             "|---|---|---|---|---|"]
    for kind in ("first", "follow-up", "switch", "later_turns", "follow-up_after_a_right_turn"):
        cells = [t[m][kind] for m in ("last_message", "context_shipped", "context_calibrated")]
        if kind == "follow-up_after_a_right_turn":  # each router its own turns: the n differs
            lines.append(f"| follow-up, the turn before routed right | - | "
                         + " | ".join(f"{c['accuracy']} (n={c['n']})" for c in cells) + " |")
        else:
            lines.append(f"| {kind.replace('_', ' ')} | {cells[0]['n']} | " + " | ".join(str(c["accuracy"]) for c in cells) + " |")
    if conv.get("latency_4_turns"):
        lat = conv["latency_4_turns"]
        lines += ["", f"Routing the 4th turn of {lat['n']} 4-turn chats (new turn embedded, earlier turns cached): p50 "
                      f"{lat['context_p50_ms']} ms, p99 {lat['context_p99_ms']} ms; that turn alone: p50 "
                      f"{lat['last_message_p50_ms']} ms, p99 {lat['last_message_p99_ms']} ms (interleaved, same run)."]
    return lines + [""]
