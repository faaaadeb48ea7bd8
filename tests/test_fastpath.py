"""The served router (routers/two_stage/fastpath.py inside TwoStageRouter.route) decides what scikit-learn's own
transforms and decision functions decide: a real artifact trained as `coe train` trains it (eight of the shipped
routes with their examples and user requests, a slice of MMLU, the service's encoder), routing held-out MMLU
questions and user requests one at a time and in batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from coe.core.registry import load_registry
from coe.core.routes import load_routes
from coe.core.settings import get_settings
from coe.embedder import make_embedder
from coe.train_data import MMLU, gather, labeled_sets
from routers.base import RouterContext, build_router
from routers.two_stage import fastpath, nearest
from routers.two_stage.model import Stage1, log_softmax, per_class
from routers.two_stage.train import train_two_stage

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ["coding", "writing", "chat", "math_word_problems", "math", "law", "history", "health"]  # 4 task, 4 subject
PER_ROUTE = {"train": 12, "validation": 4, "test": 40}  # MMLU questions per subject route and split


def _slice_mmlu(data) -> None:
    """The first questions of each route and split (by text), embedded as one list."""
    seen: dict[tuple[str, str], int] = {}
    kept = []
    for row in sorted(data.rows, key=lambda r: r.text):
        if row.source == MMLU:
            key = (row.label, row.split)
            if seen.get(key, 0) >= PER_ROUTE[row.split]:
                continue
            seen[key] = seen.get(key, 0) + 1
        kept.append(row)
    data.rows = kept
    data.embed_lists = [sorted({r.text for r in kept})]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(router, held-out texts, their embeddings): 160 MMLU test questions and 144 user requests."""
    settings = get_settings()
    out = tmp_path_factory.mktemp("fastpath")
    spec = yaml.safe_load((ROOT / "routes.yaml").read_text())
    spec["routes"] = [r for r in spec["routes"] if r["name"] in ROUTES]
    (out / "routes.yaml").write_text(yaml.safe_dump(spec))
    routes = load_routes(out / "routes.yaml")
    embedder = make_embedder(settings)
    data = gather([MMLU, "user-requests"], routes, settings.cache_dir)
    _slice_mmlu(data)
    train, validation, tests = labeled_sets(data, embedder.encode)
    train_two_stage(train, validation, artifacts_dir=out, level="subcategory", data=data.record,
                    encoder={"ref": settings.encoder, "id": embedder.id, "runtime": embedder.runtime_id},
                    routes={"fingerprint": routes.fingerprint(), "names": routes.names, "file": str(routes.path)})
    registry = load_registry(ROOT / "experts.yaml")  # it declares routes beyond these eight
    router = build_router("two_stage", RouterContext(registry, embedder, out, routes=routes))
    texts = tests[MMLU].texts + tests["user-requests"].texts
    texts += ["a", "Ünïcödé?  Tabs\tand\nnewlines", texts[0]]  # short, odd whitespace, a repeat within one batch
    return router, texts, embedder.encode(texts)


