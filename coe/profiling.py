"""Expert profiles from real evaluation runs: every expert answers validation questions
through the real dispatch path (pipeline.plan with model=<expert> -> queue -> worker ->
engine, batched by the worker), the option letter is read out of each answer, and the
counts become a profile (routers/skills_profile.py).

`group_by_stage1` labels every record with the category the service's two-stage router predicts
for it, so stage 2's score table is fitted on what stage 1 will ask (routers/two_stage/stage2_fit.py).

`measure_aggregators` then gives every expert the same k candidate answers per question
(k experts recruited by the skills arithmetic on the fresh profile) through the real
aggregation prompt, and scores how often its merged answer is right.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from coe.aggregation import aggregation_messages
from coe.embedder import make_embedder
from coe.pipeline import ChatInput, Pipeline
from coe.core.registry import Registry, load_registry
from coe.core.settings import Settings
from coe.data.letters import extract_letter
from coe.service import engine_options
from routers.base import RouterContext
from routers.skills import (
    SkillIndex, SkillsRouter, choose, global_weights, keyword_messages, keywords_to_skills, local_scores,
    parse_keywords, recruit_weights, text_seed,
)
from routers.skills_profile import build_profile, skill_matrix
from routers.two_stage.stage2_fit import is_right
from workers.jobs import JobResult
from workers.queue_memory import MemoryQueue
from workers.worker import Worker

ANSWER_INSTRUCTION = "Answer with the letter (A, B, C or D) of the correct option only."


def question_messages(q) -> list[dict]:
    return [{"role": "user", "content": f"{q.prompt}\n\n{ANSWER_INSTRUCTION}"}]


@dataclass
class Cost:
    jobs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_s: float = 0.0  # this expert's share of the batches it ran in
    failed: int = 0

    def add(self, r: JobResult) -> None:
        self.jobs += 1
        if r.completion is None:
            self.failed += 1
            return
        self.prompt_tokens += r.completion.prompt_tokens
        self.completion_tokens += r.completion.completion_tokens
        self.time_s += r.generate_s / max(1, r.batch_size)

    def as_dict(self) -> dict:
        tokens = self.prompt_tokens + self.completion_tokens
        return {"jobs": self.jobs, "failed": self.failed, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "time_s": round(self.time_s, 3),
                "tokens_per_s": round(tokens / self.time_s, 2) if self.time_s else 0.0}


@dataclass
class Runner:
    """The embedded service parts, started for an evaluation run."""

    settings: Settings
    batch: int | None = None
    concurrency: int = 64
    progress: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr, flush=True))

    async def start(self) -> None:
        s = self.settings.model_copy(update={"request_timeout_s": 7 * 24 * 3600.0, "max_queue_depth": 1_000_000})
        self.settings = s
        self.registry: Registry = load_registry(s.experts_file)
        if self.batch:
            for name, e in list(self.registry.experts.items()):
                self.registry.experts[name] = e.model_copy(update={"max_batch": self.batch})
        self.embedder = make_embedder(s)
        self.queue = MemoryQueue(max_depth=s.max_queue_depth)
        # One worker per device the experts use, as the embedded service starts them (CPU, gpu:0, ...).
        self.workers = [Worker(self.registry, self.queue, device=d, engine_options=engine_options(s))
                        for d in self.registry.devices]
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(w.run(self._stop), name=f"runner-worker-{w.device}") for w in self.workers]
        self.pipeline = await Pipeline.create(self.registry, self.embedder, self.queue, s, "skills")
        self.router: SkillsRouter = self.pipeline.routers["skills"]
        self.index: SkillIndex = self.router.index
        await asyncio.gather(*(w.ready.wait() for w in self.workers))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, 60)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        await self.queue.close()

    async def ask(self, expert: str, messages: list[dict], max_tokens: int, seed: int,
                  temperature: float | None = None) -> JobResult:
        """One bypass request (model=<expert>), on the same path a client's request takes."""
        plan = await self.pipeline.plan(ChatInput(model=expert, messages=messages, max_tokens=max_tokens,
                                                  seed=seed, temperature=temperature))
        job = plan.jobs[0]
        await self.queue.submit(job)
        return await self.queue.wait_result(job.id, self.settings.request_timeout_s)

    async def bounded(self, calls: list[Callable[[], Awaitable]], label: str) -> list:
        """Run calls with at most `concurrency` in flight (the worker batches them), reporting progress."""
        sem = asyncio.Semaphore(self.concurrency)
        done = 0
        started = time.perf_counter()

        async def one(call):
            nonlocal done
            async with sem:
                out = await call()
            done += 1
            if done % 50 == 0 or done == len(calls):
                self.progress(f"[{label}] {done}/{len(calls)} in {time.perf_counter() - started:.0f}s")
            return out

        return await asyncio.gather(*(one(c) for c in calls))


