"""Turn detection as a pure state machine over window probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from agent.turns import TurnDetector, TurnEvent, TurnEventKind, TurnSettings
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