def _stage1_reference(model: Stage1, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
    """Stage1.predict_proba by scikit-learn: its TF-IDF transforms, sparse hstack and decision functions, and a
    kNN vote over a full sort of float64 similarities."""
    dense = log_softmax(per_class(model.dense.decision_function(embeddings)))
    lexical = per_class(model.lex.decision_function(model._lex_features(texts)))
    sims = embeddings.astype(np.float64) @ model.bank.astype(np.float64).T
    votes = np.full((len(texts), len(model.fine)), 0.1 / len(model.fine))
    for i, row in enumerate(sims):
        for j in np.argsort(-row, kind="stable")[: model.knn]:
            votes[i, model.bank_y[j]] += max(row[j], 0.0)
    knn = np.log(votes / votes.sum(axis=1, keepdims=True))
    return model._combine([dense, lexical, knn], *model.weights)


def _reference(router, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
    mixture = router.stage1
    gate = mixture.gate.lr.predict_proba(mixture.gate._features(texts, embeddings))[:, 1]
    few = mixture._spread(_stage1_reference(mixture.few, texts, embeddings), mixture.few.labels)
    exam = mixture._spread(_stage1_reference(mixture.exam, texts, embeddings), mixture.exam.labels)
    return mixture._mix(gate, few, exam)


@pytest.mark.parametrize("int8_from_rows", [nearest.MIN_ROWS, 0], ids=["as served", "every bank through the int8 index"])
def test_the_fast_path_routes_as_scikit_learn_does(served, monkeypatch, int8_from_rows):
    router, texts, embeddings = served
    monkeypatch.setattr(nearest, "MIN_ROWS", int8_from_rows)  # this artifact's banks are small
    reference = _reference(router, texts, embeddings)
    singles = [router.route([t], embeddings[i : i + 1])[0] for i, t in enumerate(texts)]
    batched = [d for s in range(0, len(texts), 64) for d in router.route(texts[s : s + 64], embeddings[s : s + 64])]
    expected = [router.labels[i] for i in reference.argmax(axis=1)]
    for decisions in (singles, batched):
        assert [d.category for d in decisions] == expected
        assert np.abs(np.array([d.confidence for d in decisions]) - reference.max(axis=1)).max() <= 1e-6
    assert np.abs(router.predict_proba(texts, embeddings) - reference).max() <= 1e-6
    assert len(set(expected)) == len(ROUTES)  # the queries exercise many routes, not one


def test_tfidf_equals_scikit_learn_exactly(served):
    """Same float32 values, in the same (sorted) order, for every vectorizer the router reads, as the router groups
    them (tfidf_group.py), for a batch and for one text at a time (the served case, with its own code path)."""
    from scipy.sparse import vstack

    router, texts, _ = served
    mixture = router.stage1
    mixture._share_tfidf()
    texts = texts + ["", "   ", "x\udfffy", "emoji 😀 ok", "中文文本 测试", "don't  re-use: x=3, (a)"]
    for vectorizer in (mixture.exam.word, mixture.exam.char, mixture.few.word, mixture.few.char, mixture.gate.word,
                       mixture.gate.head):
        theirs = vectorizer.transform(texts)
        with fastpath.inference():
            batch = fastpath.tfidf(vectorizer, texts).csr()
        singles = []
        for text in texts:
            with fastpath.inference():
                singles.append(fastpath.tfidf(vectorizer, [text]).csr())
        for ours in (batch, vstack(singles).tocsr()):
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            assert np.array_equal(ours.indptr, theirs.indptr) and np.array_equal(ours.indices, theirs.indices)
            assert np.array_equal(ours.data, theirs.data)


def test_the_int8_index_finds_the_full_sweeps_neighbours():
    """On the real exam-sized bank (MMLU train questions, the service's encoder) with MMLU test questions as
    queries (singly and 8 at a time), among them the moral scenarios that share one vector (ties: the full
    sweep decides)."""
    from coe.data.embedding_cache import cached_embeddings
    from coe.data.mmlu import load_mmlu

    settings = get_settings()
    questions = load_mmlu(settings.cache_dir)
    vectors = cached_embeddings(make_embedder(settings), [q.question for q in questions], settings.cache_dir)
    bank = np.ascontiguousarray(vectors[[q.split == "train" for q in questions]], dtype=np.float32)
    test = [i for i, q in enumerate(questions) if q.split == "test"]
    picked = test[:: len(test) // 300]
    queries = vectors[picked].astype(np.float32)
    want_idx, want_sims = nearest.full(bank, queries, 10)
    ranked = -np.sort(-(queries @ bank.T), axis=1)
    ties = ranked[:, 9] - ranked[:, 10] < nearest.GAP  # the 10th and 11th neighbours are (nearly) the same vector
    moral = np.array([questions[i].subject == "moral scenarios" for i in picked])
    assert len(bank) >= 8000 and ties[moral].all() and moral.sum() >= 5 and ties.mean() < 0.2
    with fastpath.inference():
        singles = [nearest.nearest(bank, q[None], 10) for q in queries]
        step = nearest.MAX_QUERIES
        small = [nearest.nearest(bank, queries[s : s + step], 10) for s in range(0, len(queries), step)]
    for found in (singles, small):
        got_idx, got_sims = np.vstack([i for i, _ in found]), np.vstack([s for _, s in found])
        for row in np.nonzero(~ties)[0]:  # tied rows: which of the equal vectors is BLAS's and argpartition's choice
            assert set(got_idx[row]) == set(want_idx[row])
        assert np.abs(np.sort(got_sims, axis=1) - np.sort(want_sims, axis=1)).max() <= 1e-6


def test_grouped_tfidf_for_other_vectorizer_settings():
    """Vectorizers beyond the router's: grouped or alone, char_wb with words looked up ahead, char n-grams, binary
    and no idf, a vocabulary given in its own order (alone only) and an unhashable setting (alone)."""
    from scipy.sparse import vstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    train = ["The cat sat on the mat.", "A dog ate my homework!", "Cats and dogs: friends?", "the the THE cat",
             "Ünïcödé words, café au lait", "x=3, y=4; so x+y is 7"]
    texts = train + ["cat dog", "", "  mat\tmat\nmat ", "unknown zebra", "café? CAT!"]
    word_a = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32).fit(train)
    word_b = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, dtype=np.float32).fit(train)
    char_a = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float32).fit(train)
    char_b = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2,
                             dtype=np.float32).fit(train)
    char_c = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), binary=True, use_idf=False).fit(train)
    chars = TfidfVectorizer(analyzer="char", ngram_range=(1, 3)).fit(train)
    fixed = TfidfVectorizer(vocabulary={"the": 0, "cat": 1, "dog": 2}).fit(train)
    listed = TfidfVectorizer(stop_words=["the"]).fit(train)
    fastpath.share([word_a, word_b])
    fastpath.share([char_a, char_b, char_c, chars], words_from=(word_a,))
    with pytest.raises(ValueError, match="string order"):
        fastpath.share([fixed, TfidfVectorizer().fit(train)])
    group = fastpath._entry(char_a)[1]
    assert group is fastpath._entry(char_b)[1] and "cat" in group.words  # grouped; word_a's words looked up ahead
    for vectorizer in (word_a, word_b, char_a, char_b, char_c, chars, fixed, listed):
        theirs = vectorizer.transform(texts)
        with fastpath.inference():
            batch = fastpath.tfidf(vectorizer, texts).csr()
        singles = vstack([fastpath.tfidf(vectorizer, [text]).csr() for text in texts]).tocsr()
        for ours in (batch, singles):
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            assert np.array_equal(ours.indptr, theirs.indptr) and np.array_equal(ours.indices, theirs.indices)
            assert np.array_equal(ours.data, theirs.data)
