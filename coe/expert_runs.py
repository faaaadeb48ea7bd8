"""Every expert answers the mixed workload through the real dispatch path, and each answer is graded.

MMLU items (and a user's multiple-choice questions) are scoring jobs (the worker asks the engine for the
log-probability of each answer letter); HumanEval items are generation jobs whose code then runs in the
sandbox (coe/data/code_exec.py), never in this process; maths items are generation jobs graded by the final
number of the answer (coe/data/maths.py); a user's exact-match question is a generation job graded by
normalised exact match (coe/data/answered.py). Each answer keeps its tokens and its share of the
engine time of the batch it ran in, so quality can be set against compute. `coe profile --data mixed|FILE`
and `coe bench quality` start here.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass, field

from coe.data.answered import exact_match
from coe.data.code_exec import judge_many
from coe.data.code_extract import extract_completion
from coe.data.maths import is_correct
from coe.data.letters import extract_letter
from coe.data.mixed import Item
from coe.data.scoring import predicted_letter
from coe.pipeline import ChatInput
from coe.pipeline_types import PipelineError
from coe.profiling import Runner
from routers.skills_profile import build_profile
from workers.jobs import JobResult

CODE_TIMEOUT_S = 10.0


@dataclass
class Answer:
    """One expert's graded answer to one item."""

    expert: str
    correct: bool
    text: str  # the letter for MMLU, the generated answer for code
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_s: float = 0.0  # this answer's share of its batch's engine time
    error: str = ""
    confidence: float | None = None  # the answer's own confidence (coe/strategies.py): what a cascade acts on
    strategy: str = "direct"  # how it was answered; "program->direct" when the program failed

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ItemRecord:
    item: Item
    skills: list[str] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)

    def as_profile_record(self) -> dict:
        """The shape routers/skills_profile.build_profile counts: gold vs each expert's answer (the letter, or
        pass/fail of a generated answer)."""
        gold = self.item.gold if self.item.choices is not None else "pass"
        return {"id": self.item.id, "subcategory": self.item.label, "category": self.item.domain,
                "skills": self.skills, "gold": gold,
                "answers": {e: (a.text or None) if self.item.choices is not None else ("pass" if a.correct else "fail")
                            for e, a in self.answers.items()}}


def graded_answer(expert: str, item: Item, result: JobResult) -> Answer:
    """The answer as graded as it can be now; code answers are graded later by grade_code."""
    if not result.ok:
        return Answer(expert, False, "", error=f"{result.error_type}: {result.error}")
    c = result.completion
    share = result.generate_s / max(1, result.batch_size)
    if item.choices is not None:
        letter = predicted_letter(c.choice_logprobs or [])
        return Answer(expert, letter == item.gold, letter, c.prompt_tokens, c.completion_tokens, share)
    return Answer(expert, graded_text(item, c.text), c.text, c.prompt_tokens, c.completion_tokens, share)


async def ask(runner: Runner, expert: str, item: Item, messages: list[dict] | None = None) -> JobResult:
    """One request for `item` to `expert` (model=<expert>), on the path a client's request takes."""
    inp = ChatInput(model=expert, messages=messages or item.messages, max_tokens=item.max_tokens, temperature=0.0,
                    seed=0, choices=item.choices, confidence=True)
    plan = await runner.pipeline.plan(inp)
    job = plan.jobs[0]
    await runner.queue.submit(job)
    return await runner.queue.wait_result(job.id, runner.settings.request_timeout_s)


def graded_text(item: Item, text: str) -> bool:
    """Whether a final answer's text is right: the letter read out of it (MMLU asked), its final number (maths),
    exact match (a user's question); code is graded by running it (grade_code)."""
    if item.question is not None:
        return extract_letter(text, item.question.choices) == item.gold
    if item.domain == "maths":
        return is_correct(text, item.gold)
    return item.problem is None and exact_match(text, item.gold)


async def answer(runner: Runner, expert: str, item: Item) -> Answer:
    """`expert`'s graded answer to `item` as a client gets it (pipeline.run: the expert's strategy, its fallback,
    every attempt's tokens); a scored item (choices) is one scoring job."""
    if item.choices is not None:
        return graded_answer(expert, item, await ask(runner, expert, item))
    inp = ChatInput(model=expert, messages=item.messages, max_tokens=item.max_tokens, temperature=0.0, seed=0)
    try:
        out = await runner.pipeline.run(inp)
    except PipelineError as exc:
        return Answer(expert, False, "", error=f"{type(exc).__name__}: {exc.message}")
    final = out.answers[-1]
    return Answer(expert, graded_text(item, out.text), out.text, out.prompt_tokens, out.completion_tokens,
                  final.generate_s, confidence=final.confidence, strategy=final.strategy)


async def grade_code(pairs: list[tuple[Item, Answer]], workers: int = max(2, (os.cpu_count() or 2) // 2)) -> None:
    """Judge each generated solution, sandboxed; an answer is correct when it passes its problem's tests."""
    runnable = [(item, a) for item, a in pairs if not a.error]
    submissions = [item.problem.submission(extract_completion(a.text, item.problem.prompt, item.problem.entry_point))
                   for item, a in runnable]
    results = await asyncio.to_thread(judge_many, submissions, workers, CODE_TIMEOUT_S)
    for (_, a), r in zip(runnable, results):
        a.correct = r.passed
        if not r.passed:
            a.error = f"{r.status}: {r.error[-200:]}"


async def run_experts(runner: Runner, items: list[Item], experts: list[str]) -> list[ItemRecord]:
    """Every expert's graded answer to every item. Items are asked shortest first, expert by expert, so
    the worker's batches hold one model and pad little."""
    records = {it.id: ItemRecord(it) for it in items}
    order = sorted(items, key=lambda it: len(it.text))
    calls = [lambda it=it, e=e: answer(runner, e, it) for e in experts for it in order]
    results = await runner.bounded(calls, f"{len(experts)} experts x {len(items)} items")
    code: list[tuple[Item, Answer]] = []
    for (e, it), a in zip(((e, it) for e in experts for it in order), results):
        records[it.id].answers[e] = a
        if it.problem is not None:
            code.append((it, a))
    if code:
        runner.progress(f"running {len(code)} code answers in the sandbox")
        await grade_code(code)
    return [records[it.id] for it in items]


def mixed_profile(records: list[ItemRecord], experts: list[str], meta: dict) -> dict:
    """The profile file routers read (per route and per skill, correct/total), with tokens and engine time."""
    profile = build_profile([r.as_profile_record() for r in records], experts, meta)
    for e in experts:
        answers = [r.answers[e] for r in records if e in r.answers]
        profile["experts"][e].update({
            "prompt_tokens": sum(a.prompt_tokens for a in answers),
            "completion_tokens": sum(a.completion_tokens for a in answers),
            "engine_s": round(sum(a.engine_s for a in answers), 3),
            "errors": sum(bool(a.error) and not a.error.startswith(("failed", "timeout")) for a in answers),
        })
    return profile


def records_json(records: list[ItemRecord]) -> list[dict]:
    return [{"id": r.item.id, "domain": r.item.domain, "label": r.item.label, "text": r.item.text, "skills": r.skills,
             "answers": {e: asdict(a) for e, a in r.answers.items()}} for r in records]
