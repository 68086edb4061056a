"""Turn detection: when the caller starts, pauses, resumes and finishes a turn.

A pure state machine over VAD windows (no I/O, no clock of its own: time is
the input stream position), so it is exact to test. It also keeps the audio
of the current utterance, with a short pre-roll before the onset.

Events:
- ``SPEECH_STARTED``  speech onset (back-dated to the first speech window)
- ``SPEECH_PAUSED``   speech stopped; the end-of-turn silence timer runs now,
  the session starts the final STT speculatively
- ``END_OF_TURN_CHECK`` (with an end-of-turn model only) the pause has lasted
  ``check.after_ms``: ask the model about the utterance so far, and hand its
  score back with ``end_of_turn_score(score, asked_at=event.time)``
- ``SPEECH_RESUMED``  speech came back before the timer ran out
- ``TURN_ENDED``      the silence timer ran out (or the utterance hit its
  maximum length, or the model heard a finished turn) after at least
  ``min_speech_ms`` of speech
- ``SPEECH_DISCARDED`` speech too short to be a turn (a click, a cough)

The end-of-turn model is a signal combined with the silence timer, never a
replacement: a score at or above ``complete_threshold`` ends the turn when it
arrives, one below ``incomplete_threshold`` stretches the wait to
``incomplete_silence_ms``, anything else (or no answer before the timer runs
out) leaves the decision to the timer. The model runs elsewhere (the
listener runs it on an inference thread), so its answer comes back later in
stream time; an answer for an earlier pause, or one that arrives after the
caller spoke again, is stale and ignored. Phases of the pause::

    SPEAKING --offset--> PAUSED --after_ms--> ASKING --score >= complete--> (turn ends)
                           |                    |----score <  incomplete--> EXTENDED
                           |                    `----otherwise-----------> TIMED
    PAUSED, ASKING, TIMED: the turn ends at end_of_turn_silence_ms of silence
    EXTENDED:              the turn ends at incomplete_silence_ms of silence
    any pause phase --onset--> SPEAKING (a pending answer is stale from then on)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from agent.vad import WINDOW_SAMPLES, Activity, GateSettings, SpeechGate
from media.frames import PIPELINE_RATE, FloatPCM


class TurnEventKind(enum.Enum):
    """What happened to the caller's turn."""

    SPEECH_STARTED = "speech_started"
    SPEECH_PAUSED = "speech_paused"
    SPEECH_RESUMED = "speech_resumed"
    TURN_ENDED = "turn_ended"
    SPEECH_DISCARDED = "speech_discarded"
    END_OF_TURN_CHECK = "end_of_turn_check"


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One turn-detection event; times are seconds of input stream position."""

    kind: TurnEventKind
    time: float
    speech_start: float
    speech_end: float | None = None
    """Set on PAUSED and TURN_ENDED: where the speech stopped."""
    forced: bool = False
    """TURN_ENDED because the utterance reached its maximum length."""
    score: float | None = None
    """TURN_ENDED by the end-of-turn model: its score."""


@dataclass(frozen=True, slots=True)
class EndOfTurnCheck:
    """When the end-of-turn model is asked during a pause, and what its score does."""

    after_ms: int = 200
    """Silence after speech at which the model is asked (once per pause)."""
    complete_threshold: float = 0.99
    """A score at or above this ends the turn as soon as it arrives."""
    incomplete_threshold: float = 0.0
    """A score below this stretches the wait to ``incomplete_silence_ms``."""
    incomplete_silence_ms: int = 1200
    """Silence that ends a turn the model heard as unfinished."""

    def __post_init__(self) -> None:
        if self.after_ms < 0:
            raise ValueError("after_ms must be >= 0")
        if not 0.0 <= self.incomplete_threshold <= self.complete_threshold <= 1.0:
            raise ValueError("need 0 <= incomplete_threshold <= complete_threshold <= 1")


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """Turn-taking knobs."""

    min_speech_ms: int = 250
    """Shorter speech bursts are discarded instead of ending a turn."""
    end_of_turn_silence_ms: int = 700
    """Silence after speech that ends the turn."""
    max_utterance_s: float = 20.0
    """A turn is ended by force at this length of speech."""
    preroll_ms: int = 200
    """Audio kept from before the onset (onsets are detected a little late)."""
    tail_ms: int = 150
    """Audio kept after the end of speech for the final transcription."""
    check: EndOfTurnCheck | None = None
    """Ask an end-of-turn model during pauses (None: the silence timer alone)."""

    def __post_init__(self) -> None:
        if self.min_speech_ms < 0 or self.end_of_turn_silence_ms <= 0:
            raise ValueError("min_speech_ms must be >= 0 and end_of_turn_silence_ms > 0")
        if self.max_utterance_s <= 0:
            raise ValueError("max_utterance_s must be > 0")
        check = self.check
        if check is not None:
            if check.after_ms >= self.end_of_turn_silence_ms:
                raise ValueError("the end-of-turn check must come before end_of_turn_silence_ms")
            if check.incomplete_silence_ms < self.end_of_turn_silence_ms:
                raise ValueError("incomplete_silence_ms must be >= end_of_turn_silence_ms")


class _Phase(enum.Enum):
    IDLE = "idle"
    SPEAKING = "speaking"
    PAUSED = "paused"
    """Silence timer running; the model (if any) is not asked yet."""
    ASKING = "asking"
    """The model was asked; its answer is awaited while the timer runs."""
    TIMED = "timed"
    """The model was unsure (between the thresholds): the silence timer decides."""
    EXTENDED = "extended"
    """The model heard an unfinished turn: the longer silence decides."""


class TurnDetector:
    """Consumes 512-sample windows with their VAD probability; emits ``TurnEvent``s."""

    def __init__(self, turn: TurnSettings, gate: GateSettings) -> None:
        self.settings = turn
        self._gate = SpeechGate(gate)
        self._window_s = WINDOW_SAMPLES / PIPELINE_RATE
        self._preroll_windows = max(1, round(turn.preroll_ms / 1000 / self._window_s))
        self._phase = _Phase.IDLE
        self._windows = 0  # windows consumed since creation
        self._history: list[FloatPCM] = []  # recent windows while idle (pre-roll)
        self._utterance: list[FloatPCM] = []
        self._utt_first_window = 0
        self._speech_start = 0.0
        self._speech_end = 0.0
        self._asked_at: float | None = None  # stream time of the pending model question

    @property
    def in_speech(self) -> bool:
        """Whether the caller is speaking now (not in a pause)."""
        return self._phase is _Phase.SPEAKING

    @property
    def in_turn(self) -> bool:
        """Whether a turn is under way (speaking or in the end-of-turn pause)."""
        return self._phase is not _Phase.IDLE

    @property
    def now(self) -> float:
        """Input stream position in seconds."""
        return self._windows * self._window_s

    @property
    def speech_start(self) -> float:
        """Stream time where the current/last utterance's speech started."""
        return self._speech_start

    def speech_duration(self) -> float:
        """Seconds of the current utterance from onset to now (or to its pause)."""
        if self._phase is _Phase.IDLE:
            return 0.0
        end = self.now if self._phase is _Phase.SPEAKING else self._speech_end
        return max(0.0, end - self._speech_start)

    def utterance_audio(self, *, until_speech_end: bool = False) -> FloatPCM:
        """The current utterance's audio (pre-roll included).

        ``until_speech_end`` cuts it ``tail_ms`` after where speech stopped.
        """
        if not self._utterance:
            return np.zeros(0, np.float32)
        audio = np.concatenate(self._utterance)
        if until_speech_end and self._phase is not _Phase.SPEAKING:
            end_s = self._speech_end + self.settings.tail_ms / 1000
            end = int((end_s - self._utt_first_window * self._window_s) * PIPELINE_RATE)
            audio = audio[: max(0, end)]
        return audio

    def process(self, window: FloatPCM, prob: float) -> list[TurnEvent]:
        """Advance by one window of audio and its speech probability."""
        self._windows += 1
        activity = self._gate.update(prob)
        lag = self._gate.confirm_lag_windows(activity)
        events: list[TurnEvent] = []
        if self._phase is _Phase.IDLE:
            self._history.append(window)
            if len(self._history) > self._preroll_windows + lag + 1:
                self._history.pop(0)
            if activity is Activity.ONSET:
                self._speech_start = self.now - (lag + 1) * self._window_s
                self._utterance = list(self._history)
                self._utt_first_window = self._windows - len(self._history)
                self._history = []
                self._phase = _Phase.SPEAKING
                events.append(TurnEvent(TurnEventKind.SPEECH_STARTED, self.now, self._speech_start))
            return events

        self._utterance.append(window)
        if self._phase is _Phase.SPEAKING:
            if activity is Activity.OFFSET:
                self._speech_end = self.now - (lag + 1) * self._window_s
                self._phase = _Phase.PAUSED
                events.append(
                    TurnEvent(
                        TurnEventKind.SPEECH_PAUSED, self.now, self._speech_start, self._speech_end
                    )
                )
            elif self.speech_duration() >= self.settings.max_utterance_s:
                self._speech_end = self.now
                events.append(self._end_turn(forced=True))
            return events

        # a pause: waiting out the end-of-turn silence (and maybe the model)
        if activity is Activity.ONSET:
            self._phase = _Phase.SPEAKING
            self._asked_at = None
            events.append(TurnEvent(TurnEventKind.SPEECH_RESUMED, self.now, self._speech_start))
            return events
        silence = self.now - self._speech_end
        check = self.settings.check
        if self._phase is _Phase.EXTENDED:
            assert check is not None
            limit_ms = check.incomplete_silence_ms
        else:
            limit_ms = self.settings.end_of_turn_silence_ms
        if silence >= limit_ms / 1000:
            events.append(self._end_turn(forced=False))
        elif (
            self._phase is _Phase.PAUSED and check is not None and silence >= check.after_ms / 1000
        ):
            if self._speech_end - self._speech_start >= self.settings.min_speech_ms / 1000:
                self._phase = _Phase.ASKING
                self._asked_at = self.now
                events.append(
                    TurnEvent(
                        TurnEventKind.END_OF_TURN_CHECK,
                        self.now,
                        self._speech_start,
                        self._speech_end,
                    )
                )
            else:  # too short to be a turn anyway: not worth an inference
                self._phase = _Phase.TIMED
        return events

    def end_of_turn_score(self, score: float, *, asked_at: float) -> list[TurnEvent]:
        """The model's answer to the ``END_OF_TURN_CHECK`` made at stream time ``asked_at``.

        Returns ``[TURN_ENDED]`` when the score says the caller is done, else
        nothing (the wait is stretched or left to the timer). A stale answer
        (the caller spoke again, the turn ended meanwhile, or it answers an
        earlier pause) changes nothing.
        """
        check = self.settings.check
        if check is None or self._phase is not _Phase.ASKING or asked_at != self._asked_at:
            return []
        self._asked_at = None
        if score >= check.complete_threshold:
            return [self._end_turn(forced=False, score=score)]
        self._phase = _Phase.EXTENDED if score < check.incomplete_threshold else _Phase.TIMED
        return []

    def _end_turn(self, *, forced: bool, score: float | None = None) -> TurnEvent:
        long_enough = self._speech_end - self._speech_start >= self.settings.min_speech_ms / 1000
        kind = TurnEventKind.TURN_ENDED if long_enough else TurnEventKind.SPEECH_DISCARDED
        event = TurnEvent(kind, self.now, self._speech_start, self._speech_end, forced, score)
        self._phase = _Phase.IDLE
        self._asked_at = None
        self._history = []
        if forced:
            self._gate.reset()
        return event