async def group_by_stage1(ctx: RouterContext, profile: dict, texts: list[str], vecs: np.ndarray | None = None) -> None:
    """Give every record (in the order of `texts`) the category the service's stage 1 predicts for its text,
    count each expert per predicted category, and say in profile["stage2"] which grouping stage 2 may use:
    "predicted" (with the artifact's version) or "gold" (with the reason) when no trained router can be built."""
    from routers import build_router
    from routers.two_stage.artifact import ArtifactError
    from routers.two_stage.stage2 import Stage2Error

    try:
        router = await asyncio.to_thread(build_router, "two_stage", replace(ctx, options={**ctx.options, "profile": ""}))
    except (ArtifactError, Stage2Error) as exc:
        profile["stage2"] = {"grouping": "gold", "reason": f"no usable two-stage router when profiled: {exc}"}
        return
    if vecs is None:
        vecs = await asyncio.to_thread(ctx.embedder.encode, texts)
    decisions = await asyncio.to_thread(router.route, texts, vecs, 1)
    for rec, d in zip(profile["records"], decisions):
        rec["predicted"], rec["predicted_p"] = d.category, round(d.confidence, 4)
    for name, e in profile["experts"].items():
        cells: dict[str, dict] = {}
        for rec in profile["records"]:
            if name in rec["answers"]:
                cell = cells.setdefault(rec["predicted"], {"correct": 0, "total": 0})
                cell["total"] += 1
                cell["correct"] += int(is_right(rec, name))
        e["predicted_categories"] = dict(sorted(cells.items()))
    profile["stage2"] = {"grouping": "predicted", "artifact": router.artifact.manifest.get("version"),
                         "artifact_path": str(router.artifact.path), "tau": router.tau,
                         "below_tau": sum(d.fallback for d in decisions)}


def _seed(text: str, seed: int) -> int:
    return text_seed(seed, text) % (2**31)


async def question_skills(runner: Runner, questions: list, s: int, source: str, keyword_expert: str | None,
                          seed: int) -> list[list[str]]:
    if source == "embedding":
        vecs = await asyncio.to_thread(runner.embedder.encode, [q.prompt for q in questions])
        return [[n for n, _ in row] for row in runner.index.top(vecs, s)]
    expert = keyword_expert or (runner.registry.fallback.name if runner.registry.fallback else runner.registry.names[0])
    calls = [lambda q=q: runner.ask(expert, keyword_messages(q.prompt, s), 24, _seed(q.id, seed), 0.0) for q in questions]
    results = await runner.bounded(calls, f"keywords by {expert}")
    words = [parse_keywords(r.completion.text if r.ok else "", s) for r in results]
    mapped = await asyncio.to_thread(keywords_to_skills, runner.index, words, s)
    fallback = runner.index.top(await asyncio.to_thread(runner.embedder.encode, [q.prompt for q in questions]), s)
    return [[n for n, _ in (m or f)] for m, f in zip(mapped, fallback)]


async def profile_experts(runner: Runner, questions: list, experts: list[str], *, max_tokens: int = 8,
                          skills_per_query: int = 3, skill_source: str = "embedding",
                          keyword_expert: str | None = None, seed: int = 0, meta: dict | None = None,
                          max_seconds: float | None = None, chunk: int = 40) -> dict:
    """Answers of every expert to every question; with `max_seconds`, questions are taken in chunks and no
    new chunk starts once the next one would likely end past the budget (the profile says how many ran)."""
    t0 = time.perf_counter()
    skills = await question_skills(runner, questions, skills_per_query, skill_source, keyword_expert, seed)
    skills_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    results: list[JobResult] = []
    done = 0
    while done < len(questions):
        part = questions[done:done + chunk]
        # within a chunk, shortest prompts first so each batch pads little; question-major, so a batch
        # mixes experts that share weights. Chunks keep the stable shuffle: a budget stop cuts no length.
        order = sorted(part, key=lambda q: len(q.prompt))
        calls = [lambda q=q, e=e: runner.ask(e, question_messages(q), max_tokens, _seed(q.id, seed))
                 for q in order for e in experts]
        got = await runner.bounded(calls, f"answers {done + len(part)}/{len(questions)} questions")
        by_key = {(q.id, e): r for (q, e), r in zip(((q, e) for q in order for e in experts), got)}
        results += [by_key[(q.id, e)] for q in part for e in experts]
        done += len(part)
        spent = time.perf_counter() - t1
        if max_seconds is not None and done < len(questions) and spent + spent / done * chunk > max_seconds:
            runner.progress(f"time budget {max_seconds:.0f}s: stopping after {done} of {len(questions)} questions")
            break
    questions, skills = questions[:done], skills[:done]
    answer_s = time.perf_counter() - t1
    costs = {e: Cost() for e in experts}
    records = []
    it = iter(results)
    for q, sk in zip(questions, skills):
        rec = {"id": q.id, "subject": q.subject, "subcategory": q.subcategory, "category": q.category,
               "skills": sk, "gold": q.answer_letter, "answers": {}, "raw": {}}
        for e in experts:
            r = next(it)
            costs[e].add(r)
            text = r.completion.text if r.ok else ""
            rec["answers"][e] = extract_letter(text, q.choices)
            rec["raw"][e] = text if r.ok else f"ERROR: {r.error}"
        records.append(rec)
    info = {**(meta or {}), "skill_source": skill_source, "skills_per_query": skills_per_query,
            "max_tokens": max_tokens, "seed": seed, "prompt_suffix": ANSWER_INSTRUCTION,
            "questions_asked": len(questions), "max_seconds": max_seconds,
            "encoder": runner.embedder.id, "wall_s": {"skills": round(skills_s, 2), "answers": round(answer_s, 2)}}
    profile = build_profile(records, experts, info)
    for e in experts:
        profile["experts"][e].update(costs[e].as_dict())
    await group_by_stage1(runner.pipeline.router_context("two_stage"), profile, [q.prompt for q in questions])
    return profile


