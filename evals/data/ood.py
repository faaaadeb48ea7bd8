"""Out-of-domain queries: text that belongs to none of MMLU's categories.

Written by hand for the routing benchmark, before any router was run on it: everyday
chit-chat, gibberish (keyboard mashing, random tokens), and everyday requests in other
languages (not academic questions translated, which would be in-domain). A good router
sends these to the fallback expert; one without an uncertainty fallback cannot.
"""

from __future__ import annotations

import random
import string

CHITCHAT = [
    "hi there! how's your day going?",
    "good morning :)",
    "thanks, that's all for now",
    "lol that's hilarious",
    "can you tell me a joke?",
    "what's up?",
    "I'm bored, talk to me",
    "ok cool",
    "do you like pizza or burgers better?",
    "bye, see you tomorrow",
    "hey, are you a robot?",
    "what should I name my new puppy?",
    "ugh mondays am I right",
    "sorry, wrong chat",
    "haha nice one",
    "can you say something nice to cheer me up",
    "what's your favourite colour?",
    "I just got back from the gym and I'm starving",
    "happy birthday to my best friend!",
    "hmm let me think about it and get back to you",
]

OTHER_LANGUAGES = [
    "Salut, ça va ? On se voit ce soir ?",
    "Quel temps fera-t-il demain à Lyon ?",
    "Hola, ¿qué tal tu fin de semana?",
    "¿Me recomiendas una película para esta noche?",
    "Hallo, wie geht's dir heute?",
    "Wo ist der nächste Supermarkt?",
    "Ciao, come stai? Andiamo a prendere un caffè?",
    "Olá, tudo bem? Vamos almoçar juntos amanhã?",
    "Hoi, hoe gaat het met je?",
    "Привет, как дела? Что делаешь вечером?",
    "你好，今天晚上我们吃什么？",
    "周末你想去哪里玩？",
    "こんにちは、お元気ですか？",
    "今日はいい天気ですね。",
    "안녕하세요, 오늘 뭐 해요?",
    "مرحبا، كيف حالك اليوم؟",
    "Merhaba, nasılsın? Akşam ne yapıyorsun?",
    "Cześć, co słychać?",
    "Hej, ska vi ses på fredag?",
    "नमस्ते, आप कैसे हैं?",
]

GIBBERISH_FIXED = [
    "asdfghjkl",
    "qwerty uiop zxcvbnm",
    "jjjjjjjjjjjjjjjjjj",
    "blorf snazzle quimp frobnitz wug",
    "??!?!!",
    "aaaaaaaaaaaaaaaaaaaaaaaa",
    "xkcd 1234 lorem ipsum dolor sit amet",
    "ffff gggg hhhh",
    "mnbvcxz poiuytrewq",
    "12345 67890 13579",
]


def gibberish(n: int = 10, seed: int = 0) -> list[str]:
    """Random lower-case 'words' (seeded, so every run sees the same strings)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))) for _ in range(rng.randint(2, 7))]
        out.append(" ".join(words))
    return out


def ood_queries() -> list[tuple[str, str]]:
    """(kind, text) pairs: 20 chit-chat, 20 gibberish, 20 other-language everyday queries."""
    return ([("chit-chat", t) for t in CHITCHAT] + [("gibberish", t) for t in GIBBERISH_FIXED + gibberish()]
            + [("other language", t) for t in OTHER_LANGUAGES])
