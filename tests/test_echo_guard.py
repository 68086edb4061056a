"""The echo guard: the agent's own words played back by the caller's line are not the caller's.

Unit tests of the word split and of the barge-in controller's ECHO phase, then
a session on fake providers where the "caller" is the agent's echo (the STT
hears the reply's own words) and, once, a caller with words of their own.
"""

from __future__ import annotations

import pytest

from agent.config import AgentConfig
from agent.echo_guard import EchoGuard, words_of
from agent.interruption import (
    BargeInAction,
    BargeInPhase,
    InterruptionController,
    InterruptionSettings,
)
from agent.session import VoiceSession
from tests.fakes import FakeSTT, ScriptedLLM, fake_models, feed, silence, tone
from tests.test_session_logic import Events, config

FILLERS = ("uh", "um", "hmm", "mm-hmm", "uh-huh")
REPLY = "The weather in Paris is sunny today, with a light breeze from the west."


def test_words_keep_contractions_and_hyphenated_backchannels() -> None:
    assert words_of("Don't stop, UH-HUH! It's 9 o'clock.") == [
        "don't",
        "stop",
        "uh-huh",
        "it's",
        "9",
        "o'clock",
    ]


def test_split_counts_only_words_the_agent_did_not_say() -> None:
    guard = EchoGuard(FILLERS, enabled=True)
    echo = guard.split("the weather in Paris is", [REPLY], now=0.0)
    assert (echo.own, echo.echoed, echo.only_echo) == (0, 5, True)
    barge = guard.split("Stop, what about London?", [REPLY], now=0.0)
    assert (barge.own, barge.echoed, barge.only_echo) == (4, 0, False)
    mixed = guard.split("no, not Paris", [REPLY], now=0.0)
    assert (mixed.own, mixed.echoed) == (2, 1)
    fillers = guard.split("uh-huh hmm", [REPLY], now=0.0)
    assert (fillers.own, fillers.echoed, fillers.only_echo) == (0, 0, False)


def test_split_when_disabled_counts_every_content_word() -> None:
    guard = EchoGuard(FILLERS, enabled=False)
    heard = guard.split("the weather in Paris", [REPLY], now=0.0)
    assert (heard.own, heard.echoed) == (4, 0)


def test_a_finished_reply_still_echoes_for_its_tail() -> None:
    guard = EchoGuard(FILLERS, enabled=True, tail_s=2.0)
    guard.reply_ended(REPLY, now=10.0)
    assert guard.split("light breeze from the west", [], now=11.5).only_echo
    late = guard.split("light breeze from the west", [], now=12.5)
    assert late.own == 5 and not late.only_echo


def _paused_controller() -> InterruptionController:
    barge = InterruptionController(InterruptionSettings(min_speech_ms=150, min_words=1))
    barge.reply_started(0.0)
    barge.speech_started(1.0, 1.0)
    assert barge.advance(1.2) == [BargeInAction.PAUSE]
    return barge


def test_echo_resumes_a_paused_reply_and_stops_the_speech_timer() -> None:
    barge = _paused_controller()
    assert barge.echo_heard() == [BargeInAction.RESUME]
    assert barge.phase is BargeInPhase.ECHO
    # the echo goes on: the speech timer does not pause the reply again
    assert barge.advance(3.0) == []
    assert barge.speech_resumed(3.1) == []
    # words of the caller's own still interrupt
    assert barge.words_heard(2) == [BargeInAction.CONFIRM]


def test_new_speech_after_an_echo_is_watched_again() -> None:
    barge = _paused_controller()
    barge.echo_heard()
    barge.speech_paused(2.0)
    assert barge.speech_started(4.0, 4.0) == []
    assert barge.phase is BargeInPhase.WATCHING
    assert barge.advance(4.2) == [BargeInAction.PAUSE]


def test_an_echo_turn_with_no_words_of_its_own_resumes_nothing_and_ends() -> None:
    barge = _paused_controller()
    barge.echo_heard()
    assert barge.turn_transcribed(0) == []
    assert barge.phase is BargeInPhase.IDLE


def _echo_config(guard: str) -> AgentConfig:
    cfg = config()
    return cfg.model_copy(
        update={
            "stt": cfg.stt.model_copy(update={"partials": True, "partial_interval_ms": 100}),
            "interruption": cfg.interruption.model_copy(update={"echo_guard": guard}),
        }
    )


@pytest.mark.parametrize("guard", ["auto", "on"])
async def test_the_agents_echo_neither_stops_it_nor_makes_a_turn(guard: str) -> None:
    stt = FakeSTT(["the weather in Paris is sunny"])  # what the line plays back
    llm = ScriptedLLM([REPLY])
    events = Events()
    session = VoiceSession(_echo_config(guard), fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        session.set_echo_risk(True)  # what the bridge says for a SIP call
        await session.send_text("weather?")
        await feed(session, silence(0.3), reply=False)
        await feed(session, tone(0.8), reply=False)  # the echo, loud enough for the VAD
        await feed(session, silence(4.0))
    assert "confirmed" not in events.phases()
    assert stt.partial_calls >= 1  # the guard judged real transcripts
    [reply] = events.replies()
    assert not reply.interrupted and reply.text == REPLY
    assert events.finals() == ["weather?"]  # the echo made no turn
    assert [m.role for m in session.history.messages()] == ["user", "assistant"]


async def test_words_of_the_callers_own_over_the_echo_still_interrupt() -> None:
    stt = FakeSTT(["wait what about London"])
    llm = ScriptedLLM([REPLY, "London is rainy."])
    events = Events()
    session = VoiceSession(_echo_config("auto"), fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        session.set_echo_risk(True)
        await session.send_text("weather?")
        await feed(session, silence(0.3), reply=False)
        await feed(session, tone(0.8), reply=False)
        await feed(session, silence(2.0))
    assert "confirmed" in events.phases()
    assert events.replies()[0].interrupted
    assert events.finals() == ["weather?", "wait what about London"]


async def test_without_echo_risk_auto_leaves_the_agents_words_to_the_caller() -> None:
    """A browser call (no echo risk): a caller quoting the agent interrupts it as before."""
    stt = FakeSTT(["the weather in Paris is sunny"])
    llm = ScriptedLLM([REPLY, "Yes."])
    events = Events()
    session = VoiceSession(_echo_config("auto"), fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        await session.send_text("weather?")
        await feed(session, silence(0.3), reply=False)
        await feed(session, tone(0.8), reply=False)
        await feed(session, silence(2.0))
    assert "confirmed" in events.phases()
