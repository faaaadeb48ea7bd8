"""What a sentence embedding blurs and a cached answer must not: the semantic cache's lexical guard.

"What is 17 times 23?" and "What is 17 times 24?", "reverse a list in Python" and "... in Rust", "Fahrenheit to
Celsius" and "Celsius to Fahrenheit" lie closer (cosine 0.9 to 0.99 with the service's encoder) than most true
paraphrases, so no cosine threshold alone keeps them apart (coe bench cache measures it). Two turns may share an
answer only if they also have the same numbers, the same negation, each other's names (capitalised words), the same
direction ("X to Y"), and no content word of one replaced by another word in the other; words may be added or
dropped, which the cosine threshold then judges. Strict by design: a miss costs one generation, a false hit answers
another question.
"""

from __future__ import annotations

import re

STOPWORDS = frozenset(
    "a an the of to in on for with and or is are was were be been do does did how what which who whom when where why "
    "can could should would will i me my you your it its this that these those there their them we our us at by from "
    "as into about than then so if any some much many what's how's give tell please".split())
NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve"
                                                 .split()) if w != "one"}  # "one" is as often a pronoun ("buy one")
ORDINALS = {w: str(i) for i, w in enumerate("first second third fourth fifth sixth seventh eighth ninth tenth".split(),
                                            start=1)}
WORD = re.compile(r"[A-Za-z][A-Za-z+#'\-]*|\d+(?:[.,]\d+)*")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
NEGATION = re.compile(r"\b(?:not|no|never|none|nor|neither|cannot|without)\b|n't\b", re.IGNORECASE)
NAME = re.compile(r"(?<![.?!:]\s)(?<!^)\b[A-Z][A-Za-z+#]+")
DIRECTION = re.compile(r"\b(?:to|into)\s+(?:an?\s+|the\s+)?([A-Za-z][A-Za-z+#\-]*)", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return WORD.findall(text)


def numbers(text: str) -> list[str]:
    """The numbers of `text`, digits or words ("fifteen", "second"), sorted."""
    lower = [w.lower() for w in _words(text)]
    spelled = [NUMBER_WORDS.get(w) or ORDINALS.get(w) for w in lower]
    return sorted(NUMBER.findall(text) + [n for n in spelled if n])


def negated(text: str) -> bool:
    """An odd number of negations."""
    return len(NEGATION.findall(text)) % 2 == 1


def _plain(word: str) -> str:
    return re.sub(r"'s$", "", word.lower())


def names(text: str) -> set[str]:
    """Capitalised words not at the start of a sentence ("Python", "Celsius"), lower-cased."""
    return {w.lower() for w in NAME.findall(text)}


def _stem(word: str) -> str:
    word = _plain(word)
    for suffix in ("ing", "es", "s", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)]
    return word


def content(text: str) -> set[str]:
    """The content words, crudely stemmed."""
    return {_stem(w) for w in _words(text) if w.lower() not in STOPWORDS and not w[0].isdigit()}


def directions(text: str) -> set[str]:
    """What each "to"/"into" points at ("... Fahrenheit to Celsius": celsius)."""
    return {_stem(m) for m in DIRECTION.findall(text) if m.lower() not in STOPWORDS}


def same_literals(a: str, b: str) -> bool:
    """Whether two turns whose embeddings are close may share an answer (the module's rules)."""
    if numbers(a) != numbers(b) or negated(a) != negated(b):
        return False
    words_a, words_b = {_plain(w) for w in _words(a)}, {_plain(w) for w in _words(b)}
    if not (names(a) <= words_b and names(b) <= words_a):
        return False
    to_a, to_b = directions(a), directions(b)
    if to_a and to_b and to_a != to_b:
        return False
    content_a, content_b = content(a), content(b)
    return not (content_a - content_b and content_b - content_a)
