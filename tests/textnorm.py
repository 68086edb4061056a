"""English transcript normalization, for comparing speech-to-text output with a reference.

A recogniser may write what the reference spells differently: "Where's" for
"Where is", "12" for "twelve", "9:00" for "nine o'clock", "colour" for "color".
:func:`normalize` maps both sides onto one canonical form, so word error rates
and phrase checks measure recognition, not spelling:

- lower case, Unicode compatibility forms, one apostrophe;
- contractions expanded ("where's" -> "where is", "don't" -> "do not",
  "won't" -> "will not", "I'm" -> "i am", "they'd" -> "they would"; every "'s"
  reads as "is", possessives included, on both sides alike);
- numbers as digits: "twelve" -> "12", "twenty-one" -> "21", "a hundred and
  five" -> "105", "two thousand twenty four" and "twenty twenty-four" -> "2024",
  "nineteen ninety-five" -> "1995", "three point five" -> "3.5", "1,000" ->
  "1000"; ordinals keep their suffix ("twenty-first" and "21st" -> "21st");
- times, money and percentages: "9:00" and "nine o'clock" -> "9", "9:30" ->
  "9 30", "5pm" and "5 p.m." -> "5 pm", "$5" -> "5 dollars", "50%" -> "50 percent";
- punctuation removed, hyphens and slashes split words, dotted abbreviations
  joined ("u.s.a." -> "usa"), hesitations dropped ("um", "uh", "hmm");
- a few spelling variants unified (British -> US, "ok" -> "okay", "mr" -> "mister").

:func:`word_error_rate` and :func:`phrase_error` compare normalized words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["contains_phrase", "normalize", "phrase_error", "word_error_rate", "words"]

# ----------------------------------------------------------------- characters

_APOSTROPHES = re.compile(r"[’‘`´ʼ′]")
_DASHES = re.compile(r"[‐‑‒–—―]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_MONEY = (
    (re.compile(r"\$(\d+)\.(\d\d)(?!\d)"), r" \1 dollars \2 cents "),
    (re.compile(r"\$(\d+(?:\.\d+)?)"), r" \1 dollars "),
    (re.compile(r"£(\d+(?:\.\d+)?)"), r" \1 pounds "),
    (re.compile(r"€(\d+(?:\.\d+)?)"), r" \1 euros "),
)
_SYMBOLS = (
    (re.compile(r"%"), " percent "),
    (re.compile(r"&"), " and "),
    (re.compile(r"\bper cent\b"), "percent"),
    (re.compile(r"@"), " at "),
)
_CLOCK = (
    (re.compile(r"\b(\d{1,2}):00\b"), r"\1"),
    (re.compile(r"\b(\d{1,2}):(\d\d)\b"), r"\1 \2"),
    (re.compile(r"\bo'?clock\b"), " "),
    (re.compile(r"\b([ap])\.m\.?(?!\w)"), r"\1m"),
    (re.compile(r"(\d)\s*([ap])m\b"), r"\1 \2m"),
)
_ABBREVIATION = re.compile(r"\b(?:[a-z]\.){2,}(?![a-z])")
_SPLITTERS = re.compile(r"[-/_+=*~|\\]")
_TOKEN = re.compile(r"\d+(?:\.\d+)+|[a-z0-9']+")

# --------------------------------------------------------------- contractions

_CONTRACTIONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\bwon't\b", "will not"),
        (r"\bcan't\b", "can not"),
        (r"\bcannot\b", "can not"),
        (r"\bshan't\b", "shall not"),
        (r"\bain't\b", "is not"),
        (r"\blet's\b", "let us"),
        (r"\by'all\b", "you all"),
        (r"\bma'am\b", "madam"),
        (r"(?<![\w'])'cause\b", "because"),
        (r"(?<![\w'])'til\b", "until"),
        (r"\btill\b", "until"),
        (r"\bgonna\b", "going to"),
        (r"\bwanna\b", "want to"),
        (r"\bgotta\b", "got to"),
        (r"\bgimme\b", "give me"),
        (r"'s been\b", " has been"),
        (r"'d been\b", " had been"),
        (r"'d better\b", " had better"),
        (r"n't\b", " not"),
        (r"'re\b", " are"),
        (r"'ve\b", " have"),
        (r"'ll\b", " will"),
        (r"'m\b", " am"),
        (r"'d\b", " would"),
        (r"'s\b", " is"),
    )
)

# ------------------------------------------------------------ spelling, fillers

_HESITATIONS = frozenset({"um", "umm", "uh", "uhh", "uhm", "er", "erm", "hm", "hmm", "mm", "mmm"})

_SPELLING = {
    "ok": "okay",
    "alright": "all right",
    "mr": "mister",
    "mrs": "missus",
    "dr": "doctor",
    "colour": "color",
    "colours": "colors",
    "favour": "favor",
    "favourite": "favorite",
    "favourites": "favorites",
    "flavour": "flavor",
    "honour": "honor",
    "humour": "humor",
    "labour": "labor",
    "neighbour": "neighbor",
    "neighbours": "neighbors",
    "neighbourhood": "neighborhood",
    "behaviour": "behavior",
    "centre": "center",
    "centres": "centers",
    "theatre": "theater",
    "metre": "meter",
    "metres": "meters",
    "litre": "liter",
    "litres": "liters",
    "kilometre": "kilometer",
    "kilometres": "kilometers",
    "programme": "program",
    "cheque": "check",
    "grey": "gray",
    "jewellery": "jewelry",
    "organise": "organize",
    "organised": "organized",
    "realise": "realize",
    "realised": "realized",
    "recognise": "recognize",
    "apologise": "apologize",
    "cancelled": "canceled",
    "cancelling": "canceling",
    "travelled": "traveled",
    "travelling": "traveling",
    "traveller": "traveler",
}

# -------------------------------------------------------------------- numbers

_UNIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEEN_WORDS = (
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS_WORDS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_UNITS = {w: i for i, w in enumerate(_UNIT_WORDS)}
_TEENS = {w: i + 10 for i, w in enumerate(_TEEN_WORDS)}
_TENS = {w: (i + 2) * 10 for i, w in enumerate(_TENS_WORDS)}
_SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_ORDINAL_UNITS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
    "sixteenth": 16,
    "seventeenth": 17,
    "eighteenth": 18,
    "nineteenth": 19,
}
_ORDINAL_TENS = {
    "twentieth": 20,
    "thirtieth": 30,
    "fortieth": 40,
    "fiftieth": 50,
    "sixtieth": 60,
    "seventieth": 70,
    "eightieth": 80,
    "ninetieth": 90,
}
_ORDINAL_SCALES = {"hundredth": 100, "thousandth": 1_000, "millionth": 1_000_000}
_ORDINAL_SUFFIXES = {1: "st", 2: "nd", 3: "rd"}
_MULTIPLIERS = frozenset({"hundred", *_SCALES})


def _ordinal(value: int) -> str:
    """``21`` -> ``"21st"``."""
    if value % 100 in (11, 12, 13):
        return f"{value}th"
    return f"{value}{_ORDINAL_SUFFIXES.get(value % 10, 'th')}"


class _Number:
    """A number being read from words: ``total`` (scaled groups) + ``group`` (below 1000).

    ``last`` is the kind of the last word read ("unit", "teen", "tens",
    "hundred", "scale", "digits"); it decides whether the next number word
    continues this number or starts a new one.
    """

    def __init__(self) -> None:
        self.total = 0
        self.group = 0
        self.last: str | None = None

    @property
    def active(self) -> bool:
        return self.last is not None

    @property
    def value(self) -> int:
        return self.total + self.group

    def accepts(self, kind: str, value: int) -> bool:
        """Whether a word of ``kind`` continues the number read so far."""
        last = self.last
        if last is None:
            return True
        if kind == "unit":
            return last in ("tens", "hundred", "scale")
        if kind == "teen":
            return last in ("hundred", "scale") or self._year_style()
        if kind == "tens":
            return last in ("hundred", "scale") or self._year_style()
        if kind == "hundred":
            return last in ("unit", "teen", "tens", "digits") and self.group < 100
        if kind == "scale":
            return last in ("unit", "teen", "tens", "hundred", "digits") and (
                self.total == 0 or self.total >= value * 1000
            )
        return False

    def _year_style(self) -> bool:
        # "nineteen ninety", "twenty twenty", "twenty nineteen": a leading pair
        # from 13 to 99 (10-12 read as hours: "ten thirty" is a time, not 1030).
        return self.last in ("teen", "tens") and self.total == 0 and 13 <= self.group <= 99

    def add(self, kind: str, value: int) -> None:
        if kind in ("teen", "tens") and self.last is not None and self._year_style():
            self.group = self.group * 100 + value
        elif kind == "hundred":
            self.group = (self.group or 1) * 100
        elif kind == "scale":
            self.total += (self.group or 1) * value
            self.group = 0
        else:
            self.group += value
        self.last = kind


def _kind(word: str) -> tuple[str, int] | None:
    if word in _UNITS:
        return "unit", _UNITS[word]
    if word in _TEENS:
        return "teen", _TEENS[word]
    if word in _TENS:
        return "tens", _TENS[word]
    if word == "hundred":
        return "hundred", 100
    if word in _SCALES:
        return "scale", _SCALES[word]
    return None


def _ordinal_kind(word: str) -> tuple[str, int] | None:
    if word in _ORDINAL_UNITS:
        value = _ORDINAL_UNITS[word]
        return ("unit" if value < 10 else "teen"), value
    if word in _ORDINAL_TENS:
        return "tens", _ORDINAL_TENS[word]
    if word == "hundredth":
        return "hundred", 100
    if word in _ORDINAL_SCALES:
        return "scale", _ORDINAL_SCALES[word]
    return None


def _continues(word: str) -> bool:
    """Whether ``word`` is a number word below a hundred ("a hundred and *five*")."""
    kind = _kind(word) or _ordinal_kind(word)
    return kind is not None and kind[0] in ("unit", "teen", "tens")


def _numbers_to_digits(tokens: Sequence[str]) -> list[str]:
    """Replace runs of English number words with digits (see the module docstring)."""
    out: list[str] = []
    number = _Number()

    def flush() -> None:
        nonlocal number
        if number.active:
            out.append(str(number.value))
        number = _Number()

    i = 0
    while i < len(tokens):
        word = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        kind = _kind(word)
        ordinal = _ordinal_kind(word) if kind is None else None
        if kind is not None:
            if not number.accepts(*kind):
                flush()
            number.add(*kind)
        elif ordinal is not None:
            if not number.accepts(*ordinal):
                flush()
            number.add(*ordinal)
            out.append(_ordinal(number.value))
            number = _Number()
        elif word == "a" and not number.active and nxt in _MULTIPLIERS:
            number.add("unit", 1)  # "a hundred", "a thousand"
        elif word.isdigit() and not number.active and nxt in _MULTIPLIERS:
            number.group = int(word)  # "5 million"
            number.last = "digits"
        elif word == "and" and number.last in ("hundred", "scale") and _continues(nxt):
            pass  # "a hundred and five"
        elif word == "point" and number.active and nxt in _UNITS:
            digits = []
            while i + 1 < len(tokens) and tokens[i + 1] in _UNITS:
                i += 1
                digits.append(str(_UNITS[tokens[i]]))
            out.append(f"{number.value}.{''.join(digits)}")
            number = _Number()
        else:
            flush()
            out.append(word)
        i += 1
    flush()
    return out


# ------------------------------------------------------------------ interface


def words(text: str) -> list[str]:
    """The normalized words of ``text`` (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    # Accents off ("café" -> "cafe"): decompose, drop the combining marks.
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    text = _APOSTROPHES.sub("'", text)
    text = _DASHES.sub("-", text)
    text = _THOUSANDS.sub("", text)
    for pattern, replacement in (*_MONEY, *_SYMBOLS, *_CLOCK):
        text = pattern.sub(replacement, text)
    text = _ABBREVIATION.sub(lambda m: m.group().replace(".", ""), text)
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = _SPLITTERS.sub(" ", text)
    tokens: list[str] = []
    for raw in _TOKEN.findall(text):
        token = raw.strip("'")
        if not token or token in _HESITATIONS:
            continue
        tokens.extend(_SPELLING.get(token, token).split())
    return _numbers_to_digits(tokens)


def normalize(text: str) -> str:
    """``text`` in canonical form: normalized words joined by single spaces."""
    return " ".join(words(text))


def _edit_distance(ref: Sequence[str], hyp: Sequence[str], *, free_ends: bool) -> int:
    """Word-level Levenshtein distance; with ``free_ends`` ``ref`` may match any span of ``hyp``."""
    previous = list(range(len(hyp) + 1)) if not free_ends else [0] * (len(hyp) + 1)
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(
                previous[j] + 1,  # ref word deleted
                current[j - 1] + 1,  # hyp word inserted
                previous[j - 1] + (ref_word != hyp_word),  # hit or substitution
            )
        previous = current
    return min(previous) if free_ends else previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after :func:`normalize`.

    (substitutions + deletions + insertions) / reference words; an empty
    hypothesis scores 1.0. A reference with no words is a test bug: ValueError.
    """
    ref = words(reference)
    if not ref:
        raise ValueError(f"reference has no words: {reference!r}")
    return _edit_distance(ref, words(hypothesis), free_ends=False) / len(ref)


def phrase_error(text: str, phrase: str) -> float:
    """Word error rate of ``phrase`` against its best-matching span of ``text``.

    0.0 when the normalized phrase occurs in the normalized text; 1.0 when no
    word of it does. Use it to check a transcript says something without
    depending on the recogniser's exact wording of the rest.
    """
    ref = words(phrase)
    if not ref:
        raise ValueError(f"phrase has no words: {phrase!r}")
    return _edit_distance(ref, words(text), free_ends=True) / len(ref)


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether the normalized words of ``phrase`` occur, in order and adjacent, in ``text``."""
    return phrase_error(text, phrase) == 0.0
