"""Conversational caller turns with a mid-sentence pause, for end-of-turn evaluation.

Each line is ``(agent_said, before, after)``: what the agent last said (the
context a text end-of-turn model reads; "" for an opening request), and the
caller's turn cut in two where people pause to think: after an article, a
preposition, a verb that needs its object, a hesitation. ``before`` alone is
unfinished; ``before + after`` is a whole turn. The lines are not the wire
benchmark's questions (``bench.wire.speech``), so a threshold tuned here is
not tuned on the benchmark that reports it.

``split`` divides them in two fixed halves by a hash of the text: one to tune
thresholds on, one to report on.
"""

from __future__ import annotations

import hashlib

TurnLine = tuple[str, str, str]

LINES: tuple[TurnLine, ...] = (
    ("", "Can you tell me the opening hours of", "the public library?"),
    ("", "I need to book a table for", "four people tomorrow night."),
    ("", "What is the best way to get to", "the train station from here?"),
    ("", "Could you remind me to", "call my sister at six?"),
    ("", "I would like to cancel my", "appointment on Friday."),
    ("", "How long does it take to", "bake a loaf of bread?"),
    ("", "Please play some music by", "the Beatles."),
    ("", "What is the difference between", "a frog and a toad?"),
    ("", "My internet connection keeps", "dropping every few minutes."),
    ("", "Is there a pharmacy open near", "the city center tonight?"),
    ("", "Set a timer for", "twenty minutes, please."),
    ("", "I am looking for a good recipe for", "vegetable soup."),
    ("", "How much does it cost to send a letter to", "Canada?"),
    ("", "Can you explain how", "a rainbow is formed?"),
    ("", "I want to change the address on", "my account."),
    ("", "What year did", "the first man walk on the moon?"),
    ("", "Turn off the lights in", "the living room."),
    ("", "Who was the president of", "the United States in nineteen sixty?"),
    ("", "I think I left my umbrella on", "the bus this morning."),
    ("", "Do you know any good places to", "go hiking nearby?"),
    ("", "Add milk and eggs to", "my shopping list."),
    ("", "Why is the ocean", "salty?"),
    ("", "I'd like to speak with", "someone about my bill."),
    ("", "What is the tallest building in", "the world?"),
    ("What is your name?", "My name is", "Anna Schmidt."),
    ("Which city are you calling from?", "I am calling from", "Manchester."),
    ("How can I help you today?", "Um, I was wondering if", "you could help me with my order."),
    ("What day works best for you?", "I think", "Thursday would be best."),
    ("Would you like anything else?", "Yes, could you also", "send me a receipt?"),
    ("What is your date of birth?", "It is the", "third of March, nineteen ninety."),
    ("How many tickets would you like?", "I would like", "two tickets, please."),
    ("What seems to be the problem?", "The screen on my phone is", "cracked."),
    ("Where would you like to go?", "Take me to", "the airport, please."),
    ("What kind of food do you like?", "I really like", "Italian food."),
    ("Can I have your order number?", "Sure, it is", "four five seven two."),
    ("Is there anything I can help with?", "Yes, I need", "a taxi for tomorrow morning."),
    ("What time should I set the alarm for?", "Set it for", "seven thirty."),
    ("Which song should I play?", "Play the one that goes", "here comes the sun."),
    ("How was your stay with us?", "It was", "really lovely, thank you."),
    ("What can I do for you?", "I have a question about", "my last payment."),
    ("Which room would you like?", "I would prefer a room with", "a view of the sea."),
    ("Do you have a preferred airline?", "Not really, but", "I prefer morning flights."),
    ("What is your email address?", "It is anna at", "example dot com."),
    ("How did you hear about us?", "A friend of mine", "told me about you."),
    ("When did the problem start?", "It started", "last Tuesday."),
    ("What would you like to know?", "I was thinking about", "the weather this weekend."),
    ("Who would you like to call?", "Please call", "my mother."),
    ("What size do you need?", "I need a", "medium, please."),
)
"""48 caller turns: 24 openings and 24 answers to the agent."""


def split(lines: tuple[TurnLine, ...] = LINES) -> tuple[list[TurnLine], list[TurnLine]]:
    """The lines in a tuning half and a held-out half (fixed by a hash of each line)."""
    tune: list[TurnLine] = []
    held_out: list[TurnLine] = []
    for line in lines:
        half = hashlib.sha1(f"turn|{line[1]}|{line[2]}".encode()).digest()[0] % 2
        (tune if half == 0 else held_out).append(line)
    return tune, held_out
