"""Skill-based recruiting of k experts (Symbolic-MoE, arXiv 2503.05641, as its public code does it).

1. Skills of a query: the top-s skills of the shipped vocabulary (skills_vocab.yaml) by
   embedding cosine (default), or keywords written by an LLM through an expert's engine,
   each mapped to its nearest vocabulary skill (option `skill_source: keywords`).
2. Profiles: per expert and skill, +1 per validation question answered correctly, -1 if
   not (routers/skills_profile.py; written by `coe profile`).
3. Global competence: the sum of an expert's profile, shifted to positive if any is
   negative (-min + 1), raised to 1/T with T = 0.5, normalised to sum to 1.
4. Local suitability: the sum of the expert's profile over the query's skills. Experts
   with a positive local score are kept (if none, all are shifted to positive);
   weight = local x global.
5. k experts by top-k (the kept experts, repeated if k exceeds them), or by seeded sampling with replacement from softmax(log w / T)
   (T = 1 samples in proportion to the weight, as the paper does). An expert drawn
   twice answers twice; the pipeline gives each duplicate its own seed.
6. Batch-aware pruning (option): an expert holding under 5% of a batch's slots is
   replaced by a draw from the frequent ones, so fewer models must be loaded.

Without a profile file the router still works: each expert's profile is replaced by how
close every vocabulary skill is to what the expert declares in experts.yaml
(description, categories, skills), and the reason string says so.

The pure functions (global_weights, recruit_weights, choose, prune_batch) are what the
recruiting simulation (evals/sim_recruit.py) exercises.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from routers.base import RouteDecision, Router, RouterContext, register
from routers.skills_profile import PROFILE_FILE, load_profile, skill_matrix

VOCAB_FILE = Path(__file__).with_name("skills_vocab.yaml")
GLOBAL_TEMPERATURE = 0.5
PRUNE_BELOW = 0.05
KEYWORD_TOKENS = 24
"""Tokens the keyword LLM may write per query."""


# --------------------------------------------------------------------------- vocabulary


def load_vocabulary(path: Path | None = None) -> dict[str, str]:
    """skill name -> one-line description."""
    path = Path(path) if path else VOCAB_FILE
    data = yaml.safe_load(path.read_text())
    skills = data.get("skills") if isinstance(data, dict) else None
    if not isinstance(skills, dict) or not skills:
        raise ValueError(f"{path}: expected a 'skills' mapping of name -> description")
    return {str(k): str(v) for k, v in skills.items()}


_VOCAB_VECTORS: dict[tuple, np.ndarray] = {}
"""Embedded vocabularies shared by every router of the process: vocabulary_key -> read-only vectors. A server builds a new skills router for every registry version (its
pipeline is rebuilt with the same encoder), the quality bench one per policy, and each would otherwise embed the
whole vocabulary (124 skills) again."""


def vocabulary_key(vocab: dict[str, str], embedder: object) -> tuple | None:
    """The cache key of a vocabulary's vectors under an encoder: the encoder as coe's embedding cache names it
    (id: its weights; runtime_id: runtime and truncation; coe.data.embedding_cache), its class (a stand-in or a
    subclass that encodes otherwise under the same names gets its own entry) and batch size (the int8 runtime embeds
    each text alone, but torch and fp32 ONNX pad a batch, which can move a vector's last bits), and a hash of the
    exact texts embedded. None for an encoder without an id."""
    encoder_id = getattr(embedder, "id", None)
    if not encoder_id:
        return None
    digest = hashlib.sha256(json.dumps([f"{n}: {d}" for n, d in vocab.items()]).encode()).hexdigest()
    return (type(embedder).__module__, type(embedder).__qualname__, encoder_id, getattr(embedder, "runtime_id", None),
            getattr(embedder, "batch_size", None), digest)


class SkillIndex:
    """The vocabulary's embeddings, for top-s lookup and nearest-skill mapping. `key` (vocabulary_key) shares
    the vectors with every other index of the same vocabulary and encoder in this process."""

    def __init__(self, vocab: dict[str, str], encode: Callable[[list[str]], np.ndarray],
                 key: tuple | None = None):
        self.names = list(vocab)
        self.encode = encode
        vectors = _VOCAB_VECTORS.get(key) if key is not None else None
        if vectors is None:
            vectors = np.asarray(encode([f"{n}: {d}" for n, d in vocab.items()]), dtype=np.float32)
            if key is not None:
                vectors.flags.writeable = False
                _VOCAB_VECTORS[key] = vectors
        self.vectors = vectors

    def top(self, embeddings: np.ndarray, s: int) -> list[list[tuple[str, float]]]:
        sims = np.asarray(embeddings, dtype=np.float32) @ self.vectors.T
        s = max(1, min(s, len(self.names)))
        out = []
        for row in sims:
            order = np.argsort(-row, kind="stable")[:s]
            out.append([(self.names[j], float(row[j])) for j in order])
        return out

    def nearest(self, phrases: list[str]) -> list[tuple[str, float]]:
        if not phrases:
            return []
        sims = np.asarray(self.encode(phrases), dtype=np.float32) @ self.vectors.T
        return [(self.names[int(np.argmax(r))], float(np.max(r))) for r in sims]


# --------------------------------------------------------------------------- keyword LLM

KEYWORD_PROMPT = (
    "List the {s} most important skills or areas of knowledge needed to answer the question below. "
    "Write only the skills, comma-separated, each one to three words (for example: algebra, "
    "molecular biology, contract law).\n\nQuestion:\n{question}\n\nSkills:"
)


def keyword_messages(question: str, s: int = 3) -> list[dict]:
    return [{"role": "user", "content": KEYWORD_PROMPT.format(s=s, question=question.strip()[:2000])}]


def parse_keywords(text: str, s: int = 3) -> list[str]:
    """Comma, semicolon, newline or bullet separated phrases; numbering and punctuation stripped."""
    parts = re.split(r"[,;\n]|\s\d+[.)]\s", text)
    out: list[str] = []
    for p in parts:
        p = re.sub(r"^[\s\-*\d.)]+", "", p)
        p = re.sub(r"^\s*(skills?|keywords?)\s*:", "", p, flags=re.IGNORECASE).strip(" .:*\"'`").lower()
        if p and len(p) <= 60 and p not in out:
            out.append(p)
    return out[:s]


def keywords_to_skills(index: SkillIndex, keyword_lists: list[list[str]], s: int) -> list[list[tuple[str, float]]]:
    """Map each query's keywords to their nearest vocabulary skills (duplicates merged)."""
    out = []
    for words in keyword_lists:
        mapped: dict[str, float] = {}
        for name, sim in index.nearest(words):
            mapped[name] = max(sim, mapped.get(name, -1.0))
        out.append(sorted(mapped.items(), key=lambda x: -x[1])[:s])
    return out


# --------------------------------------------------------------------------- the arithmetic


def global_weights(strength: np.ndarray, temperature: float = GLOBAL_TEMPERATURE) -> np.ndarray:
    """Sum of each expert's profile -> a distribution: shift to positive if needed, ^(1/T), normalise."""
    s = np.asarray(strength, dtype=np.float64)
    if s.size == 0:
        return s
    if (s < 0).any():
        s = s - s.min() + 1.0
    if not (s > 0).any():
        s = np.ones_like(s)
    w = s ** (1.0 / temperature)
    return w / w.sum()


def local_scores(matrix: np.ndarray, skill_idx: list[int]) -> np.ndarray:
    """Sum of each expert's profile over the query's skills."""
    if not skill_idx:
        return np.zeros(matrix.shape[0])
    return matrix[:, skill_idx].sum(axis=1)


def recruit_weights(local: np.ndarray, global_w: np.ndarray) -> np.ndarray:
    """Keep experts with a positive local score (if none, shift all to positive); weight = local x global."""
    local = np.asarray(local, dtype=np.float64)
    if (local > 0).any():
        kept = np.where(local > 0, local, 0.0)
    else:
        kept = local - local.min() + 1.0
    w = kept * np.asarray(global_w, dtype=np.float64)
    if w.sum() <= 0:
        w = kept if kept.sum() > 0 else np.ones_like(kept)
    return w / w.sum()


def choice_probabilities(weights: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(log w / T): T = 1 is proportional to w, T -> 0 approaches argmax; zero weights stay zero."""
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logits = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)) / max(temperature, 1e-6), -np.inf)
    logits = logits - logits[np.isfinite(logits)].max()
    p = np.exp(logits)
    return p / p.sum()


def choose(weights: np.ndarray, k: int, mode: str, rng: np.random.Generator, temperature: float = 1.0) -> list[int]:
    """k expert indices: 'top' = the heaviest ones in order, cycling through the kept (positive-weight) experts
    again when k exceeds them (a repeat answers with another seed); 'sample' = k draws with replacement."""
    w = np.asarray(weights, dtype=np.float64)
    if mode == "top":
        order = np.argsort(-w, kind="stable")
        kept = [int(i) for i in order if w[i] > 0] or [int(order[0])]
        return [kept[j % len(kept)] for j in range(max(1, k))]
    if mode != "sample":
        raise ValueError(f"mode must be 'top' or 'sample', not '{mode}'")
    p = choice_probabilities(w, temperature)
    return [int(i) for i in rng.choice(len(w), size=max(1, k), replace=True, p=p)]


def prune_batch(choices: list[list[int]], weights: list[np.ndarray], rng: np.random.Generator,
                min_share: float = PRUNE_BELOW) -> list[list[int]]:
    """Replace experts holding under `min_share` of the batch's slots by draws from the frequent ones."""
    counts = Counter(i for row in choices for i in row)
    slots = sum(counts.values())
    if not slots:
        return choices
    frequent = sorted(i for i, c in counts.items() if c / slots >= min_share)
    if not frequent or len(frequent) == len(counts):
        return choices
    out = []
    for row, w in zip(choices, weights):
        new = []
        for i in row:
            if i in frequent:
                new.append(i)
                continue
            cand = np.array([w[j] for j in frequent], dtype=np.float64)
            if cand.sum() <= 0:
                cand = np.array([counts[j] for j in frequent], dtype=np.float64)
            new.append(int(frequent[rng.choice(len(frequent), p=cand / cand.sum())]))
        out.append(new)
    return out


def text_seed(seed: int, text: str) -> int:
    """A per-query seed: the same query recruits the same experts whatever batch it comes in."""
    return int.from_bytes(hashlib.sha256(f"{seed}\n{text}".encode()).digest()[:8], "little")


# --------------------------------------------------------------------------- the router


@register("skills")
class SkillsRouter(Router):
    """Options (ctx.options): profile (path; default <artifacts>/profile.json), skills_per_query (3),
    mode ('sample' | 'top'; default 'sample'), temperature (1.0), global_temperature (0.5),
    batch_pruning (False), prune_below (0.05), skill_source ('embedding' | 'keywords'),
    keyword_expert (an expert name; default the fallback expert), vocab (path)."""
    serving = True

    def __init__(self, ctx: RouterContext):
        opts = ctx.options
        self.s = int(opts.get("skills_per_query", 3))
        self.mode = str(opts.get("mode", "sample"))
        if self.mode not in ("sample", "top"):
            raise ValueError(f"skills router: mode must be 'sample' or 'top', not '{self.mode}'")
        self.temperature = float(opts.get("temperature", 1.0))
        self.global_temperature = float(opts.get("global_temperature", GLOBAL_TEMPERATURE))
        self.batch_pruning = bool(opts.get("batch_pruning", False))
        self.prune_below = float(opts.get("prune_below", PRUNE_BELOW))
        self.skill_source = str(opts.get("skill_source", "embedding"))
        if self.skill_source not in ("embedding", "keywords"):
            raise ValueError(f"skills router: skill_source must be 'embedding' or 'keywords', not '{self.skill_source}'")
        self.seed = int(ctx.seed)
        self.registry = ctx.registry
        self.embedder = ctx.embedder
        vocab = load_vocabulary(opts.get("vocab"))
        self.index = SkillIndex(vocab, ctx.embedder.encode, vocabulary_key(vocab, ctx.embedder))
        self.keyword_expert = opts.get("keyword_expert") or (ctx.registry.fallback.name if ctx.registry.fallback else None)
        if self.skill_source == "keywords":
            if ctx.generate is None:
                raise ValueError("skills router: skill_source 'keywords' needs an LLM, and none is offered here")
            if self.keyword_expert not in ctx.registry.experts:
                raise ValueError(f"skills router: keyword_expert '{self.keyword_expert}' is not an expert")
        self.generate = ctx.generate
        self.aggregator: str | None = None

        candidates = [e.name for e in ctx.registry.experts.values()
                      if not (e.aggregator and not e.categories and not e.skills)]
        if not candidates:
            raise ValueError("skills router needs at least one expert that is not only an aggregator")
        path = Path(opts.get("profile") or Path(ctx.artifacts_dir) / PROFILE_FILE)
        profile = load_profile(path) if path.is_file() else None
        profiled = [n for n in candidates if profile and profile["experts"].get(n, {}).get("total")]
        if profile is not None and profiled:
            self.experts = profiled
            self.matrix = skill_matrix(profile, profiled, self.index.names)
            self.global_w = global_weights(self.matrix.sum(axis=1), self.global_temperature)
            best = (profile.get("aggregators") or {}).get("best")
            self.aggregator = best if best in ctx.registry.experts else None
            missing = sorted(set(candidates) - set(profiled))
            self.source = f"profile {path.name} ({profile.get('n_questions', '?')} questions" + (
                f"; not profiled, never recruited: {', '.join(missing)})" if missing else ")")
        else:
            why = f"no profile at {path}" if profile is None else f"profile {path} has none of the experts"
            self.experts = candidates
            self.matrix = self._declared_matrix(candidates)
            self.global_w = np.full(len(candidates), 1.0 / len(candidates))
            self.source = f"{why}: using skills/categories declared in experts.yaml"

    def _declared_matrix(self, names: list[str]) -> np.ndarray:
        """Stand-in profile: how much closer each vocabulary skill is to an expert's declarations than average."""
        rows = []
        for name in names:
            e = self.registry.experts[name]
            texts = [t.strip() for t in [e.description, *e.categories, *e.skills] if t.strip()] or [name]
            vecs = np.asarray(self.embedder.encode(texts), dtype=np.float32)
            rows.append((self.index.vectors @ vecs.T).max(axis=1))
        affinity = np.stack(rows).astype(np.float64)
        return affinity - affinity.mean(axis=0, keepdims=True)

    # ---- skills of queries

    def query_skills(self, texts: list[str], embeddings: np.ndarray) -> list[list[tuple[str, float]]]:
        if self.skill_source == "keywords":
            outputs = self.generate(self.keyword_expert, [keyword_messages(t, self.s) for t in texts], KEYWORD_TOKENS)
            return keywords_to_skills(self.index, [parse_keywords(o, self.s) for o in outputs], self.s)
        return self.index.top(embeddings, self.s)

    # ---- routing

    def route(self, texts: list[str], embeddings: np.ndarray, k: int = 1) -> list[RouteDecision]:
        if len(texts) == 0:
            return []
        skills = self.query_skills(texts, embeddings)
        col = {n: j for j, n in enumerate(self.index.names)}
        weights, choices, rngs = [], [], []
        for text, sk in zip(texts, skills):
            local = local_scores(self.matrix, [col[n] for n, _ in sk])
            w = recruit_weights(local, self.global_w)
            rng = np.random.default_rng(text_seed(self.seed, text))
            weights.append(w)
            choices.append(choose(w, k, self.mode, rng, self.temperature))
            rngs.append(rng)
        pruned = ""
        if self.batch_pruning and len(texts) > 1:
            before = {i for row in choices for i in row}
            choices = prune_batch(choices, weights, np.random.default_rng(self.seed), self.prune_below)
            after = {i for row in choices for i in row}
            if after != before:
                pruned = f"; batch pruning dropped {', '.join(self.experts[i] for i in sorted(before - after))}"
        decisions = []
        for sk, w, row in zip(skills, weights, choices):
            order = np.argsort(-w, kind="stable")
            top = [(self.experts[j], float(w[j])) for j in order[:3]]
            chosen = [self.experts[i] for i in row]
            reason = (f"skills [{', '.join(n for n, _ in sk)}]; {self.mode} k={len(chosen)} by local x global "
                      f"({', '.join(f'{n} {p:.2f}' for n, p in top)}); {self.source}{pruned}")
            decisions.append(RouteDecision(
                experts=chosen, router=self.name, category=sk[0][0] if sk else None,
                confidence=float(w[row[0]]), top_categories=top, fallback=False, reason=reason,
                aggregator=self.aggregator))
        return decisions
