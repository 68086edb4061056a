"""Barge-in decisions: a pure state machine over stream time.

The controller sees what the listener hears (speech onsets, pauses, words of
transcripts) and whether a reply is active and audible; it answers with
actions for the session to carry out. It owns no I/O, no clock and no tasks,
so every rule is exact to test.

Phases:
- ``IDLE``      no reply, or the caller is quiet
- ``WATCHING``  the caller started speaking while a reply is active
- ``PAUSED``    the speech held for the onset hold: the reply's audio is
  paused (``PAUSE``) until words confirm the interruption (``CONFIRM``: the
  reply is cancelled) or the speech turns out to be noise (``RESUME``: a
  false interruption, the reply goes on where it paused)
- ``ECHO``      a transcript of the current speech held only the agent's own
  words (its voice played back by the caller's line, see
  ``agent.echo_guard``): the reply goes on, and until this speech ends only
  words of the caller's own can interrupt it (no speech timer)

Rules:
- speech held for the onset hold over an active reply pauses it; with
  ``min_words == 0`` the pause is confirmed at once (VAD alone decides)
- a transcript with ``min_words`` content words confirms it, paused or not
  (words are stronger evidence than the speech timer)
- speech that is discarded (too short to be a turn), or a turn transcribed
  with no content words, resumes a paused reply
- a pause with no words ``false_interruption_timeout_ms`` after the speech
  stopped resumes the reply
- a transcript that only echoes the agent resumes a paused reply at once

The onset hold adapts to the line (``hold_ms``). It starts at
``min_speech_ms`` (0 by default: the VAD onset itself pauses the reply, and
a pause costs little since it resumes when no words follow). A *false pause*
(a pause that resumed with no words while the reply's audio was playing)
raises it to ``false_pause_hold_ms``; it returns to ``min_speech_ms`` once
the reply's audio has played ``false_pause_relax_ms`` with no speech from
the caller. Why: on a line that plays the agent back without echo
cancellation, the agent's echo is speech to the VAD. Pausing at its onset
silences the echo, the pause resumes, the echo starts again: the reply
stutters about once a second for as long as it lasts (6-16 times over
``tests/test_echo.py``'s 16 s greeting at 80 ms of echo delay). With the adaptive hold it stutters
once per call, then the echo must hold ``false_pause_hold_ms`` like any
speech (150 ms, the default ``min_speech_ms`` before). Such an echo keeps
the VAD in speech while the agent talks (Silero on that greeting, echo at
-15 to -35 dB: its quiet gaps are the agent's own sentence pauses, 0.86 s
at most), so the hold does not relax there; a caller's cough or "mm-hmm"
raises it only until the agent has been heard ``false_pause_relax_ms``
with the caller quiet.
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
    min_speech_ms: int = 0
    min_words: int = 1
    false_interruption_timeout_ms: int = 1500
    false_pause_hold_ms: int = 150
    false_pause_relax_ms: int = 3000

    def __post_init__(self) -> None:
        if min(self.min_speech_ms, self.min_words, self.false_pause_hold_ms) < 0:
            raise ValueError("min_speech_ms, min_words and false_pause_hold_ms must be >= 0")
        if self.false_interruption_timeout_ms <= 0 or self.false_pause_relax_ms <= 0:
            raise ValueError("false_interruption_timeout_ms and false_pause_relax_ms must be > 0")


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
        self._hold_ms = settings.min_speech_ms
        self._audible = False  # the active reply's audio started playing
        self._quiet_since: float | None = None  # audible, caller silent, since then
        self._false_pauses = 0

    @property
    def phase(self) -> BargeInPhase:
        """The current phase."""
        return self._phase

    @property
    def hold_ms(self) -> int:
        """How long speech must hold to pause the reply now (see the module docstring)."""
        return self._hold_ms

    @property
    def false_pauses(self) -> int:
        """Pauses of this call that resumed with no words while the agent was heard."""
        return self._false_pauses

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

    def reply_audible(self) -> None:
        """The active reply's audio started playing (its echo may come back from now)."""
        if self._reply_active:
            self._audible = True

    def reply_ended(self) -> None:
        """The active reply is over (played out, cancelled or failed)."""
        self._reply_active = False
        self._audible = False
        self._quiet_since = None
        self._phase = BargeInPhase.IDLE
        self._speech_end = None

    # ------------------------------------------------------------ what is heard

    def speech_started(self, speech_start: float, now: float) -> list[BargeInAction]:
        """Speech onset (back-dated to ``speech_start``)."""
        self._in_speech = True
        self._speech_end = None
        self._quiet_since = None
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
        self._quiet_since = None
        return self.advance(now)

    def speech_ended(self) -> list[BargeInAction]:
        """The caller's speech was discarded as too short to be a turn (a click, a cough)."""
        self._in_speech = False
        self._speech_end = None
        return self._resume_if_paused()

    def advance(self, now: float) -> list[BargeInAction]:
        """Stream time moved on to ``now`` (called after every VAD window)."""
        s = self.settings
        self._relax(now)
        if self._phase is BargeInPhase.WATCHING:
            if not self._in_speech:
                return []
            if _elapsed_ms(self._speech_start, now) >= self._hold_ms:
                self._phase = BargeInPhase.PAUSED
                self._quiet_since = None
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
        return self._false_pause() if was_paused else []

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
        self._audible = False
        self._quiet_since = None
        return [BargeInAction.CONFIRM]

    def _resume_if_paused(self) -> list[BargeInAction]:
        was_paused = self._phase is BargeInPhase.PAUSED
        self._phase = BargeInPhase.IDLE
        self._speech_end = None
        return self._false_pause() if was_paused else []

    def _false_pause(self) -> list[BargeInAction]:
        """A pause resumes with no words: over the reply's audio, the onset hold rises."""
        if self._audible:
            self._false_pauses += 1
            self._hold_ms = max(self._hold_ms, self.settings.false_pause_hold_ms)
        return [BargeInAction.RESUME]

    def _relax(self, now: float) -> None:
        """Lower a raised hold once the reply was heard ``false_pause_relax_ms`` in peace."""
        if (
            self._hold_ms == self.settings.min_speech_ms
            or not self._audible
            or self._in_speech
            or self._phase is BargeInPhase.PAUSED
        ):
            return
        if self._quiet_since is None:
            self._quiet_since = now
        elif _elapsed_ms(self._quiet_since, now) >= self.settings.false_pause_relax_ms:
            self._hold_ms = self.settings.min_speech_ms
            self._quiet_since = None


def _elapsed_ms(start: float, now: float) -> float:
    """Milliseconds from ``start`` to ``now``, rounded to a microsecond (stream times are
    sums of window lengths: 1.15 - 1.0 must count as 150 ms)."""
    return round((now - start) * 1000, 3)
