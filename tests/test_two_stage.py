"""Two-stage router: training, artifact round trip and mismatch errors, tau fallback, stage-2 map."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from coe.embedder import Embedder, make_embedder
from coe.core.registry import load_registry, parse_registry
from coe.core.settings import get_settings
from coe.data.mmlu import by_split, load_mmlu
from routers.base import RouterContext, build_router
from routers.two_stage import ArtifactError, calibrate_tau, train_two_stage
from routers.two_stage.artifact import load_artifact, resolve_version
from routers.two_stage.stage2 import build_map, declared_scores, load_scores
from routers.two_stage.train import LabeledSet

ROOT = Path(__file__).resolve().parent.parent
SUBCATS = ["math", "law", "health", "history"]


@pytest.fixture(scope="module")
def embedder():
    """The encoder `coe serve` and `coe train` build (int8 ONNX, truncated), so the artifacts are the service's."""
    return make_embedder(get_settings())


@pytest.fixture(scope="module")
def registry():
    return load_registry(ROOT / "experts.yaml")


@pytest.fixture(scope="module")
def data(embedder):
    """A tiny slice of real MMLU: 4 subcategories, 25 train and 10 validation questions each."""
    qs = load_mmlu(get_settings().cache_dir)

    def pick(split, n):
        out = []
        for sub in SUBCATS:
            out += sorted((q for q in by_split(qs, split) if q.subcategory == sub), key=lambda q: q.id)[:n]
        return out

    def labeled(items):
        texts = [q.question for q in items]
        return LabeledSet(texts, embedder.encode(texts), [q.subcategory for q in items], [q.subject for q in items])

    return labeled(pick("train", 25)), labeled(pick("validation", 10))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, data, embedder):
    out = tmp_path_factory.mktemp("artifacts")
    train, val = data
    train_two_stage(train, val, artifacts_dir=out, encoder={"ref": embedder.ref, "id": embedder.id, "runtime": embedder.runtime_id},
                    level="subcategory", data={"name": "mmlu-slice", "hash": "test"}, tau_target="accuracy:0.9")
    return out


def test_artifact_round_trip(artifacts, data, embedder, registry):
    path = resolve_version(artifacts)
    art = load_artifact(artifacts, encoder_id=embedder.id)
    m = art.manifest
    assert m["labels"] == sorted(SUBCATS) and m["encoder"]["id"] == embedder.id and m["level"] == "subcategory"
    assert {"classifier", "tau", "data", "metrics", "map", "calibration"} <= set(m)
    router = build_router("two_stage", RouterContext(registry, embedder, artifacts))
    train, val = data
    direct = art.stage1.predict_proba(val.texts, val.embeddings)
    assert np.allclose(router.predict_proba(val.texts, val.embeddings), direct)
    decisions = router.route(val.texts, val.embeddings)
    acc = np.mean([d.category == t for d, t in zip(decisions, val.labels)])
    assert acc > 0.7
    d = decisions[0]
    assert d.router == "two_stage" and len(d.top_categories) == 3 and 0 < d.confidence <= 1
    assert d.experts and all(e in registry.experts for e in d.experts)
    assert path.name in (artifacts / "two_stage" / "LATEST").read_text()
    assert path.name in router.source and "declared categories" in router.source  # no profile.json: said at start-up


def test_stage1_is_loaded_once_per_file_version(artifacts, embedder):
    """A registry change rebuilds the router; its stage 1 comes from memory unless the file changed."""
    first = load_artifact(artifacts, encoder_id=embedder.id).stage1
    assert load_artifact(artifacts, encoder_id=embedder.id).stage1 is first
    stage1 = resolve_version(artifacts) / "stage1.joblib"
    stage1.write_bytes(stage1.read_bytes())  # the same bytes, a new file version
    os.utime(stage1, ns=(stage1.stat().st_atime_ns, stage1.stat().st_mtime_ns + 1_000_000_000))
    again = load_artifact(artifacts, encoder_id=embedder.id).stage1
    assert again is not first and list(again.labels) == list(first.labels)


def test_stage1_is_refitted_on_train_and_validation_with_its_calibrated_weights(artifacts, data):
    """Calibration and tau see validation held out; the saved model then learns from it too (a third more MMLU)."""
    art = load_artifact(artifacts)
    train, val = data
    assert art.stage1.bank.shape[0] == len(train.texts) + len(val.texts)
    assert list(art.stage1.weights) == art.manifest["calibration"]["weights"]


def test_other_encoder_is_refused(artifacts, registry, embedder):
    class OtherEncoder:
        id = "some-other-encoder@0123456789ab"

    with pytest.raises(ArtifactError, match="encoder"):
        build_router("two_stage", RouterContext(registry, OtherEncoder(), artifacts))


