"""The two-stage router (CoE): stage-1 category classifier, uncertainty fallback, stage-2 expert map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routers.base import Arm, RouteDecision, Router, RouterContext, register
from routers.two_stage import fastpath
from routers.two_stage.artifact import Artifact, ArtifactError, load_artifact
from routers.two_stage.stage2 import ExpertMap, build_map, load_scores

PROFILE_FILE = "profile.json"


def make_expert_map(ctx: RouterContext, labels: list[str], parents: dict | None, label_weights: dict | None,
                    artifact_version: str | None = None) -> ExpertMap:
    """Stage 2 for a stage 1 emitting `labels`; `artifact_version` names the two-stage artifact whose stage 1
    that is, so a profile grouped by that artifact's predictions is used as such (None: gold labels)."""
    opts = ctx.options
    profile = opts.get("profile", Path(ctx.artifacts_dir) / PROFILE_FILE)
    strength = opts.get("prior_strength")
    table = load_scores(ctx.registry, labels, Path(profile) if profile else None, parents, artifact_version,
                        float(strength) if strength is not None else None)
    budget = opts.get("budget_b", ctx.budget_b)
    return build_map(table, ctx.registry, cost_weight=float(opts.get("cost_weight", ctx.cost_weight)),
                     budget_b=float(budget) if budget is not None else None, label_weights=label_weights)


def _runtime_env(runtime_id: str) -> str:
    """'onnx-int8-L64' -> the settings that select it."""
    runtime, sep, length = runtime_id.rpartition("-L")
    if not (sep and length.isdigit()):
        runtime, length = runtime_id, ""
    return f"COE_ENCODER_RUNTIME={runtime} COE_ENCODER_MAX_SEQ_LENGTH={length}"


def check_encoder_runtime(ctx: RouterContext, artifact: Artifact) -> None:
    """The classifier was fitted on vectors of one runtime and truncation; others shift them."""
    trained = (artifact.manifest.get("encoder") or {}).get("runtime")
    serving = getattr(ctx.embedder, "runtime_id", None)
    if trained and serving and trained != serving:
        raise ArtifactError(f"{artifact.path}: trained on embeddings of encoder runtime '{trained}' but this service embeds "
                            f"with '{serving}'; serve with {_runtime_env(trained)}, or retrain with the service's "
                            f"settings: coe train")


def check_routes(ctx: RouterContext, artifact: Artifact) -> None:
    """An artifact serves the routes file it was trained for: same names, kinds and examples."""
    if ctx.routes is None:
        return
    trained = artifact.manifest.get("routes") or {}
    if trained.get("fingerprint") == ctx.routes.fingerprint():
        return
    was, now = set(trained.get("names") or artifact.labels), set(ctx.routes.names)
    change = [f"added {sorted(now - was)}" if now - was else "", f"removed {sorted(was - now)}" if was - now else ""]
    change = "; ".join(c for c in change if c) or ("examples or kinds changed" if trained else "it was trained without one")
    raise ArtifactError(f"{artifact.path}: not trained for the routes of {ctx.routes.path} ({change}); "
                        f"retrain so the router learns them: coe train")


def check_registry_labels(ctx: RouterContext, labels: list[str], parents: dict | None, path: Path) -> None:
    """Declared expert categories must overlap the artifact's label set, or stage 2 is blind."""
    known = {lab.lower() for lab in labels} | {m.lower() for ms in (parents or {}).values() for m in ms}
    declared = {c.lower() for e in ctx.registry.experts.values() for c in e.categories}
    if declared and not declared & known:
        raise ArtifactError(f"{path}: none of the categories declared in {ctx.registry.path} ({sorted(declared)[:6]}...) "
                            f"is in the artifact's label set ({labels[:6]}...); retrain for these labels")


@register("two_stage")
class TwoStageRouter(Router):
    """Options (ctx.options): artifact (version or folder), tau (override), cost_weight and
    budget_b (average active params, billions; defaults from the context), profile (score file; default <artifacts>/profile.json),
    prior_strength (stage 2's shrinkage m; default: chosen on the profile), labels / level (expected label set; a mismatch is an error)."""
    serving = True

    def __init__(self, ctx: RouterContext, artifact: Artifact):
        self.artifact = artifact
        self.stage1 = artifact.stage1
        self.labels = artifact.labels
        self.tau = float(ctx.options.get("tau", artifact.tau))
        parents = artifact.manifest.get("parents")
        check_registry_labels(ctx, self.labels, parents, artifact.path)
        self.map = make_expert_map(ctx, self.labels, parents, artifact.manifest.get("label_weights"),
                                   artifact.manifest.get("version"))
        self.fallback = ctx.registry.fallback.name if ctx.registry.fallback else None
        self.arms = {c: [Arm(e, self.map.score[c][e], self.map.score[c][e] - self.map.utility[c][e])
                         for e in self.map.ranking[c]] for c in self.labels}
        self.source = f"stage 1 artifact {artifact.manifest.get('version', artifact.path.name)}; stage 2 {self.map.source}"

    @classmethod
    def build(cls, ctx: RouterContext) -> "TwoStageRouter":
        artifact = load_artifact(ctx.artifacts_dir, ctx.options.get("artifact"), encoder_id=ctx.embedder.id,
                                 labels=ctx.options.get("labels"), level=ctx.options.get("level"))
        check_encoder_runtime(ctx, artifact)
        check_routes(ctx, artifact)
        return cls(ctx, artifact)

    def predict_proba(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        with fastpath.inference():
            return self.stage1.predict_proba(list(texts), embeddings)

    def decide(self, probs: np.ndarray, k: int = 1) -> list[RouteDecision]:
        decisions = []
        for p in probs:
            order = np.argsort(-p)
            category = self.labels[order[0]]
            confidence = float(p[order[0]])
            top = [(self.labels[j], float(p[j])) for j in order[:3]]
            if confidence < self.tau and self.fallback:
                ranked = [e for e in self.map.experts_for(category, k=len(self.map.ranking[category])) if e != self.fallback]
                experts = [self.fallback] + ranked[: max(1, k) - 1]
                decisions.append(RouteDecision(experts, self.name, category, confidence, top, True,
                                               f"confidence {confidence:.2f} < tau {self.tau:.2f}: fallback expert"))
                continue
            experts = self.map.experts_for(category, k)
            decisions.append(RouteDecision(experts, self.name, category, confidence, top, False,
                                           f"category '{category}' (p={confidence:.2f}) -> {experts[0]} ({self.map.source})",
                                           arms=self.arms[category]))
        return decisions

    def route(self, texts: list[str], embeddings: np.ndarray, k: int = 1) -> list[RouteDecision]:
        if len(texts) == 0:
            return []
        return self.decide(self.predict_proba(texts, embeddings), k)
