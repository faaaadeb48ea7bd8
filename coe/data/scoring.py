"""Benchmark items as model inputs: MMLU by letter log-likelihood, HumanEval by generated code.

MMLU: the chat is the question with its lettered options and an instruction, then an
assistant message "Answer:" that the engine continues (a prefill); the four choices are
" A", " B", " C", " D", so each letter is scored as the token right after "Answer:", as in
the classic MMLU prompt ("...\\nAnswer: B"). With the leading space a letter is usually a single
token of BPE and SentencePiece vocabularies, so the four choices are alike in length.
The prediction is the letter of the highest log-probability; ties go to the earlier letter.

HumanEval: the problem's chat (coe/data/humaneval.py), answered greedily; the completion is
read out of the answer by coe/data/code_extract.py and run by coe/data/code_exec.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coe.data.humaneval import Problem
from coe.data.mmlu import LETTERS, Question

ANSWER_PREFIX = "Answer:"
LETTER_CHOICES = [" " + letter for letter in LETTERS]
MMLU_INSTRUCTION = "Answer with the letter (A, B, C or D) of the correct option."
CODE_MAX_TOKENS = 512


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


def predicted_letter(logprobs: list[float]) -> str:
    """The letter of the highest log-probability (the first on a tie)."""
    if len(logprobs) != len(LETTERS):
        raise ValueError(f"expected {len(LETTERS)} log-probabilities, got {len(logprobs)}")
    return LETTERS[max(range(len(logprobs)), key=logprobs.__getitem__)]


def humaneval_generation(problem: Problem, max_tokens: int = CODE_MAX_TOKENS) -> GenerationTask:
    return GenerationTask(problem.messages(), max_tokens)
