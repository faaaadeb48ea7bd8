"""A route the default routes file does not have, declared the way a user would: a name, a
description and 10 examples. The benchmark adds it to the routes, retrains with no other change,
and measures its recall on 20 requests written separately (never trained on).

Written by hand for the benchmark before any router was run on them.
"""

from __future__ import annotations

NAME = "translation"
DESCRIPTION = "Translate text between languages, or say how a phrase is said in another language."

EXAMPLES = [
    "Translate 'where is the train station?' into German.",
    "How do you say 'thank you very much' in Japanese?",
    "Can you translate this email into Spanish for me? 'We will arrive on Monday at 10 am.'",
    "what does 'je ne sais quoi' mean in english",
    "Translate to French: The meeting has been moved to next week.",
    "Put this Italian sentence into English: 'Vorrei un caffè, per favore.'",
    "how would I say 'I'm allergic to peanuts' in Thai?",
    "Please translate the following into Portuguese: Happy birthday, I hope all your wishes come true.",
    "English to Korean: 'Nice to meet you.'",
    "Translate this German sign for me: 'Betreten der Baustelle verboten'",
]

TEST = [
    "How do I say 'good night, sleep well' in Russian?",
    "translate 'can I have the bill please' to italian",
    "What's the Spanish for 'I lost my passport'?",
    "Could you translate this paragraph into Dutch? 'Our shop is closed on public holidays. Orders placed online will ship the next working day.'",
    "What does 'carpe diem' mean in English?",
    "Translate into Chinese: Welcome to our hotel.",
    "How do you say 'congratulations on your new job' in Polish?",
    "Turn this English text into Swedish: The bus leaves every twenty minutes.",
    "french to english please: 'Il pleut des cordes depuis ce matin.'",
    "What's 'excuse me, where is the bathroom' in Greek?",
    "Translate my text message into Turkish: running late, be there in 15 minutes",
    "My grandmother wrote 'Ich hab dich lieb' in a card. What does it mean?",
    "Please render this sentence in Hindi: Drink plenty of water in hot weather.",
    "How would you translate 'break a leg' into Spanish so it keeps the meaning?",
    "translate 'the package arrived damaged' to japanese, polite form",
    "Give me the Arabic for 'peace be upon you'.",
    "What is 'I love you' in Vietnamese?",
    "Translate the menu item 'pollo alla cacciatora' into English.",
    "Can you put 'please remove your shoes' into Korean and Japanese?",
    "Translate to German: Our flight was cancelled and we need a hotel for tonight.",
]