def recruit_candidates(profile: dict, experts: list[str], skill_names: list[str], record: dict, k: int,
                       seed: int) -> list[str]:
    """k experts for one validation question by the skills arithmetic (sampled, seeded)."""
    m = skill_matrix(profile, experts, skill_names)
    g = global_weights(m.sum(axis=1))
    col = {n: j for j, n in enumerate(skill_names)}
    w = recruit_weights(local_scores(m, [col[s] for s in record["skills"] if s in col]), g)
    rng = np.random.default_rng(text_seed(seed, record["id"]))
    return [experts[i] for i in choose(w, k, "sample", rng)]


async def measure_aggregators(runner: Runner, profile: dict, questions: list, candidates_from: list[str],
                              aggregators: list[str], *, k: int = 3, limit: int = 50, max_tokens: int = 8,
                              seed: int = 0) -> dict:
    """Every candidate aggregator merges the same k answers per question; accuracy of its final letter."""
    by_id = {q.id: q for q in questions}
    records = profile["records"][:limit]
    t0 = time.perf_counter()
    prompts = []
    majority_ok = 0
    for rec in records:
        picked = recruit_candidates(profile, candidates_from, runner.index.names, rec, k, seed)
        q = by_id[rec["id"]]
        prompts.append((rec, picked, aggregation_messages(question_messages(q), [(e, rec["raw"][e]) for e in picked])))
        votes = Counter(rec["answers"][e] for e in picked if rec["answers"][e])
        majority_ok += int(bool(votes) and votes.most_common(1)[0][0] == rec["gold"])
    prompts.sort(key=lambda p: len(p[2][0]["content"]))  # similar lengths batch together
    calls = [lambda m=m, a=a, r=rec: runner.ask(a, m, max_tokens, _seed(r["id"], seed + 1))
             for rec, _, m in prompts for a in aggregators]
    results = await runner.bounded(calls, "aggregation")
    scores = {a: {"correct": 0, "total": 0, "unparsed": 0} for a in aggregators}
    costs = {a: Cost() for a in aggregators}
    it = iter(results)
    for rec, picked, _ in prompts:
        q = by_id[rec["id"]]
        rec["candidates"] = picked
        rec["aggregated"] = {}
        for a in aggregators:
            r = next(it)
            costs[a].add(r)
            letter = extract_letter(r.completion.text if r.ok else "", q.choices)
            rec["aggregated"][a] = letter
            scores[a]["total"] += 1
            scores[a]["correct"] += int(letter == rec["gold"])
            scores[a]["unparsed"] += int(letter is None)
    for a in aggregators:
        scores[a]["accuracy"] = round(scores[a]["correct"] / max(1, scores[a]["total"]), 6)
        scores[a].update(costs[a].as_dict())
    marked = runner.registry.aggregator.name if runner.registry.aggregator else None
    best = max(aggregators, key=lambda a: (scores[a]["accuracy"], a == marked))
    return {"k": k, "n_questions": len(records), "scores": scores, "best": best,
            "majority_of_candidates": round(majority_ok / max(1, len(records)), 6),
            "wall_s": round(time.perf_counter() - t0, 2)}


def select_questions(data: str, split: str, limit: int | None, cache_dir: Path | None = None) -> list:
    if data != "mmlu":
        raise ValueError(f"unknown data set '{data}' (known: mmlu)")
    from coe.data.mmlu import by_split, load_mmlu

    questions = sorted(by_split(load_mmlu(cache_dir), split), key=lambda q: q.id)  # id = content hash: a stable shuffle
    return questions[:limit] if limit else questions