def test_other_label_set_is_refused(artifacts, registry, embedder):
    with pytest.raises(ArtifactError, match="label set"):
        build_router("two_stage", RouterContext(registry, embedder, artifacts, options={"labels": ["STEM", "humanities"]}))
    with pytest.raises(ArtifactError, match="level"):
        build_router("two_stage", RouterContext(registry, embedder, artifacts, options={"level": "category"}))
    alien = parse_registry(EXPERTS.replace("math", "cooking").replace("law", "gardening"), ROOT / "x.yaml")
    with pytest.raises(ArtifactError, match="declared"):
        build_router("two_stage", RouterContext(alien, embedder, artifacts))


def test_missing_artifact_says_how_to_train(tmp_path, registry, embedder):
    with pytest.raises(ArtifactError, match="coe train"):
        build_router("two_stage", RouterContext(registry, embedder, tmp_path))


def test_tau_fallback_on_low_confidence(artifacts, registry, embedder):
    router = build_router("two_stage", RouterContext(registry, embedder, artifacts, options={"tau": 0.6}))
    n = len(router.labels)
    flat = np.full((1, n), 1.0 / n)  # constructed: no idea which category
    sure = np.eye(n)[[router.labels.index("math")]] * 0.97 + 0.03 / n
    low, high = router.decide(np.vstack([flat, sure]), k=2)
    assert low.fallback and low.experts[0] == registry.fallback.name and "tau" in low.reason
    assert low.confidence == pytest.approx(1.0 / n)
    assert not high.fallback and high.category == "math" and "math" in registry.experts[high.experts[0]].categories
    assert len(high.experts) == 2 and len(set(high.experts)) == 2


def test_a_routed_decision_offers_the_route_experts_as_the_bandit_arms(artifacts, registry, embedder):
    """The online bandit's prior (coe/bandit.py): every expert ranked for the route, the router's pick first, each with
    its stage-2 score as the chance and chance - penalty equal to the utility the map ranked it by."""
    router = build_router("two_stage", RouterContext(registry, embedder, artifacts, options={"tau": 0.6},
                                                     cost_weight=0.2))
    n = len(router.labels)
    sure = np.eye(n)[[router.labels.index("math")]] * 0.97 + 0.03 / n
    low, high = router.decide(np.vstack([np.full((1, n), 1.0 / n), sure]))
    assert low.fallback and low.arms == []  # a low-confidence fallback is not the bandit's to change
    assert [a.expert for a in high.arms] == router.map.ranking["math"] and high.arms[0].expert == high.experts[0]
    utility = [a.chance - a.penalty for a in high.arms]
    assert utility == pytest.approx([router.map.utility["math"][a.expert] for a in high.arms])
    assert utility[0] == max(utility) and any(a.penalty > 0 for a in high.arms)  # the cost weight is the penalty


def test_calibrate_tau_targets():
    conf = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 0], dtype=bool)
    tau = calibrate_tau(conf, correct, "accuracy:0.99")
    assert 0.6 < tau <= 0.7  # the top four are all right
    assert calibrate_tau(conf, correct, "accuracy:0.5") == 0.0  # everything routed is already >= 50% right
    assert calibrate_tau(conf, correct, "tau:0.42") == 0.42
    assert np.mean(conf < calibrate_tau(conf, correct, "fallback:0.25")) == pytest.approx(0.25, abs=0.13)
    with pytest.raises(ValueError):
        calibrate_tau(conf, correct, "precision:0.9")


EXPERTS = """
version: 1
experts:
  - {name: big, engine: vllm, model: org/big, device: "gpu:0", params_b: 70, categories: [math]}
  - {name: mid, engine: vllm, model: org/mid, device: "gpu:0", params_b: 8, categories: [math, law]}
  - {name: small, engine: vllm, model: org/small, device: "gpu:0", params_b: 1, categories: [law], fallback: true}
"""


def _scored(reg, labels):
    table = declared_scores(reg, labels)
    # as if measured: big is the best at math, mid is close, small is poor
    table.scores[:] = [[0.90, 0.50], [0.85, 0.80], [0.40, 0.75]]
    return table


def test_stage2_cost_weight_prefers_cheaper_experts():
    reg = parse_registry(EXPERTS, ROOT / "t.yaml")
    labels = ["math", "law"]
    free = build_map(_scored(reg, labels), reg, cost_weight=0.0)
    assert free.assignment == {"math": "big", "law": "mid"}
    assert free.experts_for("math", 3) == ["big", "mid", "small"]
    cheap = build_map(_scored(reg, labels), reg, cost_weight=0.2)
    assert cheap.assignment["math"] == "mid"  # 0.85 - 0.2*8/70 beats 0.90 - 0.2
    assert cheap.assignment["law"] == "mid"


