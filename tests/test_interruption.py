"""The barge-in state machine, exactly, over stream time (no models, no clock)."""

from __future__ import annotations

import pytest

from agent.interruption import (
    BargeInAction,
    BargeInPhase,
    InterruptionController,
    InterruptionSettings,
)

PAUSE, CONFIRM, RESUME = BargeInAction.PAUSE, BargeInAction.CONFIRM, BargeInAction.RESUME


def phase(c: InterruptionController) -> BargeInPhase:
    """The controller's phase (a call, so mypy does not narrow it across actions)."""
    return c.phase


def controller(**kw: int | bool) -> InterruptionController:
    settings = InterruptionSettings(
        **{"min_speech_ms": 150, "min_words": 1, "false_interruption_timeout_ms": 1000, **kw}  # type: ignore[arg-type]
    )
    c = InterruptionController(settings)
    assert c.reply_started(0.0) == []
    return c


def test_speech_without_a_reply_does_nothing() -> None:
    c = InterruptionController(InterruptionSettings())
    assert c.speech_started(1.0, 1.0) == []
    assert c.advance(5.0) == []
    assert c.words_heard(5) == []
    assert c.turn_transcribed(5) == []
    assert phase(c) is BargeInPhase.IDLE


def test_speech_held_pauses_then_words_confirm() -> None:
    c = controller()
    assert c.speech_started(1.0, 1.064) == []
    assert phase(c) is BargeInPhase.WATCHING
    assert c.advance(1.12) == []  # 120 ms of speech: not yet
    assert c.advance(1.15) == [PAUSE]
    assert c.paused
    assert c.advance(1.5) == []  # paused until words or silence decide
    assert c.words_heard(0) == []
    assert c.words_heard(2) == [CONFIRM]
    assert phase(c) is BargeInPhase.IDLE
    # the reply is gone: later speech changes nothing
    assert c.speech_started(3.0, 3.0) == [] and c.advance(4.0) == []


def test_noise_resumes_after_the_false_interruption_timeout() -> None:
    c = controller()
    c.speech_started(1.0, 1.0)
    assert c.advance(1.2) == [PAUSE]
    c.speech_paused(1.4)
    assert c.advance(2.3) == []  # 900 ms of silence
    assert c.advance(2.4) == [RESUME]
    assert phase(c) is BargeInPhase.IDLE


def test_speech_resuming_holds_the_pause() -> None:
    c = controller()
    c.speech_started(1.0, 1.0)
    c.advance(1.2)
    c.speech_paused(1.4)
    assert c.speech_resumed(2.0) == []
    assert c.advance(3.5) == []  # speaking: no timeout runs
    c.speech_paused(3.6)
    assert c.advance(4.7) == [RESUME]


def test_discarded_speech_resumes_a_paused_reply_and_ends_a_watch() -> None:
    c = controller()
    c.speech_started(1.0, 1.0)
    c.advance(1.2)
    assert c.speech_ended() == [RESUME]
    c.speech_started(2.0, 2.0)  # too short to pause
    assert phase(c) is BargeInPhase.WATCHING
    assert c.speech_ended() == []
    assert phase(c) is BargeInPhase.IDLE


def test_words_before_the_timer_pause_and_confirm_at_once() -> None:
    c = controller(min_speech_ms=400)
    c.speech_started(1.0, 1.0)
    assert c.words_heard(1) == [PAUSE, CONFIRM]


def test_fillers_never_confirm_and_min_words_is_honoured() -> None:
    c = controller(min_words=3)
    c.speech_started(1.0, 1.0)
    c.advance(1.2)
    assert c.words_heard(2) == []
    assert c.words_heard(3) == [CONFIRM]


def test_vad_alone_confirms_with_min_words_zero() -> None:
    c = controller(min_words=0)
    c.speech_started(1.0, 1.0)
    assert c.advance(1.2) == [PAUSE, CONFIRM]


def test_disabled_interruptions_never_act() -> None:
    c = controller(enabled=False)
    c.speech_started(1.0, 1.0)
    assert c.advance(9.0) == [] and c.words_heard(9) == []


def test_final_transcript_decides_the_turn() -> None:
    c = controller()
    c.speech_started(1.0, 1.0)
    c.advance(1.2)
    c.speech_paused(1.5)
    assert c.turn_transcribed(0) == [RESUME]
    c.speech_started(3.0, 3.0)
    c.advance(3.2)
    assert c.turn_transcribed(4) == [CONFIRM]


def test_reply_starting_while_the_caller_speaks_is_watched() -> None:
    """Speech under way when a reply starts (it was thinking) counts as barge-in."""
    c = InterruptionController(InterruptionSettings(min_speech_ms=150))
    c.speech_started(1.0, 1.0)  # no reply yet
    assert phase(c) is BargeInPhase.IDLE
    assert c.reply_started(1.5) == []
    assert phase(c) is BargeInPhase.WATCHING
    assert c.advance(1.7) == [PAUSE]
    assert c.words_heard(2) == [CONFIRM]


def test_reply_ending_resets_everything() -> None:
    c = controller()
    c.speech_started(1.0, 1.0)
    c.advance(1.2)
    c.reply_ended()
    assert phase(c) is BargeInPhase.IDLE
    assert c.words_heard(5) == [] and c.turn_transcribed(5) == []


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        InterruptionSettings(min_speech_ms=-1)
    with pytest.raises(ValueError, match="> 0"):
        InterruptionSettings(false_interruption_timeout_ms=0)


def test_min_speech_zero_pauses_at_the_vad_onset_and_noise_resumes() -> None:
    c = controller(min_speech_ms=0)
    # the onset itself pauses (no hold): the stop time loses the min_speech_ms part
    assert c.speech_started(2.0, 2.064) == [PAUSE]
    assert phase(c) is BargeInPhase.PAUSED
    c.speech_paused(2.2)
    assert c.advance(3.1) == []
    # no words within false_interruption_timeout_ms: the reply goes on where it paused
    assert c.advance(3.2) == [RESUME]
    assert phase(c) is BargeInPhase.IDLE
