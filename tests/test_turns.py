"""Turn detection as a pure state machine over window probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from agent.turns import EndOfTurnCheck, TurnDetector, TurnEvent, TurnEventKind, TurnSettings
from agent.vad import WINDOW_S, WINDOW_SAMPLES, GateSettings

K = TurnEventKind


def run(
    probs: list[float], turn: TurnSettings | None = None
) -> tuple[TurnDetector, list[TurnEvent]]:
    det = TurnDetector(turn or TurnSettings(), GateSettings())
    events: list[TurnEvent] = []
    for i, p in enumerate(probs):
        window = np.full(WINDOW_SAMPLES, i, np.float32)
        events += det.process(window, p)
    return det, events


def secs(n: float) -> int:
    return round(n / WINDOW_S)


def test_turn_ends_after_silence_with_backdated_boundaries() -> None:
    probs = [0.0] * secs(1.0) + [0.9] * secs(1.0) + [0.0] * secs(1.0)
    det, events = run(probs)
    assert [e.kind for e in events] == [K.SPEECH_STARTED, K.SPEECH_PAUSED, K.TURN_ENDED]
    start, pause, end = events
    assert start.speech_start == pytest.approx(secs(1.0) * WINDOW_S)
    assert pause.speech_end == pytest.approx(2 * secs(1.0) * WINDOW_S)
    assert pause.speech_end is not None
    silence = TurnSettings().end_of_turn_silence_ms / 1000
    assert end.time - pause.speech_end == pytest.approx(silence, abs=WINDOW_S)
    audio = det.utterance_audio(until_speech_end=True)
    # pre-roll before the onset and a short tail after the end of speech
    first_window = int(audio[0])
    assert secs(1.0) - first_window == round(0.2 / WINDOW_S)
    assert audio.size / 16000 == pytest.approx(1.0 + 0.2 + 0.15, abs=2 * WINDOW_S)


def test_pause_shorter_than_silence_resumes_same_turn() -> None:
    probs = [0.9] * secs(0.5) + [0.0] * secs(0.3) + [0.9] * secs(0.5) + [0.0] * secs(1.0)
    _, events = run(probs)
    kinds = [e.kind for e in events]
    assert kinds == [
        K.SPEECH_STARTED,
        K.SPEECH_PAUSED,
        K.SPEECH_RESUMED,
        K.SPEECH_PAUSED,
        K.TURN_ENDED,
    ]
    assert events[-1].speech_start == events[0].speech_start


def test_short_burst_is_discarded() -> None:
    probs = [0.0] * 5 + [0.9] * 4 + [0.0] * secs(1.0)
    _, events = run(probs)
    assert [e.kind for e in events] == [K.SPEECH_STARTED, K.SPEECH_PAUSED, K.SPEECH_DISCARDED]


def test_hysteresis_ignores_dips_above_offset_threshold_and_single_blips() -> None:
    probs = [0.9] * 10 + [0.4] * 20 + [0.9] * 5 + [0.0] * secs(1.0)
    _, events = run(probs)
    assert [e.kind for e in events].count(K.SPEECH_PAUSED) == 1
    _, events = run([0.0, 0.9, 0.0, 0.9, 0.0] * 10)
    assert events == []


def test_max_utterance_forces_turn_end() -> None:
    probs = [0.9] * secs(3.0)
    _, events = run(probs, TurnSettings(max_utterance_s=2.0))
    ended = [e for e in events if e.kind is K.TURN_ENDED]
    assert len(ended) == 1 and ended[0].forced


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="end_of_turn"):
        TurnSettings(end_of_turn_silence_ms=0)
    with pytest.raises(ValueError, match="offset_threshold"):
        GateSettings(onset_threshold=0.3, offset_threshold=0.5)


# ------------------------------------------------------------ with an end-of-turn model

CHECK = EndOfTurnCheck(
    after_ms=200, complete_threshold=0.8, incomplete_threshold=0.2, incomplete_silence_ms=1200
)
WITH_MODEL = TurnSettings(end_of_turn_silence_ms=700, check=CHECK)


class ScriptedModel:
    """Answers each check with the next scripted score, ``delay`` windows after it was asked.

    The detector only asks; like the listener, this test harness runs the
    "inference" and hands the score back with the stream time it was asked at.
    """

    def __init__(self, scores: list[float], delay: int = 3) -> None:
        self.scores = scores
        self.delay = delay
        self.asked: list[float] = []

    def run(
        self, probs: list[float], turn: TurnSettings = WITH_MODEL
    ) -> tuple[TurnDetector, list[TurnEvent]]:
        det = TurnDetector(turn, GateSettings())
        events: list[TurnEvent] = []
        pending: list[tuple[int, float, float]] = []
        for i, p in enumerate(probs):
            for _, asked_at, score in [x for x in pending if x[0] == i]:
                events += det.end_of_turn_score(score, asked_at=asked_at)
            for event in det.process(np.zeros(WINDOW_SAMPLES, np.float32), p):
                events.append(event)
                if event.kind is K.END_OF_TURN_CHECK:
                    score = self.scores[min(len(self.asked), len(self.scores) - 1)]
                    self.asked.append(event.time)
                    pending.append((i + 1 + self.delay, event.time, score))
        return det, events


def kinds(events: list[TurnEvent]) -> list[TurnEventKind]:
    return [e.kind for e in events]


def ended_after(events: list[TurnEvent]) -> float:
    """Silence from the end of speech to the end of the turn, in seconds."""
    [end] = [e for e in events if e.kind is K.TURN_ENDED]
    assert end.speech_end is not None
    return end.time - end.speech_end


def test_model_is_asked_once_per_pause_at_its_silence() -> None:
    model = ScriptedModel([0.5])
    probs = [0.9] * secs(1.0) + [0.0] * secs(0.4) + [0.9] * secs(0.5) + [0.0] * secs(1.5)
    _, events = model.run(probs)
    checks = [e for e in events if e.kind is K.END_OF_TURN_CHECK]
    assert len(checks) == 2  # asked again after the caller resumed and paused again
    for check in checks:
        assert check.speech_end is not None
        assert check.time - check.speech_end == pytest.approx(0.2, abs=WINDOW_S)


def test_high_score_ends_the_turn_when_it_arrives() -> None:
    model = ScriptedModel([0.95], delay=3)
    _, events = model.run([0.9] * secs(1.0) + [0.0] * secs(1.5))
    assert kinds(events) == [K.SPEECH_STARTED, K.SPEECH_PAUSED, K.END_OF_TURN_CHECK, K.TURN_ENDED]
    # at the check plus the model's 3 windows, long before the 700 ms timer
    assert ended_after(events) == pytest.approx(0.2 + 3 * WINDOW_S, abs=WINDOW_S)
    assert events[-1].score == pytest.approx(0.95)


def test_low_score_stretches_the_wait() -> None:
    probs = [0.9] * secs(1.0) + [0.0] * secs(2.0)
    _, events = ScriptedModel([0.05]).run(probs)
    assert ended_after(events) == pytest.approx(1.2, abs=WINDOW_S)
    # a 900 ms pause, which the timer alone would have cut, is waited out
    probs = [0.9] * secs(1.0) + [0.0] * secs(0.9) + [0.9] * secs(0.5) + [0.0] * secs(2.0)
    _, events = ScriptedModel([0.05, 0.95]).run(probs)
    assert kinds(events).count(K.TURN_ENDED) == 1
    assert kinds(events).count(K.SPEECH_RESUMED) == 1
    _, plain = run(probs, TurnSettings(end_of_turn_silence_ms=700))
    assert kinds(plain).count(K.TURN_ENDED) == 2


def test_unsure_score_leaves_the_timer_to_decide() -> None:
    _, events = ScriptedModel([0.5]).run([0.9] * secs(1.0) + [0.0] * secs(1.5))
    assert ended_after(events) == pytest.approx(0.7, abs=WINDOW_S)


def test_answer_later_than_the_timer_changes_nothing() -> None:
    model = ScriptedModel([0.05], delay=secs(1.0))  # the model is slower than the timer
    _, events = model.run([0.9] * secs(1.0) + [0.0] * secs(2.5))
    assert kinds(events).count(K.TURN_ENDED) == 1
    assert ended_after(events) == pytest.approx(0.7, abs=WINDOW_S)


def test_answer_after_speech_resumed_is_stale() -> None:
    # the caller resumes 300 ms into the pause; the "done" answer comes 400 ms later
    model = ScriptedModel([0.99, 0.5], delay=secs(0.4))
    probs = [0.9] * secs(1.0) + [0.0] * secs(0.3) + [0.9] * secs(1.0) + [0.0] * secs(1.5)
    _, events = model.run(probs)
    assert kinds(events).count(K.TURN_ENDED) == 1
    end = next(e for e in events if e.kind is K.TURN_ENDED)
    assert end.score is None  # the timer ended it: the stale "done" was ignored
    assert ended_after(events) == pytest.approx(0.7, abs=WINDOW_S)


def test_answer_for_another_pause_or_turn_is_ignored() -> None:
    det = TurnDetector(WITH_MODEL, GateSettings())
    window = np.zeros(WINDOW_SAMPLES, np.float32)
    checks: list[TurnEvent] = []
    for p in [0.9] * secs(1.0) + [0.0] * secs(0.3):
        checks += [e for e in det.process(window, p) if e.kind is K.END_OF_TURN_CHECK]
    [check] = checks
    assert det.end_of_turn_score(0.99, asked_at=check.time - WINDOW_S) == []  # not this question
    assert det.in_turn
    [ended] = det.end_of_turn_score(0.99, asked_at=check.time)
    assert ended.kind is K.TURN_ENDED
    assert det.end_of_turn_score(0.99, asked_at=check.time) == []  # already answered
    assert not det.in_turn


def test_short_speech_is_not_worth_asking() -> None:
    model = ScriptedModel([0.99])
    _, events = model.run([0.0] * 5 + [0.9] * 4 + [0.0] * secs(1.0))
    assert model.asked == []
    assert kinds(events) == [K.SPEECH_STARTED, K.SPEECH_PAUSED, K.SPEECH_DISCARDED]


def test_without_a_check_the_timer_alone_decides() -> None:
    _, events = run([0.9] * secs(1.0) + [0.0] * secs(1.5))
    assert K.END_OF_TURN_CHECK not in kinds(events)


def test_check_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="incomplete_threshold"):
        EndOfTurnCheck(complete_threshold=0.3, incomplete_threshold=0.5)
    with pytest.raises(ValueError, match="before end_of_turn_silence_ms"):
        TurnSettings(end_of_turn_silence_ms=300, check=EndOfTurnCheck(after_ms=300))
    with pytest.raises(ValueError, match="incomplete_silence_ms"):
        TurnSettings(check=EndOfTurnCheck(incomplete_silence_ms=500))
