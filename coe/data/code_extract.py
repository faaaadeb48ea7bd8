"""The completion of a HumanEval prompt, read out of a chat model's answer.

An answer may hold its code in fenced blocks (closed, or cut off by max_tokens) or as raw
text, and the code may either re-state the whole function (``def <entry_point>(...)`` with
imports and helpers), or be only the body that continues the prompt. As evalplus' and the
bigcode harness' sanitizers do:

- the block that defines the entry point wins; else the first Python block; else the raw text;
- a re-stated function is kept with its imports, helpers, classes and constants; top-level
  statements (example calls, prints, `if __name__ == "__main__":`, asserts) are dropped, so
  they do not run (or wait for stdin) before the tests; it is appended after the prompt, where
  it replaces the prompt's stub while the prompt's imports and helpers stay;
- a body is indented to the function's level if it came flush left, and cut at the first
  flush-left line that is not a def, class, import, decorator or comment;
- text that does not parse (prose after the code, a line cut off) is trimmed from the end
  until it does.
"""

from __future__ import annotations

import ast
import re
import textwrap

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_CODE_START = re.compile(r"^(?:from\s|import\s|def\s|async\s+def\s|class\s|@)")
_KEEP_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
               ast.AnnAssign)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, code) of every fenced block; the last may be unclosed."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def defines(code: str, name: str) -> bool:
    return re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _parsable_prefix(lines: list[str], head: str = "") -> list[str]:
    """The longest leading run of `lines` that parses after `head` (all of them if none does)."""
    for end in range(len(lines), 0, -1):
        if _parses(head + "\n".join(lines[:end]) + "\n"):
            return lines[:end]
    return lines


def _pick(answer: str, entry_point: str) -> tuple[str, bool]:
    """The code to use, and whether it came from a fenced block."""
    blocks = code_blocks(answer)
    python = [c for tag, c in blocks if tag in _PYTHON_TAGS] or [c for _, c in blocks]
    for code in python:
        if defines(code, entry_point):
            return code, True
    if python:
        return python[0], True
    return answer, False


def _restated(code: str, fenced: bool) -> str:
    lines = textwrap.dedent(code).strip("\n").splitlines()
    if not fenced:  # prose before the code
        first = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), 0)
        lines = lines[first:]
    lines = _parsable_prefix(lines)
    source = "\n".join(lines) + "\n"
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    kept = []
    for node in tree.body:
        if isinstance(node, _KEEP_NODES):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1:node.end_lineno]))
    return "\n\n".join(kept) + "\n"


def _body(code: str, prompt: str) -> str:
    lines = code.strip("\n").splitlines()
    if not lines:
        return ""
    if not lines[0][:1].isspace():  # came flush left: indent to the function body
        lines = [("    " + line) if line.strip() else line for line in lines]
    for i, line in enumerate(lines):
        if line.strip() and not line[:1].isspace() and not _CODE_START.match(line) and not line.startswith("#"):
            lines = lines[:i]
            break
    head = prompt if prompt.endswith("\n") else prompt + "\n"
    return "\n".join(_parsable_prefix(lines, head)) + "\n"


def extract_completion(answer: str, prompt: str, entry_point: str) -> str:
    """Text to append to `prompt` so that prompt + completion is the model's solution."""
    code, fenced = _pick(answer or "", entry_point)
    if defines(code, entry_point):
        return "\n" + _restated(code, fenced)
    body = _body(code, prompt)
    return body if prompt.endswith("\n") else "\n" + body
