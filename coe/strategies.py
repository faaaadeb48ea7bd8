"""Answer strategies: an expert is a model *and* the way it is asked to answer.

CoE's experts are models with their prompts and tools; with only a few small models here, different
strengths come from how a model is asked (experts.yaml `strategy:`, attachable to any expert):

  direct   the chat as it is; the answer is the generated text.
  program  program-of-thought: the model writes `solution()`, which runs in the sandbox
           (coe/data/code_exec.py, the code runner's isolation) and what it returns is the answer. A program
           that does not run, or returns nothing usable, falls back to a direct answer from the same model;
           both attempts are paid. A question with lettered options is answered directly: a program cannot
           compute a letter (measured: programs scored 0.24 on MMLU where direct answers scored 0.46).
  choices  option scoring: when the last user message lists lettered options ("A. ...", "B) ..."), the
           engine scores each letter as the continuation of "Answer:" (one pass over the prompt, nothing
           generated) and the likeliest letter is the answer. Other requests are answered directly.

Each answer carries a confidence in [0, 1] that a cascade can act on: direct, the geometric mean of the
generated tokens' probabilities (exp of the mean log-probability, where the engine reports it); program,
the same measure over the program's tokens when it ran and returned a number (1 where the engine reports
no log-probabilities), else the direct fallback's; choices, the top option's share of the options'
probability.

A strategy that is not `direct` buffers: its answer is known only once its attempt is over, so a streamed
request gets the answer in one piece.
"""

from __future__ import annotations

import asyncio
import math
import re
import string
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from coe.aggregation import last_user_text
from coe.data.code_extract import code_blocks, defines
from coe.data.scoring import ANSWER_PREFIX
from workers.jobs import Completion

PROGRAM_TIMEOUT_S = 5.0
PROGRAM_INSTRUCTION = (
    "Solve the problem above by writing a Python program. Define a function `solution()` that computes the "
    "final answer step by step and returns it as a number. Use only the Python standard library and do not "
    "read input. Reply with the code only, in one ```python block."
)
_OPTION = re.compile(r"^\s*\(?([A-J])[.):]\s+\S", re.M)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


@dataclass(frozen=True)
class Ask:
    """What a strategy's first job asks: its messages, and the continuations to score instead of generating."""

    messages: list[dict]
    choices: list[str] | None = None


@dataclass(frozen=True)
class Verdict:
    """A strategy's reading of its attempt: the answer's text (None: answer directly instead) and confidence."""

    text: str | None
    confidence: float | None
    note: str = ""


def direct_confidence(completion: Completion) -> float | None:
    """exp(mean token log-probability) of a generated answer, where the engine reports it."""
    lp = completion.mean_logprob
    return None if lp is None or not math.isfinite(lp) else math.exp(min(0.0, lp))


class Strategy(ABC):
    name: ClassVar[str]
    buffers: ClassVar[bool] = True

    @abstractmethod
    def ask(self, messages: list[dict]) -> Ask | None:
        """The first job's request, or None when the strategy does not apply (the request is answered directly)."""

    @abstractmethod
    async def verdict(self, ask: Ask, completion: Completion) -> Verdict:
        """The answer the attempt gives (may run code off the event loop)."""


class Direct(Strategy):
    name = "direct"
    buffers = False

    def ask(self, messages: list[dict]) -> Ask | None:
        return None

    async def verdict(self, ask: Ask, completion: Completion) -> Verdict:
        return Verdict(completion.text, direct_confidence(completion))


def lettered_options(text: str) -> str:
    """The option letters a question lists ("A. x" / "B) y" / "(C) z" lines), in order from A; '' for none."""
    found = [m.group(1) for m in _OPTION.finditer(text)]
    letters = ""
    for letter in string.ascii_uppercase[:10]:
        if letter not in found:
            break
        letters += letter
    return letters if len(letters) >= 2 else ""


class Choices(Strategy):
    name = "choices"

    def ask(self, messages: list[dict]) -> Ask | None:
        letters = lettered_options(last_user_text(messages))
        if not letters or (messages and messages[-1].get("role") == "assistant"):
            return None
        return Ask([*messages, {"role": "assistant", "content": ANSWER_PREFIX}], [" " + x for x in letters])

    async def verdict(self, ask: Ask, completion: Completion) -> Verdict:
        scores = completion.choice_logprobs or []
        if len(scores) != len(ask.choices or []):
            return Verdict(None, None, "the engine returned no option scores")
        top = max(range(len(scores)), key=scores.__getitem__)
        peak = max(scores)
        share = 1.0 / sum(math.exp(s - peak) for s in scores)
        letter = string.ascii_uppercase[top]
        option = _option_text(last_user_text(ask.messages), letter)
        return Verdict(f"The answer is {letter}." + (f" {option}" if option else ""), share)


def _option_text(question: str, letter: str) -> str:
    m = re.search(rf"^\s*\(?{letter}[.):]\s+(.+)$", question, re.M)
    return m.group(1).strip() if m else ""


def program_source(text: str) -> str | None:
    """The program in a model's answer: the python block that defines solution() (else the first block, else
    the raw text if it defines it), with a call that prints what solution() returns."""
    blocks = [code for tag, code in code_blocks(text) if tag in ("", "python", "py", "python3")]
    code = next((b for b in blocks if defines(b, "solution")), blocks[0] if blocks else text)
    if not defines(code, "solution"):
        return None
    return f"{code.rstrip()}\n\nprint(repr(solution()))\n"


def number_of(output: str) -> str | None:
    """The number a program printed last, in a plain form ('42', '3.5'); None when it printed none."""
    line = next((ln for ln in reversed(output.strip().splitlines()) if ln.strip()), "")
    found = _NUMBER.findall(line.replace(",", ""))
    if not found:
        return None
    raw = found[-1]
    try:
        value = float(eval_fraction(raw))
    except (ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(value):
        return None
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def eval_fraction(raw: str) -> float:
    num, _, den = raw.partition("/")
    return float(num) / float(den) if den else float(num)


class Program(Strategy):
    name = "program"

    def ask(self, messages: list[dict]) -> Ask | None:
        if not messages or messages[-1].get("role") != "user" or lettered_options(last_user_text(messages)):
            return None
        last = messages[-1]
        return Ask([*messages[:-1], {**last, "content": f"{last_user_text([last])}\n\n{PROGRAM_INSTRUCTION}"}])

    async def verdict(self, ask: Ask, completion: Completion) -> Verdict:
        from coe.data.code_exec import SandboxError, run_program

        source = program_source(completion.text)
        if source is None:
            return Verdict(None, None, "no solution() in the answer")
        try:
            result = await asyncio.to_thread(run_program, source, PROGRAM_TIMEOUT_S, 512)
        except SandboxError as exc:
            return Verdict(None, None, f"sandbox: {exc}")
        value = number_of(result.output) if result.passed else None
        if value is None:
            return Verdict(None, None, f"program {result.status}: {(result.error or result.output)[-120:]}")
        code = source.rsplit("\n\nprint(", 1)[0]
        confidence = direct_confidence(completion)
        return Verdict(f"```python\n{code}\n```\n\nThe program returns {value}.\nThe answer is {value}.",
                       1.0 if confidence is None else confidence)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Direct(), Program(), Choices())}


def get_strategy(name: str) -> Strategy:
    return STRATEGIES[name]
