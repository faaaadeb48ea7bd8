"""Continuation phrases: turns that lean on the conversation instead of naming a topic ("how so?", "try again").

A latest turn close to one of them stays on the conversation's route even where the router alone is sure of another
one ("make it shorter" alone reads as writing; after a coding question it is about the code). Written for the
service, apart from the conversation set's follow-ups: none within cosine 0.7 of one of them
(tests/test_conversations_data.py), so the set measures phrasings the list does not hold.
"""

from __future__ import annotations

CONTINUATIONS = (
    "tell me more about that", "what do you mean?", "can you elaborate?", "explain it again", "could you simplify it?",
    "please expand on this", "rewrite it", "what about the other one?", "how so?", "can you fix it?", "is that right?",
    "why not?", "ok continue", "do it again but better", "now do the same for the second one", "what if I change it?",
    "shorten this", "same but in a list", "which one is better?", "how does that compare?", "and the rest?",
    "now translate that", "add more detail", "what happens next?", "explain the last step",
    "but why does it work that way?", "can you check it again?", "I still don't understand", "ok thanks, and?",
    "could you format it nicely?", "what's the difference?", "try again", "another one please", "what else?",
    "and if not?", "show me how", "how would that look?", "can you clarify?", "so what does that mean for me?",
    "in simpler words", "and how about now?", "keep going", "what about this part?", "why did you say that?",
)
