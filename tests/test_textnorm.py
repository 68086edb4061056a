"""The English transcript normalizer the STT and call tests compare with."""

from __future__ import annotations

import pytest

from tests.textnorm import contains_phrase, normalize, phrase_error, word_error_rate, words


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        # contractions, both ways
        ("Where's the nearest train station?", "Where is the nearest train station?"),
        ("What's the time?", "What is the time?"),
        ("It's raining, isn't it?", "It is raining, is not it?"),
        ("I'm sure you'll like it.", "I am sure you will like it."),
        ("Don't, can't, won't.", "Do not, can not, will not."),
        ("We cannot come.", "We can not come."),
        ("They've gone; we'd go; let's go.", "They have gone; we would go; let us go."),
        ("She's been here.", "She has been here."),
        ("We’re here", "We're here"),  # typographic apostrophe
        # numbers as words and digits
        ("I need twelve eggs.", "I need 12 eggs."),
        ("Open nine to five.", "Open 9 to 5."),
        ("twenty-one", "21"),
        ("a hundred and five", "105"),
        ("one thousand two hundred and thirty-four", "1,234"),
        ("five million", "5,000,000"),
        ("5 million", "5000000"),
        ("nineteen ninety-five", "1995"),
        ("twenty twenty-four", "2024"),
        ("two thousand and twenty four", "2024"),
        ("three point one four", "3.14"),
        ("zero", "0"),
        # ordinals
        ("the twenty-first of May", "the 21st of May"),
        ("my first and second try", "my 1st and 2nd try"),
        ("the eleventh hour", "the 11th hour"),
        ("one hundredth", "100th"),
        # times, money, percentages
        ("nine o'clock", "9:00"),
        ("half past ten thirty", "half past 10:30"),
        ("at five p.m.", "at 5pm"),
        ("at five PM", "at 5 p.m."),
        ("five dollars", "$5"),
        ("five dollars fifty cents", "$5.50"),
        ("fifty percent", "50%"),
        ("fifty per cent", "50 percent"),
        # punctuation, case, hyphens, abbreviations, hesitations, spelling
        ("HELLO, World!!", "hello world"),
        ("check-in and/or check out", "check in and or check out"),
        ("the U.S.A.", "the USA"),
        ("Um, so, uh, hmm, yes", "so yes"),
        ("My favourite colour is grey.", "My favorite color is gray."),
        ("OK, Mr. Smith.", "Okay, mister Smith."),
        ("alright", "all right"),
        ("café", "cafe"),
        ("'quoted' students' books", "quoted students books"),
    ],
)
def test_spellings_of_the_same_words_normalize_alike(written: str, spoken: str) -> None:
    assert normalize(written) == normalize(spoken)
    assert word_error_rate(spoken, written) == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Where's the train?", "where is the train"),
        ("I'd like twelve eggs at 9:00 a.m.", "i would like 12 eggs at 9 am"),
        ("twenty-first of May, 1995", "21st of may 1995"),
        ("$1,250.99", "1250 dollars 99 cents"),
        ("ten thirty", "10 30"),  # a time (10-12 never start a year-style pair)
        ("seven thirty five", "7 35"),
        ("one two three", "1 2 3"),  # digits read one by one stay separate
        ("no one knows", "no 1 knows"),
        ("a cat", "a cat"),  # "a" is "1" only before hundred/thousand/...
        ("the point is", "the point is"),
        ("bread and two eggs", "bread and 2 eggs"),
        ("thousand thousand", "1000 1000"),
        ("", ""),
        ("...!?", ""),
    ],
)
def test_canonical_form(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_words_are_a_list() -> None:
    assert words("It's nine-thirty.") == ["it", "is", "9", "30"]


def test_word_error_rate_counts_edits() -> None:
    ref = "What time does the pharmacy open tomorrow morning?"
    assert word_error_rate(ref, ref.upper()) == 0.0
    assert word_error_rate(ref, "What time does the farmacy open tomorrow morning") == 1 / 8
    assert word_error_rate(ref, "What time does the pharmacy open tomorrow") == 1 / 8
    um = "Um, what time does the pharmacy open tomorrow morning today?"
    assert word_error_rate(ref, um) == 1 / 8  # the hesitation is no error, "today" is
    assert word_error_rate(ref, "") == 1.0
    assert word_error_rate("one two", "three four five six") == 2.0  # insertions count
    with pytest.raises(ValueError, match="no words"):
        word_error_rate("?!", "anything")


def test_phrase_error_finds_the_best_span() -> None:
    said = "Okay. So, what's the capital of France, please?"
    assert phrase_error(said, "the capital of France") == 0.0
    assert contains_phrase(said, "what is the capital")
    assert not contains_phrase(said, "capital France")  # words must be adjacent
    assert phrase_error("the capitol of france", "the capital of France") == 0.25
    assert phrase_error("I want to book a table for 2 people", "table for two") == 0.0
    assert phrase_error("nothing alike", "table for two") == 1.0
    assert phrase_error("", "table for two") == 1.0
    with pytest.raises(ValueError, match="no words"):
        phrase_error("text", "")
