"""The follow-up turns of the conversation set (coe/data/conversations.py): elliptical turns that stay on the
conversation's topic, written by hand for this set before any router was run on them.

Each list is split in two by position (even: validation conversations, odd: test conversations), so a
threshold calibrated on validation never saw a test conversation's follow-up wording.
"""

from __future__ import annotations

GENERIC = [
    "why?", "can you explain that more simply?", "make it shorter", "give me an example",
    "are you sure?", "hmm, I don't get the second part", "go on", "say it again but simpler",
    "what did you mean by that?", "is there another way?", "can you put that in a table?", "why is that?",
    "ok, and then?", "can you double-check that?", "bullet points please", "in more detail please",
    "what's the catch?", "summarize that in one sentence", "and the other way round?", "thanks! one more thing, why does that work?",
]

BY_ROUTE = {
    "coding": ["and now in Rust?", "can you add error handling?", "it still throws the same error",
               "what about in Go?", "add type hints", "can you write tests for it?"],
    "writing": ["make it more formal", "shorter, and a bit funnier", "now a version for Twitter",
                "less cheesy please", "can you change the ending?", "same thing but warmer"],
    "chat": ["haha really?", "what would you do?", "tell me more", "that's kind of you", "lol ok, and you?",
             "do you ever get bored of that?"],
    "reasoning": ["but what if the third person lied?", "walk me through the steps", "how can you be sure that's the only answer?",
                  "what if we swap the first two?", "does it still hold with five of them?", "where does the trick lie?"],
    "extraction": ["now as JSON", "only the dates please", "add the phone numbers too", "as a CSV instead",
                   "just the names, one per line", "which fields did you leave out?"],
    "math_word_problems": ["what if there were 12 instead?", "show the working", "and per week?",
                           "what if she had twice as many?", "how much is left over then?", "and if the price goes up 10%?"],
    "math": ["now prove it", "what if n is odd?", "and the derivative?", "does that hold for negative numbers?",
             "can you do it without the formula?", "what about the limit at infinity?"],
    "physics": ["what if there's friction?", "and on the Moon?", "what if the mass doubles?", "and at relativistic speeds?",
                "which force dominates then?", "what about the energy lost?"],
    "chemistry": ["what about at a higher temperature?", "balance it for me", "and with a catalyst?",
                  "which one is the oxidizing agent?", "what if it's in water?", "and the products?"],
    "biology": ["and in plants?", "which organelle does that?", "is it the same in bacteria?", "and how did that evolve?",
                "what happens if that gene is missing?", "and in mammals?"],
    "computer science": ["what's the time complexity of that?", "and the space complexity?", "could a heap do it faster?",
                         "what about the worst case?", "is that decidable?", "and with a hash table?"],
    "engineering": ["what if the load doubles?", "and with steel instead?", "what safety factor would you use?",
                    "how does temperature change that?", "and for a longer span?", "what about vibration?"],
    "history": ["and what happened after that?", "who else was involved?", "how did it end?", "and why then, not earlier?",
                "what did people at the time think?", "how long did that last?"],
    "philosophy": ["but isn't that circular?", "what would Kant say?", "and the strongest objection?",
                   "is that the same as determinism?", "who disagreed with that?", "how does that square with free will?"],
    "law": ["does that apply in the UK too?", "what if there was no written contract?", "can they appeal that?",
            "and if the tenant is a minor?", "is that a crime or a civil matter?", "what's the precedent?"],
    "politics": ["and in a parliamentary system?", "who benefits from that?", "has that ever been overturned?",
                 "what do the critics say?", "and at the state level?", "how do other countries do it?"],
    "culture": ["who else painted like that?", "and the music of that period?", "which of their works came first?",
                "what influenced that style?", "is it still performed today?", "any similar films?"],
    "economics": ["what if interest rates rise?", "and in the long run?", "what happens to unemployment then?",
                  "does that cause inflation?", "and for an open economy?", "who loses out?"],
    "geography": ["and its neighbours?", "what's the climate like there?", "which river is that on?",
                  "and the population?", "how high is it?", "which is bigger?"],
    "psychology": ["is that backed by studies?", "does it work on children too?", "who came up with that?",
                   "is that the same as conditioning?", "how would you test that?", "and in adults?"],
    "business": ["and for a small startup?", "what would the margin be?", "how do I pitch that to investors?",
                 "and the risks?", "what if sales drop 20%?", "should we hire for that first?"],
    "health": ["is that safe for kids?", "how long until it gets better?", "should I see a doctor for that?",
               "and during pregnancy?", "what are the side effects?", "how much per day?"],
    "other": ["any cheaper option?", "and where do I buy that?", "how long does it take?", "what if it rains?",
              "is there an easier way?", "and for two people?"],
}

SWITCH_LEADS = ["", "", "", "Different question: ", "Something else: ", "Unrelated: ", "Ok, new topic. ", "Also: "]
"""How a switch turn starts: mostly plainly, sometimes with a marker a user might type."""


def pool(items: list[str], split: str) -> list[str]:
    """The half of `items` a split draws from: even positions for validation, odd for test."""
    return items[0::2] if split == "validation" else items[1::2]
