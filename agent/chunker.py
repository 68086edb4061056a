"""Cut a streamed LLM reply into speakable chunks for TTS.

The first chunk is cut at the first clause boundary (comma, semicolon, colon,
dash) once it has a few words, so the first audio starts early; later chunks
are cut at sentence ends (or at a clause boundary once they are long), which
keeps the prosody of whole sentences. Abbreviations, initials and decimal
numbers do not end a sentence. Markdown and emoji the model may emit are
removed, since they would be read out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "u.s",
        "u.k",
        "no",
        "approx",
        "dept",
        "est",
        "fig",
        "inc",
        "ltd",
    ]
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
_CLAUSE_END = re.compile(r"[,;:]+(?=\s)|\s[-–—]+(?=\s)")
_MARKDOWN = re.compile(r"(\*\*|__|\*|`+|^#+\s*|^\s*[-*]\s+)", re.MULTILINE)
_NON_SPEECH = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0000fe0f\U0001f1e6-\U0001f1ff]+"
)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ChunkerSettings:
    """Where the chunker may cut."""

    first_min_words: int = 3
    """The first chunk may end at a clause boundary once it has this many words."""
    clause_min_words: int = 10
    """Later chunks end at a clause boundary only once this long."""
    max_chars: int = 220
    """A chunk is cut at the last space before this length if nothing else applies."""


def clean_for_speech(text: str) -> str:
    """Remove markdown markup and emoji, collapse whitespace."""
    text = _MARKDOWN.sub("", text)
    text = _NON_SPEECH.sub("", text)
    return _SPACES.sub(" ", text)


class SentenceChunker:
    """Incremental chunker: ``feed`` text deltas, get chunks when they are complete."""

    def __init__(self, settings: ChunkerSettings | None = None) -> None:
        self.settings = settings or ChunkerSettings()
        self._buf = ""
        self._emitted = 0

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; return the chunks it completed (possibly none)."""
        self._buf += delta
        out: list[str] = []
        while (cut := self._find_cut()) is not None:
            chunk = clean_for_speech(self._buf[:cut]).strip()
            self._buf = self._buf[cut:].lstrip()
            if _has_words(chunk):
                out.append(chunk)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        """End of the reply: return what is left as a last chunk."""
        chunk = clean_for_speech(self._buf).strip()
        self._buf = ""
        if _has_words(chunk):
            self._emitted += 1
            return [chunk]
        return []

    def _find_cut(self) -> int | None:
        buf = self._buf
        for m in _SENTENCE_END.finditer(buf):
            if not _is_false_sentence_end(buf, m.start()):
                return m.end()
        min_words = (
            self.settings.first_min_words if self._emitted == 0 else self.settings.clause_min_words
        )
        for m in _CLAUSE_END.finditer(buf):
            if len(buf[: m.start()].split()) >= min_words:
                return m.end()
        if len(buf) > self.settings.max_chars:
            space = buf.rfind(" ", 0, self.settings.max_chars)
            return space if space > 0 else self.settings.max_chars
        return None


def _has_words(text: str) -> bool:
    return any(c.isalnum() for c in text)


def _is_false_sentence_end(buf: str, dot: int) -> bool:
    """A period after an abbreviation or a single initial, or inside a number."""
    if buf[dot] != ".":
        return False
    word = buf[:dot].split()[-1] if buf[:dot].split() else ""
    bare = word.lower().strip("\"'(")
    if bare in _ABBREVIATIONS:
        return True
    if len(bare) == 1 and bare.isalpha() and word[-1:].isupper():
        return True
    after = buf[dot + 1 : dot + 2]
    return bool(word[-1:].isdigit() and after.isdigit())