def test_stage2_budget_caps_average_params():
    reg = parse_registry(EXPERTS, ROOT / "t.yaml")
    labels = ["math", "law"]
    weights = {"math": 0.5, "law": 0.5}
    m = build_map(_scored(reg, labels), reg, budget_b=10.0, label_weights=weights)
    assert m.avg_params_b <= 10.0
    assert m.assignment == {"math": "mid", "law": "mid"}
    tight = build_map(_scored(reg, labels), reg, budget_b=2.0, label_weights=weights)
    assert tight.avg_params_b <= 2.0 and set(tight.assignment.values()) == {"small"}
    impossible = build_map(_scored(reg, labels), reg, budget_b=0.5, label_weights=weights)
    assert impossible.notes and set(impossible.assignment.values()) == {"small"}


def test_stage2_reads_a_profile(tmp_path):
    import json

    reg = parse_registry(EXPERTS, ROOT / "t.yaml")
    profile = tmp_path / "profile.json"
    cells = {"small": (98, 100), "mid": (60, 100)}
    profile.write_text(json.dumps({"experts": {n: {"categories": {"math": {"correct": c, "total": t}}}
                                               for n, (c, t) in cells.items()}}))
    table = load_scores(reg, ["math", "law"], profile)
    # counts only: each cell shrunk toward the expert's overall accuracy with m=8 (routers/two_stage/stage2_fit.py)
    assert table.score("small", "math") == pytest.approx((98 + 8 * 99 / 102) / 108)
    assert table.score("mid", "math") == pytest.approx((60 + 8 * 61 / 102) / 108)
    assert table.score("big", "math") == 1.0  # unmeasured: declared
    assert build_map(table, reg, cost_weight=0.1).assignment["math"] == "small"  # 0.98 - 0.1/70 > 1.0 - 0.1


def test_other_encoder_runtime_is_refused_with_the_fix(artifacts, registry, embedder):
    """Trained on the service's runtime (int8 ONNX, truncated); served with full-length torch it is refused, and the
    message names the settings that select the trained one."""
    settings = get_settings()
    assert embedder.runtime_id == f"{settings.encoder_runtime}-L{settings.encoder_max_seq_length}"
    torch_full = Embedder(settings.encoder, runtime="torch")  # runtime_id only: no model is loaded
    fix = f"COE_ENCODER_RUNTIME={settings.encoder_runtime} COE_ENCODER_MAX_SEQ_LENGTH={settings.encoder_max_seq_length}"
    with pytest.raises(ArtifactError, match=f"'{embedder.runtime_id}'.*'torch'.*{fix}.*coe train"):
        build_router("two_stage", RouterContext(registry, torch_full, artifacts))


def test_artifact_without_routes_is_refused_when_a_routes_file_exists(artifacts, registry, embedder):
    from coe.core.routes import load_routes

    with pytest.raises(ArtifactError, match="not trained for the routes of .*added .*coe train"):
        build_router("two_stage", RouterContext(registry, embedder, artifacts, routes=load_routes(ROOT / "routes.yaml")))


def test_fastpath_computes_what_scikit_learn_computes(artifacts, data):
    from routers.two_stage import fastpath

    stage1 = load_artifact(artifacts).stage1
    _, val = data
    texts = val.texts + ["", "a"]
    for vec in (stage1.word, stage1.char):
        assert np.allclose(fastpath.tfidf(vec, texts).csr().toarray(), vec.transform(texts).toarray(), atol=1e-6)
    lexical = fastpath.linear(stage1.lex, [fastpath.tfidf(stage1.word, texts), fastpath.tfidf(stage1.char, texts)])
    assert np.allclose(lexical, stage1.lex.decision_function(stage1._lex_features(texts)), atol=1e-5)
    assert np.allclose(fastpath.linear(stage1.dense, [val.embeddings]), stage1.dense.decision_function(val.embeddings), atol=1e-5)


def test_make_serve_retrains_only_an_artifact_that_cannot_serve(artifacts, tmp_path):
    from coe.cli_train import why_retrain
    from coe.core.routes import load_routes

    assert "no trained two_stage artifact" in why_retrain(tmp_path, None)
    assert why_retrain(artifacts, None) is None
    assert "other routes" in why_retrain(artifacts, load_routes(ROOT / "routes.yaml"))  # trained without this file
    old = tmp_path / "old"
    shutil.copytree(artifacts, old)
    manifest = resolve_version(old) / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 1}))
    assert "artifact format 1" in why_retrain(old, None)
