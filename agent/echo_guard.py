"""Telling the agent's own voice, played back by the caller's line, from the caller's words.

A phone on a speakerphone returns the agent's voice. The echo canceller
(``media.echo``) removes most of it, but not all, and not at once: it needs
a moment to learn the echo path at the start of a call and after the path
changes. What leaks through can hold the VAD long enough to pause the reply,
and the STT then transcribes the agent's own words, which would confirm an
interruption (the agent stops itself) or even start a turn that answers the
agent.

The guard compares what the STT heard with what the agent just said: a word
counts as the caller's only if the agent did not speak it in its recent
audio (its current reply's segments that started playing, and the previous
reply for ``tail_s`` after it ended). A transcript made only of the agent's
words is echo. The cost is that a caller who repeats only the agent's own
words ("Paris?") over its reply does not interrupt it by words alone; one
word of their own does ("no, not Paris").

Used only while the call's transport says its caller may play the agent back
(SIP), or when the agent config forces it (``interruption.echo_guard``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def words_of(text: str) -> list[str]:
    """Lower-case words of ``text``, punctuation dropped ("Don't stop, uh-huh!": 3 words)."""
    return _WORD.findall(text.lower().replace("’", "'"))


@dataclass(frozen=True, slots=True)
class HeardWords:
    """How a transcript splits: the caller's own content words and words that echo the agent."""

    own: int
    echoed: int

    @property
    def only_echo(self) -> bool:
        """Every content word of the transcript was the agent's own: it is echo."""
        return self.own == 0 and self.echoed > 0


class EchoGuard:
    """Splits transcripts into the caller's words and echoes of the agent's recent speech.

    ``fillers`` never count (backchannels and hesitations). ``enabled``
    switches the echo test (with it off, every content word is the caller's).
    """

    def __init__(self, fillers: Iterable[str], *, enabled: bool = False, tail_s: float = 2.0):
        self._fillers = frozenset(w.lower() for w in fillers)
        self.enabled = enabled
        self.tail_s = tail_s
        self._previous: frozenset[str] = frozenset()
        self._previous_until = 0.0

    def reply_ended(self, spoken_text: str, now: float) -> None:
        """A reply stopped at ``now``: its words may still come back for ``tail_s``."""
        self._previous = frozenset(words_of(spoken_text))
        self._previous_until = now + self.tail_s

    def split(self, transcript: str, speaking: Iterable[str], now: float) -> HeardWords:
        """Count ``transcript``'s content words: the caller's own and the agent's echoes.

        ``speaking`` holds the texts of the active reply that started playing
        (whole segments: a segment's words may come back before the playout
        accounting says they were heard).
        """
        content = [w for w in words_of(transcript) if w not in self._fillers]
        if not self.enabled or not content:
            return HeardWords(len(content), 0)
        agent: set[str] = set()
        for text in speaking:
            agent.update(words_of(text))
        if now < self._previous_until:
            agent |= self._previous
        echoed = sum(1 for w in content if w in agent)
        return HeardWords(len(content) - echoed, echoed)
