"""Benchmark items as model inputs: an MMLU question as a letter-scoring chat, a HumanEval problem as a chat."""

from __future__ import annotations

import pytest

from coe.data.humaneval import Problem
from coe.data.mmlu import Question
from coe.data.scoring import (
    ANSWER_PREFIX, LETTER_CHOICES, humaneval_generation, lettered_scoring, mmlu_scoring, predicted_letter,
)


def test_mmlu_question_is_scored_by_the_letter_after_answer():
    q = Question("q1", "Which planet is largest?", ("Mars", "Jupiter", "Venus", "Earth"), 1, "astronomy", "physics",
                 "STEM", "test")
    task = mmlu_scoring(q)
    user, assistant = task.messages
    assert user["role"] == "user" and user["content"].startswith(q.prompt) and "B. Jupiter" in user["content"]
    assert assistant == {"role": "assistant", "content": ANSWER_PREFIX}
    assert task.choices == LETTER_CHOICES == [" A", " B", " C", " D"]
    assert predicted_letter([-3.2, -0.4, -2.0, -5.0]) == q.answer_letter == "B"
    assert predicted_letter([-1.0, -1.0, -2.0, -2.0]) == "A"  # a tie goes to the earlier letter
    with pytest.raises(ValueError):
        predicted_letter([0.0])
    assert lettered_scoring(q.question, list(q.choices)) == task  # a user's question with 4 options: MMLU's prompt
    two = lettered_scoring("Is water wet?", ["yes", "no"])
    assert two.choices == [" A", " B"] and "(A or B)" in two.messages[0]["content"] and "B. no" in two.messages[0]["content"]
    assert predicted_letter([-2.0, -0.5]) == "B"


def test_humaneval_problem_is_a_greedy_chat():
    p = Problem("HumanEval/0", "def f(x):\n    \"\"\"Double x.\"\"\"\n", "    return 2 * x\n",
                "def check(candidate):\n    assert candidate(2) == 4\n", "f", "test")
    task = humaneval_generation(p, max_tokens=300)
    assert task.messages == p.messages() and task.max_tokens == 300 and task.temperature == 0.0
    judged = p.submission(p.canonical_solution)
    assert judged.entry_point == "f" and judged.solution.endswith("return 2 * x\n\n")
    assert "def check(candidate)" in judged.tests and "return 2 * x" not in judged.tests
