"""The option letter a model chose, read out of free text; None when it cannot be told.

Handles, in order of trust:
  "The answer is (B)", "Answer: C. Paris", "correct option is D", "Final answer: **A**"
  a leading letter: "B", "B.", "(B)", "B) Paris", "**C**", "[D]"
  the text of exactly one choice: "Mitochondria" when choice C is "Mitochondria"
  exactly one standalone letter anywhere: "I would go with C here"
The article "A" ("A cell is ...") is not read as option A. Two different letters
in the last tier ("A or B") is ambiguous: None.
"""

from __future__ import annotations

import re

LETTERS = "ABCD"

_MARKUP = re.compile(r"[*_`#]")
_STATED = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would be|:|=|-)?\s*(?:option\s*|choice\s*)?[\(\[]?([A-Z])(?![A-Za-z])",
    re.IGNORECASE,
)
_LEADING = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\].:,]|\s*$|\s+[-–—:]|\s+(?=[A-Z0-9]))")
_STANDALONE = re.compile(r"(?<![A-Za-z'])[\(\[]?([A-Z])[\)\]]?(?![A-Za-z'])")


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s.lower())).strip()


def extract_letter(text: str, choices: list[str] | tuple[str, ...] | None = None, letters: str = LETTERS) -> str | None:
    if not text:
        return None
    t = _MARKUP.sub("", text).strip()
    if not t:
        return None
    for m in _STATED.finditer(t):
        letter = m.group(1).upper()
        # "answer is a ..." with a lowercase a is an article, not option A
        if letter in letters and not (m.group(1) == "a" and t[m.end():m.end() + 1] == " "):
            return letter
    m = _LEADING.match(t)
    if m and m.group(1) in letters:
        rest = t[m.end(1):]
        is_article = m.group(1) == "A" and re.match(r"\s+[a-z]", rest) is not None
        if not is_article:
            return m.group(1)
    if choices:
        norm = _norm(t)
        hits = [letters[i] for i, c in enumerate(choices)
                if i < len(letters) and len(_norm(c)) >= 3 and re.search(rf"\b{re.escape(_norm(c))}\b", norm)]
        if len(hits) == 1:
            return hits[0]
    found = set()
    for m in _STANDALONE.finditer(t):
        letter = m.group(1)
        if letter not in letters:
            continue
        if letter == "A" and re.match(r"\s+(?!(?:or|and)\b)[a-z]", t[m.end():]) and not m.group(0).startswith(("(", "[")):
            continue  # the article
        if letter == "I":
            continue
        found.add(letter)
    return found.pop() if len(found) == 1 else None
