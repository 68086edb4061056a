"""Barge-in decisions: a pure state machine over stream time.

The controller sees what the listener hears (speech onsets, pauses, words of
transcripts) and whether a reply is active; it answers with actions for the
session to carry out. It owns no I/O, no clock and no tasks, so every rule is
exact to test.

Phases:
- ``IDLE``      no reply, or the caller is quiet
- ``WATCHING``  the caller started speaking while a reply is active
- ``PAUSED``    the speech held for ``min_speech_ms``: the reply's audio is
  paused (``PAUSE``) until words confirm the interruption (``CONFIRM``: the
  reply is cancelled) or the speech turns out to be noise (``RESUME``: a
  false interruption, the reply goes on where it paused)
- ``ECHO``      a transcript of the current speech held only the agent's own
  words (its voice played back by the caller's line, see
  ``agent.echo_guard``): the reply goes on, and until this speech ends only
  words of the caller's own can interrupt it (no speech timer)

Rules:
- speech held ``min_speech_ms`` over an active reply pauses it; with
  ``min_words == 0`` the pause is confirmed at once (VAD alone decides)
- a transcript with ``min_words`` content words confirms it, paused or not
  (words are stronger evidence than the speech timer)
- speech that is discarded (too short to be a turn), or a turn transcribed
  with no content words, resumes a paused reply
- a pause with no words ``false_interruption_timeout_ms`` after the speech
  stopped resumes the reply
- a transcript that only echoes the agent resumes a paused reply at once
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BargeInAction(enum.Enum):
    """What the session must do to the active reply."""

    PAUSE = "paused"
    CONFIRM = "confirmed"
    RESUME = "resumed"


class BargeInPhase(enum.Enum):
    """Where the controller stands."""

    IDLE = "idle"
    WATCHING = "watching"
    PAUSED = "paused"
    ECHO = "echo"


@dataclass(frozen=True, slots=True)
class InterruptionSettings:
    """Barge-in knobs (see ``agent.config.InterruptionConfig``)."""

    enabled: bool = True
    min_speech_ms: int = 150
    min_words: int = 1
    false_interruption_timeout_ms: int = 1500

    def __post_init__(self) -> None:
        if self.min_speech_ms < 0 or self.min_words < 0:
            raise ValueError("min_speech_ms and min_words must be >= 0")
        if self.false_interruption_timeout_ms <= 0:
            raise ValueError("false_interruption_timeout_ms must be > 0")


class InterruptionController:
    """Decides when caller speech pauses, cancels or resumes the active reply.

    Times are seconds of input stream position. Every method returns the
    actions to carry out, in order (usually none).
    """

    def __init__(self, settings: InterruptionSettings) -> None:
        self.settings = settings
        self._phase = BargeInPhase.IDLE
        self._reply_active = False
        self._speech_start = 0.0
        self._speech_end: float | None = None
        self._in_speech = False

    @property
    def phase(self) -> BargeInPhase:
        """The current phase."""
        return self._phase

    @property
    def paused(self) -> bool:
        """Whether the active reply is paused awaiting a decision."""
        return self._phase is BargeInPhase.PAUSED

    # ------------------------------------------------------------ the reply

    def reply_started(self, now: float) -> list[BargeInAction]:
        """A reply became active; a caller already speaking is watched from ``now``."""
        self._reply_active = True
        if self._in_speech and self._phase is BargeInPhase.IDLE and self.settings.enabled:
            self._phase = BargeInPhase.WATCHING
            self._speech_start = now
            self._speech_end = None
            return self.advance(now)
        return []

    def reply_ended(self) -> None:
        """The active reply is over (played out, cancelled or failed)."""
        self._reply_active = False
        self._phase = BargeInPhase.IDLE
        self._speech_end = None

    # ------------------------------------------------------------ what is heard

    def speech_started(self, speech_start: float, now: float) -> list[BargeInAction]:
        """Speech onset (back-dated to ``speech_start``)."""
        self._in_speech = True
        self._speech_end = None
        if not self._reply_active or not self.settings.enabled:
            return []
        if self._phase in (BargeInPhase.IDLE, BargeInPhase.ECHO):  # a new stretch of speech
            self._phase = BargeInPhase.WATCHING
            self._speech_start = speech_start
        return self.advance(now)

    def speech_paused(self, speech_end: float) -> None:
        """Speech stopped at ``speech_end`` (the turn may still go on)."""
        self._in_speech = False
        self._speech_end = speech_end

    def speech_resumed(self, now: float) -> list[BargeInAction]:
        """Speech came back before the turn ended."""
        self._in_speech = True
        self._speech_end = None
        return self.advance(now)

    def speech_ended(self) -> list[BargeInAction]:
        """The caller's speech was discarded as too short to be a turn (a click, a cough)."""
        self._in_speech = False
        self._speech_end = None
        return self._resume_if_paused()

    def advance(self, now: float) -> list[BargeInAction]:
        """Stream time moved on to ``now`` (called after every VAD window)."""
        s = self.settings
        if self._phase is BargeInPhase.WATCHING:
            if not self._in_speech:
                return []
            if _elapsed_ms(self._speech_start, now) >= s.min_speech_ms:
                self._phase = BargeInPhase.PAUSED
                if s.min_words == 0:
                    return [BargeInAction.PAUSE, *self._confirm()]
                return [BargeInAction.PAUSE]
        elif (
            self._phase is BargeInPhase.PAUSED
            and not self._in_speech
            and self._speech_end is not None
            and _elapsed_ms(self._speech_end, now) >= s.false_interruption_timeout_ms
        ):
            return self._resume_if_paused()
        return []

    def words_heard(self, words: int) -> list[BargeInAction]:
        """A transcript of the caller's current speech has ``words`` content words."""
        if self._phase is BargeInPhase.IDLE or words < max(1, self.settings.min_words):
            return []
        if self._phase is BargeInPhase.WATCHING:
            return [BargeInAction.PAUSE, *self._confirm()]
        return self._confirm()

    def echo_heard(self) -> list[BargeInAction]:
        """A transcript of the current speech held only the agent's own words (echo).

        A paused reply resumes now; until the speech ends, the speech timer
        no longer pauses it (words of the caller's own still confirm).
        """
        if self._phase is BargeInPhase.IDLE:
            return []
        was_paused = self._phase is BargeInPhase.PAUSED
        self._phase = BargeInPhase.ECHO
        self._speech_end = None
        return [BargeInAction.RESUME] if was_paused else []

    def turn_transcribed(self, words: int) -> list[BargeInAction]:
        """The final transcript of a caller turn came back with ``words`` content words.

        With words, the turn supersedes the reply (``CONFIRM``); without, a
        paused reply resumes.
        """
        if words == 0:
            return self._resume_if_paused()
        if not self._reply_active:
            return []
        return self._confirm()

    # ------------------------------------------------------------ helpers

    def _confirm(self) -> list[BargeInAction]:
        self._phase = BargeInPhase.IDLE
        self._reply_active = False
        return [BargeInAction.CONFIRM]

    def _resume_if_paused(self) -> list[BargeInAction]:
        was_paused = self._phase is BargeInPhase.PAUSED
        self._phase = BargeInPhase.IDLE
        self._speech_end = None
        return [BargeInAction.RESUME] if was_paused else []


def _elapsed_ms(start: float, now: float) -> float:
    """Milliseconds from ``start`` to ``now``, rounded to a microsecond (stream times are
    sums of window lengths: 1.15 - 1.0 must count as 150 ms)."""
    return round((now - start) * 1000, 3)
