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
    with pytest.raises(ValueError, match=">= 0"):
        InterruptionSettings(false_pause_hold_ms=-1)
    with pytest.raises(ValueError, match="> 0"):
        InterruptionSettings(false_interruption_timeout_ms=0)
    with pytest.raises(ValueError, match="> 0"):
        InterruptionSettings(false_pause_relax_ms=0)


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


# ------------------------------------------------------------ the adaptive onset hold


def speaking(settings: InterruptionSettings | None = None) -> InterruptionController:
    """A controller (default settings unless given) over a reply whose audio is playing."""
    c = InterruptionController(settings or InterruptionSettings())
    assert c.reply_started(0.0) == []
    c.reply_audible()
    return c


def echo_cycle(c: InterruptionController, at: float) -> list[BargeInAction]:
    """The agent's echo on a line without echo cancellation, at a hold of 0: its onset
    pauses the reply, which silences the echo 120 ms later (too short for a turn)."""
    actions = c.speech_started(at, at + 0.064)
    actions += c.advance(at + 0.096)
    c.speech_paused(at + 0.12)
    actions += c.advance(at + 0.2)
    actions += c.speech_ended()
    return actions


def test_the_default_pauses_at_the_vad_onset() -> None:
    c = speaking()
    assert c.hold_ms == 0
    assert c.speech_started(1.0, 1.064) == [PAUSE]
    assert c.words_heard(3) == [CONFIRM]


def test_an_echoing_line_stutters_once_not_all_the_reply_long() -> None:
    # what pausing at every onset does: pause, resume, every half second
    fixed = speaking(InterruptionSettings(false_pause_hold_ms=0))
    cycles = [echo_cycle(fixed, 1.0 + 0.5 * i) for i in range(10)]
    assert cycles == [[PAUSE, RESUME]] * 10
    # the first false pause raises the hold: later echo onsets (120 ms) no longer pause
    c = speaking()
    cycles = [echo_cycle(c, 1.0 + 0.5 * i) for i in range(10)]
    assert cycles == [[PAUSE, RESUME]] + [[]] * 9
    assert (c.hold_ms, c.false_pauses) == (150, 1)
    # the echo that holds 150 ms pauses the reply, as any speech did with the old default
    assert c.speech_started(7.0, 7.064) == []
    assert c.advance(7.128) == []
    assert c.advance(7.16) == [PAUSE]


def test_every_kind_of_false_pause_raises_the_hold() -> None:
    """Discarded speech, a turn without words, the timeout and a transcript of echo."""

    def paused() -> InterruptionController:
        c = speaking(InterruptionSettings(false_interruption_timeout_ms=1000))
        assert c.speech_started(1.0, 1.064) == [PAUSE]
        return c

    c = paused()
    assert c.speech_ended() == [RESUME] and c.hold_ms == 150
    c = paused()
    c.speech_paused(1.5)
    assert c.turn_transcribed(0) == [RESUME] and c.hold_ms == 150
    c = paused()
    c.speech_paused(1.5)
    assert c.advance(2.5) == [RESUME] and c.hold_ms == 150
    c = paused()
    assert c.echo_heard() == [RESUME] and c.hold_ms == 150


def test_a_confirmed_pause_or_one_before_the_audio_keeps_the_onset_hold() -> None:
    c = speaking()
    c.speech_started(1.0, 1.064)
    assert c.words_heard(2) == [CONFIRM]
    assert c.hold_ms == 0 and c.false_pauses == 0
    # a reply still thinking has no echo: a cough over it says nothing about the line
    c = InterruptionController(InterruptionSettings())
    c.reply_started(0.0)
    assert c.speech_started(1.0, 1.064) == [PAUSE]
    assert c.speech_ended() == [RESUME]
    assert c.hold_ms == 0 and c.false_pauses == 0


def test_the_raised_hold_relaxes_after_the_agent_was_heard_in_peace() -> None:
    c = speaking(InterruptionSettings(false_pause_relax_ms=3000))
    assert echo_cycle(c, 1.0) == [PAUSE, RESUME]  # a cough, say: hold 150
    c.advance(1.3)  # quiet from here ...
    c.advance(4.0)
    c.speech_started(4.1, 4.164)  # ... but 2.8 s later the caller makes a sound (100 ms)
    c.speech_paused(4.2)
    c.speech_ended()
    assert c.hold_ms == 150
    c.advance(4.3)  # the quiet clock starts again
    c.advance(7.29)
    assert c.hold_ms == 150
    c.advance(7.3)
    assert c.hold_ms == 0
    assert c.speech_started(8.0, 8.064) == [PAUSE]


def test_only_audible_time_relaxes_the_hold() -> None:
    c = speaking(InterruptionSettings(false_pause_relax_ms=3000))
    echo_cycle(c, 1.0)
    c.advance(1.3)
    c.reply_ended()  # the reply is over: silence between replies proves nothing
    c.advance(9.0)
    assert c.hold_ms == 150
    c.reply_started(9.0)  # the next reply thinks: no audio yet
    c.advance(13.0)
    assert c.hold_ms == 150
    c.reply_audible()
    c.advance(13.02)
    c.advance(16.02)
    assert c.hold_ms == 0


def test_a_paused_reply_does_not_relax_the_hold() -> None:
    c = speaking(
        InterruptionSettings(false_pause_relax_ms=3000, false_interruption_timeout_ms=5000)
    )
    echo_cycle(c, 1.0)
    c.advance(1.3)
    c.speech_started(2.0, 2.064)
    assert c.advance(2.15) == [PAUSE]  # held 150 ms: paused
    c.speech_paused(2.3)
    c.advance(2.4)
    c.advance(5.4)  # three seconds paused, not heard
    assert c.paused and c.hold_ms == 150
    assert c.words_heard(0) == [] and c.turn_transcribed(0) == [RESUME]  # a second false pause
    c.advance(5.5)
    c.advance(8.49)
    assert c.hold_ms == 150 and c.false_pauses == 2
    c.advance(8.5)
    assert c.hold_ms == 0


def test_the_hold_never_drops_below_min_speech_ms() -> None:
    c = speaking(InterruptionSettings(min_speech_ms=250, false_pause_hold_ms=150))
    c.speech_started(1.0, 1.064)
    assert c.advance(1.25) == [PAUSE]
    assert c.speech_ended() == [RESUME]
    assert c.hold_ms == 250
