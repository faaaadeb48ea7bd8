"""Benchmark items as model inputs: MMLU by letter log-likelihood, HumanEval by generated code.

MMLU: the chat is the question with its lettered options and an instruction, then an
assistant message "Answer:" that the engine continues (a prefill); the four choices are
" A", " B", " C", " D", so each letter is scored as the token right after "Answer:", as in
the classic MMLU prompt ("...\\nAnswer: B"). With the leading space a letter is usually a single
token of BPE and SentencePiece vocabularies, so the four choices are alike in length.
The prediction is the letter of the highest log-probability; ties go to the earlier letter.
A user's own multiple-choice question (`coe profile --data FILE`) is asked the same way with 2 to 10 options.

HumanEval: the problem's chat (coe/data/humaneval.py), answered greedily; the completion is
read out of the answer by coe/data/code_extract.py and judged by coe/data/code_exec.py.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from coe.data.humaneval import Problem
from coe.data.mmlu import LETTERS, Question

ANSWER_PREFIX = "Answer:"
LETTER_CHOICES = [" " + letter for letter in LETTERS]
MMLU_INSTRUCTION = "Answer with the letter (A, B, C or D) of the correct option."
CODE_MAX_TOKENS = 512
MMLU_MAX_TOKENS = 48  # an asked (not scored) question: room for "The answer is B. <option>"


@dataclass(frozen=True)
class ScoringTask:
    """A chat and the continuations to score (a job with request.choices)."""

    messages: list[dict]
    choices: list[str] = field(default_factory=lambda: list(LETTER_CHOICES))


@dataclass(frozen=True)
class GenerationTask:
    """A chat to answer greedily (an ordinary generation job)."""

    messages: list[dict]
    max_tokens: int = CODE_MAX_TOKENS
    temperature: float = 0.0


def mmlu_scoring(question: Question) -> ScoringTask:
    return ScoringTask([{"role": "user", "content": f"{question.prompt}\n\n{MMLU_INSTRUCTION}"},
                        {"role": "assistant", "content": ANSWER_PREFIX}])


def lettered_scoring(question: str, options: list[str]) -> ScoringTask:
    """Any multiple-choice question, asked as MMLU is (the same prompt and instruction for four options)."""
    letters = string.ascii_uppercase[: len(options)]
    prompt = question + "\n" + "\n".join(f"{letter}. {o}" for letter, o in zip(letters, options))
    instruction = f"Answer with the letter ({', '.join(letters[:-1])} or {letters[-1]}) of the correct option."
    return ScoringTask([{"role": "user", "content": f"{prompt}\n\n{instruction}"},
                        {"role": "assistant", "content": ANSWER_PREFIX}], [" " + letter for letter in letters])


def predicted_letter(logprobs: list[float]) -> str:
    """The letter of the highest log-probability (the first on a tie), for 2 to 10 options."""
    if not 2 <= len(logprobs) <= 10:
        raise ValueError(f"expected 2 to 10 log-probabilities (one per option), got {len(logprobs)}")
    return string.ascii_uppercase[max(range(len(logprobs)), key=logprobs.__getitem__)]


def humaneval_generation(problem: Problem, max_tokens: int = CODE_MAX_TOKENS) -> GenerationTask:
    return GenerationTask(problem.messages(), max_tokens)
