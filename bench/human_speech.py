"""Human speech with reference transcripts: Debian's Asterisk core prompts (English).

``scripts/install_test_audio.sh`` installs ``asterisk-core-sounds-en-wav``
(~550 prompts recorded by one human speaker, 8 kHz telephone audio,
CC-BY-SA-3.0) and ``asterisk-core-sounds-en``, whose documentation holds the
prompt transcripts. This module pairs them up for word error rate benchmarks.

Only clips whose transcript is plain spoken English are kept: transcripts with
digits, keypad symbols, markup (``[beep]``, ``<tone>``) or parentheses are
skipped because their spoken form is ambiguous (``1`` may be read "one" or
"first", ``#`` "pound"). Selection is deterministic: clips are ordered by a
hash of their name, which spreads any ``n`` over all prompt families.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from media.errors import AudioFormatError
from media.frames import PCM, PIPELINE_RATE
from media.resample import resample
from media.wav import read_wav

SOUNDS_DIR = Path("/usr/share/asterisk/sounds/en")
"""Where ``asterisk-core-sounds-en-wav`` puts the English prompts (a symlink)."""

TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
"""Prompt transcripts, one ``name: text`` line per prompt."""

INSTALL_HINT = "run scripts/install_test_audio.sh as root to install the Asterisk prompts"

_ODD = re.compile(r"[0-9\[\]<>(){}#*@/\\=+_&%$]")
"""Characters whose spoken form is ambiguous or that mark non-speech."""


@dataclass(frozen=True, slots=True)
class Clip:
    """One human prompt: its name, 16 kHz int16 PCM and the reference transcript."""

    name: str
    pcm: PCM
    text: str

    @property
    def duration(self) -> float:
        """Length of the clip in seconds."""
        return self.pcm.size / PIPELINE_RATE


class HumanSpeechMissingError(FileNotFoundError):
    """The Asterisk prompt packages are not installed."""


def available(sounds_dir: Path = SOUNDS_DIR, transcripts: Path = TRANSCRIPTS) -> bool:
    """True when both the recordings and their transcripts are installed."""
    return sounds_dir.is_dir() and transcripts.is_file()


def read_transcripts(path: Path = TRANSCRIPTS) -> dict[str, str]:
    """Parse the ``name: text`` transcript file (gzip or plain) into a dict."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise HumanSpeechMissingError(f"cannot read {path}: {INSTALL_HINT}") from exc
    out: dict[str, str] = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        name, sep, text = line.partition(":")
        if sep and name.strip() and " " not in name.strip():
            out[name.strip()] = " ".join(text.split())
    return out


def usable_transcript(text: str, min_words: int = 1) -> bool:
    """True for plain spoken-English transcripts with at least ``min_words`` words."""
    if not text or _ODD.search(text):
        return False
    return len(normalize(text).split()) >= min_words


def load_clips(
    n: int | None = None,
    *,
    min_words: int = 1,
    max_seconds: float = 28.0,
    sounds_dir: Path = SOUNDS_DIR,
    transcripts: Path = TRANSCRIPTS,
    accept: Callable[[str], bool] | None = None,
) -> list[Clip]:
    """Load up to ``n`` clips (all when None) resampled to 16 kHz, in a fixed order.

    Clips longer than ``max_seconds`` are skipped (Whisper sees 30 s at most
    per window). ``accept`` picks clips by their transcript instead of
    ``usable_transcript(text, min_words)``. Raises ``HumanSpeechMissingError``
    when the packages are absent.
    """
    if not available(sounds_dir, transcripts):
        raise HumanSpeechMissingError(INSTALL_HINT)
    refs = read_transcripts(transcripts)
    keep = accept or (lambda text: usable_transcript(text, min_words))
    names = sorted(
        (name for name, text in refs.items() if keep(text)),
        key=lambda name: hashlib.sha1(name.encode()).hexdigest(),
    )
    clips: list[Clip] = []
    for name in names:
        if n is not None and len(clips) >= n:
            break
        path = sounds_dir / f"{name}.wav"
        if not path.is_file():
            continue
        try:
            frame = read_wav(path).to_mono()
        except AudioFormatError:
            continue
        if frame.duration > max_seconds:
            continue
        pcm = resample(frame.samples, frame.sample_rate, PIPELINE_RATE)
        clips.append(Clip(name, pcm, refs[name]))
    return clips


def load(n: int | None = None, *, min_words: int = 1) -> list[tuple[str, PCM, str]]:
    """``load_clips`` as plain ``(name, int16 pcm at 16 kHz, reference text)`` tuples."""
    return [(c.name, c.pcm, c.text) for c in load_clips(n, min_words=min_words)]


_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
]  # fmt: skip
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_to_words(value: int) -> str:
    """Spell a non-negative integer below one million in English words."""
    if value < 0 or value >= 1_000_000:
        return str(value)
    if value < 20:
        return _ONES[value]
    if value < 100:
        tens, ones = divmod(value, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if value < 1000:
        hundreds, rest = divmod(value, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    thousands, rest = divmod(value, 1000)
    return f"{number_to_words(thousands)} thousand" + (f" {number_to_words(rest)}" if rest else "")


_NUMBER = re.compile(r"\d+")
_APOSTROPHE = re.compile(r"[’‘`´]")
_NOT_WORD = re.compile(r"[^a-z' ]+")


def normalize(text: str) -> str:
    """Normalize text for WER: lowercase, no punctuation, numbers spelled as words.

    Hyphens and slashes split words ("call-forward" -> "call forward");
    apostrophes inside words are kept ("you'd"), quotes around words are not.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _APOSTROPHE.sub("'", text)
    text = _NUMBER.sub(lambda m: f" {number_to_words(int(m.group()))} ", text)
    text = _NOT_WORD.sub(" ", text.replace("-", " "))
    words = (word.strip("'") for word in text.split())
    return " ".join(word for word in words if word)
