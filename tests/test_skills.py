"""Skills router (Symbolic-MoE): profile arithmetic, recruiting, seeded sampling, letters, and k=3 end to end."""

from __future__ import annotations

import numpy as np
import pytest

from coe.data.letters import extract_letter
from routers.skills import (
    choice_probabilities, choose, global_weights, load_vocabulary, local_scores, parse_keywords, prune_batch,
    recruit_weights, vocabulary_key,
)
from routers.skills_profile import build_profile, load_profile, save_profile, skill_matrix, skill_values

RECORDS = [
    {"id": "q1", "subject": "college mathematics", "subcategory": "math", "category": "STEM",
     "skills": ["algebra", "calculus"], "gold": "A", "answers": {"x": "A", "y": "B"}},
    {"id": "q2", "subject": "college mathematics", "subcategory": "math", "category": "STEM",
     "skills": ["algebra"], "gold": "C", "answers": {"x": "C", "y": None}},
    {"id": "q3", "subject": "prehistory", "subcategory": "history", "category": "humanities",
     "skills": ["prehistory", "algebra"], "gold": "D", "answers": {"x": "B", "y": "D"}},
]


# --------------------------------------------------------------------------- profile arithmetic


def test_profile_counts_and_skill_values(tmp_path):
    prof = build_profile(RECORDS, ["x", "y"], {"data": "fixture"})
    x, y = prof["experts"]["x"], prof["experts"]["y"]
    assert (x["correct"], x["total"], x["unparsed"]) == (2, 3, 0)
    assert (y["correct"], y["total"], y["unparsed"]) == (1, 3, 1)  # unparseable counts as wrong, and separately
    assert x["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert x["categories"] == {"math": {"correct": 2, "total": 2}, "history": {"correct": 0, "total": 1}}
    assert y["groups"]["humanities"] == {"correct": 1, "total": 1}
    assert x["skills"]["algebra"] == {"correct": 2, "total": 3}
    assert skill_values(x) == {"algebra": 1, "calculus": 1, "prehistory": -1}  # +1 right, -1 wrong
    assert skill_values(y) == {"algebra": -1, "calculus": -1, "prehistory": 1}
    m = skill_matrix(prof, ["x", "y"], ["prehistory", "algebra", "never seen"])
    assert m.tolist() == [[-1, 1, 0], [1, -1, 0]]
    path = save_profile(prof, tmp_path / "profile.json")
    assert load_profile(path)["experts"]["x"]["categories"]["math"]["total"] == 2


def test_global_weights_follow_the_paper():
    # shift by -min+1 ([-2, 0, 3] -> [1, 3, 6]), raise to 1/0.5, normalise
    assert global_weights(np.array([-2.0, 0.0, 3.0])).tolist() == pytest.approx([1 / 46, 9 / 46, 36 / 46])
    assert global_weights(np.array([1.0, 3.0])).tolist() == pytest.approx([0.1, 0.9])


def test_recruit_weights_keep_positive_local_scores():
    g = np.array([0.5, 0.25, 0.25])
    w = recruit_weights(np.array([4.0, -3.0, 2.0]), g)
    assert w[1] == 0 and w[0] == pytest.approx(2 / 2.5)
    w = recruit_weights(np.array([-1.0, -3.0, -2.0]), g)  # none positive: shifted, nobody excluded
    assert (w > 0).all() and np.argmax(w) == 0
    m = np.array([[1, 2, 3], [-1, 0, 5]])
    assert local_scores(m, [0, 2]).tolist() == [4, 4]


def test_choose_top_and_sampling():
    w = np.array([0.6, 0.3, 0.1, 0.0])
    assert choose(w, 2, "top", np.random.default_rng(0)) == [0, 1]
    assert choose(w, 5, "top", np.random.default_rng(0)) == [0, 1, 2, 0, 1]  # never one with no weight: repeats
    draws = choose(w, 400, "sample", np.random.default_rng(1))
    assert 3 not in draws and draws.count(0) > draws.count(1) > draws.count(2)
    assert choice_probabilities(w, 1.0).tolist() == pytest.approx([0.6, 0.3, 0.1, 0.0])
    assert choice_probabilities(w, 0.01)[0] > 0.99


def test_batch_pruning_replaces_rare_experts():
    choices = [[0, 0, 1]] * 30 + [[2, 0, 1]]  # expert 2 holds 1 of 93 slots
    weights = [np.array([0.5, 0.4, 0.1])] * 31
    pruned = prune_batch(choices, weights, np.random.default_rng(0), 0.05)
    assert 2 not in {i for row in pruned for i in row}
    assert pruned[:30] == choices[:30]


def test_vocabulary_is_large_and_described():
    vocab = load_vocabulary()
    assert len(vocab) >= 100
    assert all(len(d) > 10 for d in vocab.values())
    for needed in ("programming", "arithmetic", "writing", "jurisprudence", "virology", "econometrics"):
        assert needed in vocab


def test_keyword_parsing():
    assert parse_keywords("1. Algebra\n2. Linear equations\n3. Arithmetic") == ["algebra", "linear equations", "arithmetic"]
    assert parse_keywords("Skills: organic chemistry, reaction kinetics; thermodynamics.") == [
        "organic chemistry", "reaction kinetics", "thermodynamics"]


# --------------------------------------------------------------------------- the router on real embeddings


@pytest.fixture(scope="module")
def embedder():
    from coe.embedder import make_embedder
    from coe.core.settings import get_settings

    return make_embedder(get_settings())  # the encoder `coe serve` routes with (int8 ONNX, truncated)


@pytest.fixture(scope="module")
def registry(test_experts_file):
    from coe.core.registry import load_registry

    return load_registry(test_experts_file)


def _profile_favouring(stem_skills: list[str], hum_skills: list[str], good: int = 18, bad: int = 4, mid: int = 9) -> dict:
    """stem is right on maths, humanities on history, both wrong elsewhere; generalist middling everywhere."""
    vocab = load_vocabulary()
    experts = {}
    for name, strong in (("stem", stem_skills), ("humanities", hum_skills), ("generalist", [])):
        skills = {}
        for s in vocab:
            if s in strong:
                skills[s] = {"correct": good, "total": 20}
            else:
                skills[s] = {"correct": bad if name != "generalist" else mid, "total": 20}
        experts[name] = {"categories": {}, "skills": skills, "correct": 0, "total": 100, "accuracy": 0.3}
    return {"version": 1, "n_questions": 100, "experts": experts,
            "aggregators": {"best": "generalist", "scores": {}}}


def _router(registry, embedder, tmp_path, profile: dict | None, **options):
    from routers.base import RouterContext
    from routers.skills import SkillsRouter

    if profile is not None:
        save_profile(profile, tmp_path / "profile.json")
    return SkillsRouter(RouterContext(registry, embedder, tmp_path, seed=options.pop("seed", 0), options=options))


MATH = ["arithmetic", "algebra", "calculus", "linear algebra", "word problems", "number theory", "geometry",
        "abstract algebra", "probability", "statistics", "trigonometry", "discrete mathematics"]
HISTORY = ["world history", "european history", "ancient history", "united states history", "prehistory",
           "historical sources"]

QUERIES = ["Solve for x: 3x + 5 = 20.", "Which emperor founded the Roman Empire after the civil wars?"]


def test_recruits_experts_whose_profiles_match_the_query_skills(registry, embedder, tmp_path):
    router = _router(registry, embedder, tmp_path, _profile_favouring(MATH, HISTORY), mode="top")
    vecs = embedder.encode(QUERIES)
    math, history = router.route(QUERIES, vecs, k=1)
    assert math.experts == ["stem"], math.reason
    assert history.experts == ["humanities"], history.reason
    assert set(router.experts) == {"stem", "humanities", "generalist"}  # astrologer: not profiled; aggregator: only merges
    assert math.aggregator == "generalist"  # the measured aggregator travels with the decision
    assert "profile profile.json" in math.reason and "not profiled" in math.reason
    # sampling k=5: the matching specialist dominates
    router_s = _router(registry, embedder, tmp_path / "s", _profile_favouring(MATH, HISTORY), mode="sample", seed=3)
    d = router_s.route([QUERIES[0]], vecs[:1], k=5)[0]
    assert len(d.experts) == 5 and d.experts.count("stem") >= 3


def test_seeded_sampling_is_reproducible(registry, embedder, tmp_path):
    # everyone is better than chance on maths, stem most: sampling spreads over all three
    rates = {"stem": 14, "humanities": 13, "generalist": 12}
    prof = {"version": 1, "n_questions": 20, "experts": {
        n: {"categories": {}, "total": 20, "skills": {s: {"correct": c, "total": 20} for s in MATH}}
        for n, c in rates.items()}}
    texts = QUERIES + ["What is the derivative of x squared?", "Compute 17 + 25."]
    vecs = embedder.encode(texts)
    a = _router(registry, embedder, tmp_path / "a", prof, seed=7).route(texts, vecs, k=4)
    b = _router(registry, embedder, tmp_path / "b", prof, seed=7).route(texts, vecs, k=4)
    assert [d.experts for d in a] == [d.experts for d in b]
    # a query recruits the same experts alone or inside a batch
    alone = _router(registry, embedder, tmp_path / "c", prof, seed=7).route(texts[2:3], vecs[2:3], k=4)
    assert alone[0].experts == a[2].experts
    seeds = {tuple(e for d in _router(registry, embedder, tmp_path / f"s{s}", prof, seed=s).route(texts, vecs, k=4)
                   for e in d.experts) for s in range(4)}
    assert len(seeds) > 1  # the seed matters


def test_without_a_profile_it_uses_declared_skills(registry, embedder, tmp_path):
    router = _router(registry, embedder, tmp_path, None, mode="top")
    d = router.route([QUERIES[0]], embedder.encode([QUERIES[0]]), k=2)[0]
    assert "no profile at" in d.reason and "declared in experts.yaml" in d.reason
    assert d.experts == ["stem", "stem"]  # only stem is closer than average to maths: it answers twice
    assert d.aggregator is None


def test_vocabulary_vectors_are_shared_per_encoder_and_vocabulary(registry, embedder, tmp_path):
    """Routers of one process share the embedded vocabulary, keyed by the encoder (weights id, runtime and truncation,
    class, batch size) and the vocabulary's text: an edited vocabulary or another encoder gets its own vectors, never
    stale ones."""
    import yaml

    from coe.embedder import Embedder
    from routers.skills import VOCAB_FILE

    first = _router(registry, embedder, tmp_path / "a", None)
    again = _router(registry, embedder, tmp_path / "b", None)
    assert again.index.vectors is first.index.vectors and not first.index.vectors.flags.writeable
    texts = [f"{n}: {d}" for n, d in load_vocabulary().items()]
    assert np.array_equal(first.index.vectors, embedder.encode(texts))  # what embedding it now gives
    # the same names, one description edited: new vectors, and the edited skill's row is the edited text's
    vocab = load_vocabulary()
    name = first.index.names[0]
    vocab[name] = "the mathematics of cooking pasta"
    edited = tmp_path / "vocab.yaml"
    edited.write_text(yaml.safe_dump({"skills": vocab}, sort_keys=False))
    other = _router(registry, embedder, tmp_path / "c", None, vocab=str(edited))
    assert other.index.names == first.index.names and other.index.vectors is not first.index.vectors
    assert np.array_equal(other.index.vectors, embedder.encode([f"{n}: {d}" for n, d in vocab.items()]))
    assert float(other.index.vectors[0] @ first.index.vectors[0]) < 0.9  # the edited skill moved
    assert vocabulary_key(vocab, embedder) != vocabulary_key(load_vocabulary(VOCAB_FILE), embedder)
    # the same weights under another runtime or truncation is another encoder
    full = Embedder(embedder.ref, runtime=embedder.runtime, cache_dir=embedder.cache_dir)  # no truncation
    assert full.id == embedder.id and full.runtime_id != embedder.runtime_id
    assert vocabulary_key(vocab, full) != vocabulary_key(vocab, embedder)
    untruncated = _router(registry, full, tmp_path / "d", None)
    assert untruncated.index.vectors is not first.index.vectors
    assert np.array_equal(untruncated.index.vectors, full.encode(texts))

    class StandIn:  # the same names under another class: its own entry
        id, runtime_id, batch_size = embedder.id, embedder.runtime_id, embedder.batch_size

        def encode(self, texts):
            return np.ones((len(texts), 4), dtype=np.float32) / 2

    assert vocabulary_key(vocab, StandIn()) != vocabulary_key(vocab, embedder)
    assert vocabulary_key(vocab, object()) is None  # no id: not shared


def test_keyword_llm_skills_map_to_the_vocabulary_with_mock_llm(registry, embedder, tmp_path):
    from routers.base import RouterContext
    from routers.skills import SkillsRouter

    seen = []

    def fake_llm(expert, chats, max_tokens):  # stands in for the keyword expert, served through the queue
        seen.extend(chats)
        return ["1. Solving linear equations\n2. Algebraic manipulation"] * len(chats)

    save_profile(_profile_favouring(MATH, HISTORY), tmp_path / "profile.json")
    router = SkillsRouter(RouterContext(registry, embedder, tmp_path, options={"skill_source": "keywords", "mode": "top"},
                                        generate=fake_llm))
    d = router.route([QUERIES[1]], embedder.encode([QUERIES[1]]), k=1)[0]  # a history query, but the LLM says algebra
    assert "Skills" in seen[0][0]["content"] and QUERIES[1] in seen[0][0]["content"]
    assert d.category == "algebra" and d.experts == ["stem"], d.reason


# --------------------------------------------------------------------------- letters


@pytest.mark.parametrize("text, letter", [
    ("B", "B"),
    ("C. mobilization for war in 1", "C"),
    ("A. Fallacy of accident\n\n", "A"),
    ("(D) 42", "D"),
    ("B) Paris", "B"),
    ("**C**", "C"),
    ("[A]", "A"),
    ("The answer is B.", "B"),
    ("The correct answer is (C) Paris", "C"),
    ("Answer: D. Mitochondria", "D"),
    ("Final answer: **A**", "A"),
    ("I think option C is right.", "C"),
    ("The correct option is D because", "D"),
    ("A cell is the basic unit of life", None),
    ("The term used to describe the \"pure", None),
    ("A or B", None),
    ("", None),
    ("answer: c", "C"),
    ("Mitochondria", "C"),  # the text of exactly one choice
    ("It would be C here", "C"),
])
def test_extract_letter(text, letter):
    assert extract_letter(text, ["Nucleus", "Ribosome", "Mitochondria", "Golgi apparatus"]) == letter


# --------------------------------------------------------------------------- end to end


def test_k3_skills_router_through_the_server(client):
    resp = client.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "What is 12 times 11? Answer with a number."}],
        max_tokens=6, seed=1, extra_body={"coe": {"k": 3, "router": "skills"}})
    info = resp.model_extra["coe"]
    assert info["router"] == "skills"
    assert len(info["experts"]) == 3
    assert len(info["answers"]) == 3 and all("content" in a for a in info["answers"])
    assert info["aggregator"] == "aggregator"
    assert "no profile at" in info["reason"]  # the test server has no profile: declared skills
    assert resp.choices[0].message.content is not None
    assert resp.usage.completion_tokens >= sum(a["completion_tokens"] for a in info["answers"])
    # server-side cap: k above settings.max_k (5) is cut to 5
    capped = client.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "Name a prime number."}], max_tokens=2,
        extra_body={"coe": {"k": 50, "router": "skills"}})
    assert len(capped.model_extra["coe"]["experts"]) == 5


def test_concurrent_keyword_routed_requests_do_not_starve_the_threads_they_wait_on(keyword_server):
    """More requests at once than the default thread pool has threads: each routing thread waits on keyword jobs that
    need the worker's and the encoder's threads from that pool, so routing runs in a pool of its own and all are
    answered (with routing in the default pool, none was: every client timed out)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    n = min(32, (os.cpu_count() or 1) + 4) + 2  # the default pool's size, and two more
    client = OpenAI(base_url=keyword_server.v1, api_key="unused", max_retries=0, timeout=120)

    def ask(i: int):
        return client.chat.completions.create(
            model="coe", messages=[{"role": "user", "content": f"What is {i} plus {i}?"}], max_tokens=2,
            extra_body={"coe": {"router": "skills"}})

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(ask, range(n)))
    assert [a.model_extra["coe"]["router"] for a in answers] == ["skills"] * n
    assert all("skills [" in a.model_extra["coe"]["reason"] for a in answers)
