"""VoiceSession's logic on fake providers: fast, deterministic races and failure paths.

The caller's "speech" is a tone that the energy VAD reads as speech; STT,
LLM and TTS are scripted and can be held on a gate, so the order of events
(the caller speaking again while a transcript is pending, speech while the
agent thinks, a provider failing mid-reply) is set by the test, not by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.errors import ProviderError, SessionClosedError
from agent.events import (
    AgentEvent,
    DtmfEvent,
    ErrorEvent,
    HoldEvent,
    InterruptionEvent,
    ReplyEvent,
    SessionState,
    StateEvent,
    TranscriptEvent,
)
from agent.llm import ToolCallDelta
from agent.session import VoiceSession, new_turn_id
from agent.stt import Transcript
from agent.tts import SpeechChunk
from media.frames import AudioFrame, FloatPCM, rms_dbfs
from tests.fakes import (
    FRAME,
    FakeSTT,
    FakeTTS,
    ScriptedLLM,
    STTCall,
    fake_models,
    feed,
    silence,
    tone,
)


def config(**turn: object) -> AgentConfig:
    """Short turn-taking timers so a test feeds little audio."""
    base = AgentConfig.load()
    return base.model_copy(
        update={
            "greeting": None,
            "turn": base.turn.model_copy(
                update={"end_of_turn_silence_ms": 300, "min_speech_ms": 100, **turn}
            ),
            "stt": base.stt.model_copy(update={"partials": False}),
        }
    )


class Events:
    def __init__(self) -> None:
        self.all: list[AgentEvent] = []

    def __call__(self, event: AgentEvent) -> None:
        self.all.append(event)

    def finals(self) -> list[str]:
        return [e.text for e in self.all if isinstance(e, TranscriptEvent) and e.final]

    def replies(self) -> list[ReplyEvent]:
        return [e for e in self.all if isinstance(e, ReplyEvent)]

    def states(self) -> list[SessionState]:
        return [e.state for e in self.all if isinstance(e, StateEvent)]

    def phases(self) -> list[str]:
        return [e.phase for e in self.all if isinstance(e, InterruptionEvent)]


async def test_caller_speaking_again_before_the_transcript_merges_the_turns() -> None:
    """Defect 3: a turn transcribed while the caller talks again must not start a reply."""
    stt = FakeSTT(["what time do you", "open on saturday"])
    llm = ScriptedLLM(["We open at nine."])
    events = Events()
    session = VoiceSession(config(), fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        stt.gate.clear()  # the first turn's transcript is slow
        await feed(
            session, np.concatenate([silence(0.2), tone(0.6), silence(0.5)]), transcripts=False
        )
        assert stt.final_calls >= 1  # the first turn ended and waits for its transcript
        await feed(session, tone(0.3), transcripts=False)  # the caller goes on talking
        stt.gate.set()
        await session.wait_settled()
        assert events.finals() == ["what time do you"]
        assert llm.requests == []  # no reply over the caller
        assert session.state is SessionState.LISTENING
        await feed(session, silence(1.5))
    assert events.finals() == ["what time do you", "open on saturday"]
    assert len(llm.requests) == 1
    last_user = [m for m in llm.requests[0].messages if m.role == "user"][-1]
    assert last_user.content == "what time do you open on saturday"
    [reply] = events.replies()
    assert not reply.interrupted and reply.text == "We open at nine."
    assert [m.role for m in session.history.messages()] == ["user", "assistant"]


async def test_speech_while_thinking_is_barge_in() -> None:
    """The caller talking over a reply that has no audio yet cancels it like barge-in."""
    stt = FakeSTT(["never mind"])
    llm = ScriptedLLM(["Let me think about that for a while.", "Okay."])
    events = Events()
    cfg = config()
    cfg = cfg.model_copy(update={"stt": cfg.stt.model_copy(update={"partials": True})})
    session = VoiceSession(cfg, fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        llm.gate.clear()  # the LLM is slow: the agent stays THINKING
        await session.send_text("tell me a story")
        await feed(session, silence(0.1), reply=False)
        assert session.state is SessionState.THINKING
        await feed(session, tone(0.6), reply=False)  # a partial with words comes meanwhile
        assert events.phases()[:2] == ["paused", "confirmed"]
        first = events.replies()[0]
        assert first.interrupted and first.heard_text == ""
        assert llm.cancelled == 1
        llm.gate.set()
        await feed(session, silence(1.0))
    assert events.finals() == ["tell me a story", "never mind"]
    assert [r.text for r in events.replies()] == ["", "Okay."]
    # nothing of the cut reply was heard: the history holds only what was said
    assert [(m.role, m.content) for m in session.history.messages()] == [
        ("user", "tell me a story never mind"),
        ("assistant", "Okay."),
    ]


async def test_noise_over_a_reply_resumes_it() -> None:
    stt = FakeSTT([""])  # the noise has no words
    llm = ScriptedLLM(["Our opening hours are nine to five on weekdays."])
    events = Events()
    session = VoiceSession(config(), fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        await session.send_text("hours?")
        await feed(session, silence(0.5))
        assert session.state is SessionState.SPEAKING
        await feed(session, tone(0.3))  # a cough: pauses the agent
        assert events.phases() == ["paused"]
        await feed(session, silence(3.0))
    assert events.phases() == ["paused", "resumed"]
    [reply] = events.replies()
    assert not reply.interrupted


async def test_llm_failure_mid_reply_commits_what_was_heard_and_recovers() -> None:
    llm = ScriptedLLM(["One two three four five six seven eight nine ten.", "Fine."])
    llm.fail_next(at_token=6)
    events = Events()
    session = VoiceSession(config(), fake_models(llm=llm), sinks=[events])
    async with session:
        await session.send_text("count")
        await feed(session, silence(3.0))
        assert session.state is SessionState.LISTENING
        errors = [e for e in events.all if isinstance(e, ErrorEvent)]
        assert [e.stage for e in errors] == ["reply"] and errors[0].retryable
        await session.send_text("again")
        await feed(session, silence(1.5))
    first, second = events.replies()
    assert first.interrupted and second.text == "Fine." and not second.interrupted


class SwitchingTTS(FakeTTS):
    """A TTS whose voice falls back mid-reply: 24 kHz first, then 22.05 kHz."""

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        rate, voice = (24000, "cloud") if not self.texts else (22050, "piper")
        self.texts.append(text)
        yield SpeechChunk(tone(len(text) * 0.05, rate, 440.0), rate, voice)


async def test_tts_chunks_at_different_rates_play_at_the_right_length() -> None:
    tts = SwitchingTTS()
    text = "First sentence is here. And the second one follows now."
    llm = ScriptedLLM([text])
    session = VoiceSession(config(), fake_models(llm=llm, tts=tts))
    async with session:
        await session.send_text("go")
        audio = await feed(session, silence(5.0))
        handle_voice = [m for m in session.history.messages() if m.role == "assistant"]
    assert len(tts.texts) == 2  # two chunks, one per voice
    expected = sum(len(t) * 0.05 for t in tts.texts)
    frames = audio[: audio.size // FRAME * FRAME].reshape(-1, FRAME)
    loud = sum(rms_dbfs(f) > -30 for f in frames) * FRAME / 16000
    assert loud == pytest.approx(expected, abs=0.06)  # within three 20 ms frames
    assert handle_voice[0].content == text


async def test_turn_ids_are_unique_and_ordered_across_sessions() -> None:
    ids = [new_turn_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) <= 32 for i in ids)  # the store's column
    await asyncio.sleep(0.002)
    assert new_turn_id()[:16] > ids[0][:16]  # a later turn sorts after


async def test_failed_audio_loop_closes_the_session() -> None:
    """Defect 7, session side: a dead audio loop does not leave a deaf call open."""

    class BrokenVAD:
        def stream(self) -> BrokenVAD:
            return self

        def process(self, audio: object) -> list[float]:
            raise RuntimeError("boom")

    events = Events()
    models = fake_models()
    models.vad = BrokenVAD()  # type: ignore[assignment]
    session = VoiceSession(config(), models, sinks=[events])
    await session.start()
    session.push_audio(AudioFrame(silence(0.1), 16000))
    seen = [e async for e in session.events()]  # ends with CLOSED
    assert session.closed and session.failure == "audio-loop failed: RuntimeError"
    assert any(isinstance(e, ErrorEvent) and e.stage == "audio-loop" for e in seen)
    await session.close()  # idempotent
    assert session.active_tasks == 0


async def test_close_while_thinking_cancels_the_llm_and_leaves_no_task() -> None:
    llm = ScriptedLLM(["A long answer."])
    llm.gate.clear()
    events = Events()
    session = VoiceSession(config(), fake_models(llm=llm), sinks=[events])
    await session.start()
    await session.send_text("question")
    await asyncio.sleep(0.01)
    assert llm.active == 1
    await session.close()
    assert session.active_tasks == 0 and llm.active == 0 and llm.cancelled == 1
    assert events.states()[-1] is SessionState.CLOSED
    [reply] = events.replies()
    assert reply.interrupted and reply.heard_text == ""


async def test_stt_failure_of_a_turn_is_reported_and_listening_goes_on() -> None:
    stt = FakeSTT(["hello there"])
    events = Events()
    session = VoiceSession(config(), fake_models(stt=stt), sinks=[events])
    async with session:
        stt.fail_next(ProviderError("fake-stt", "down", retryable=True))
        await feed(session, np.concatenate([tone(0.5), silence(0.6)]))
        assert [e.stage for e in events.all if isinstance(e, ErrorEvent)] == ["stt"]
        await feed(session, np.concatenate([tone(0.5), silence(1.5)]))
    assert events.finals() == ["hello there"]
    assert len(events.replies()) == 1


async def test_a_reply_without_audio_ends_and_returns_to_listening() -> None:
    """An empty reply or one that is only a tool call must not leave the agent THINKING."""
    call = [ToolCallDelta(0, id="call_1", name="pause", arguments="{}")]
    llm = ScriptedLLM(["", call, "Fine."])
    events = Events()
    session = VoiceSession(config(), fake_models(llm=llm), sinks=[events])
    async with session:
        await session.send_text("say nothing")
        await feed(session, silence(0.2))
        assert session.state is SessionState.LISTENING
        await session.send_text("pause the music")
        await feed(session, silence(0.2))
        assert session.state is SessionState.LISTENING
        await session.send_text("hello")
        await feed(session, silence(1.0))
    assert [r.text for r in events.replies()] == ["", "", "Fine."]
    assert not any(r.interrupted for r in events.replies())


async def test_a_final_transcript_cutting_a_reply_is_recorded_after_it() -> None:
    """With no partials to confirm the barge-in, the final does: the cut reply comes first."""
    stt = FakeSTT(["stop right there"])
    llm = ScriptedLLM(["Our opening hours are nine to five on weekdays and ten to two.", "Ok."])
    events = Events()
    session = VoiceSession(config(), fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        await session.send_text("hours?")
        await feed(session, silence(0.5))
        await feed(session, np.concatenate([tone(0.5), silence(1.0)]))
    kinds = [
        (type(e).__name__, getattr(e, "text", ""))
        for e in events.all
        if isinstance(e, ReplyEvent) or (isinstance(e, TranscriptEvent) and e.final)
    ]
    assert kinds[:3] == [
        ("TranscriptEvent", "hours?"),
        ("ReplyEvent", "Our opening hours are nine to five on weekdays and ten to two."),
        ("TranscriptEvent", "stop right there"),
    ]
    history = session.history.messages()
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1].interrupted and history[2].content == "stop right there"


class ScriptedSTT(FakeSTT):
    """Finals answer in a scripted order: each with its own delay, or an exception."""

    def __init__(self, finals: list[tuple[float, str | Exception]]) -> None:
        super().__init__([""])
        self.finals = finals

    async def transcribe(self, audio: FloatPCM, *, partial: bool = False) -> Transcript:
        self.calls.append(STTCall(partial, audio.size / 16000))
        delay, outcome = self.finals[min(self.final_calls - 1, len(self.finals) - 1)]
        await asyncio.sleep(delay)
        if isinstance(outcome, Exception):
            raise outcome
        return Transcript(outcome, 0.9, audio.size / 16000, delay)


async def test_finals_are_delivered_in_the_order_the_turns_ended() -> None:
    stt = ScriptedSTT([(0.3, "what time do you"), (0.0, "open on saturday")])
    llm = ScriptedLLM(["At nine."])
    events = Events()
    cfg = config(speculative_stt=False)
    session = VoiceSession(cfg, fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        pcm = np.concatenate([tone(0.5), silence(0.4), tone(0.5), silence(0.4)])
        await feed(session, pcm, transcripts=False)  # turn two ends before turn one's final
        assert stt.final_calls == 2
        await session.wait_settled()
        await feed(session, silence(1.0))
    assert events.finals() == ["what time do you", "open on saturday"]
    [request] = llm.requests
    assert request.messages[-1].content == "what time do you open on saturday"


async def test_an_stt_crash_does_not_strand_a_held_turn() -> None:
    """A transcription raising a non-provider error is reported; held turns still get a reply."""
    stt = ScriptedSTT([(0.0, "what time do you"), (0.0, RuntimeError("bug"))])
    llm = ScriptedLLM(["At nine."])
    events = Events()
    session = VoiceSession(
        config(speculative_stt=False), fake_models(stt=stt, llm=llm), sinks=[events]
    )
    async with session:
        stt.finals[0] = (0.2, "what time do you")  # turn one's final arrives during turn two
        await feed(session, np.concatenate([tone(0.5), silence(0.4), tone(0.3)]), transcripts=False)
        await session.wait_settled(reply=False)
        assert llm.requests == []  # held: the caller is talking
        await feed(session, silence(1.0))
    assert [e.stage for e in events.all if isinstance(e, ErrorEvent)] == ["stt"]
    assert [r.text for r in events.replies()] == ["At nine."]
    assert llm.requests[0].messages[-1].content == "what time do you"


async def test_input_is_refused_from_the_moment_close_starts() -> None:
    llm = ScriptedLLM(["A long answer."])
    llm.gate.clear()
    session = VoiceSession(config(), fake_models(llm=llm))
    await session.start()
    await session.send_text("question")
    closing = asyncio.create_task(session.close())
    await asyncio.sleep(0)  # close() has started and waits for the listener
    assert not session.accepting_input
    with pytest.raises(SessionClosedError):
        await session.send_text("too late")
    with pytest.raises(SessionClosedError):
        session.push_audio(AudioFrame(silence(0.02), 16000))
    await closing
    assert session.closed and session.active_tasks == 0


async def test_dtmf_digits_are_events_and_one_user_turn() -> None:
    llm = ScriptedLLM(["Account found."])
    events = Events()
    cfg = config()
    cfg = cfg.model_copy(update={"dtmf": cfg.dtmf.model_copy(update={"collect_ms": 200})})
    session = VoiceSession(cfg, fake_models(llm=llm), sinks=[events])
    async with session:
        for digit in "42":
            session.dtmf(digit, 120)
        session.dtmf("7", 100)
        await asyncio.sleep(0.3)  # the collect window closes: one turn for "427"
        await feed(session, silence(0.5))
        session.dtmf("9")
        session.dtmf("#")  # "#" ends the entry at once
        await feed(session, silence(0.5))
        with pytest.raises(ValueError, match="DTMF"):
            session.dtmf("x")
    digits = [e.digit for e in events.all if isinstance(e, DtmfEvent)]
    assert digits == ["4", "2", "7", "9", "#"]
    assert events.finals() == [
        "The caller pressed 427 on the keypad.",
        "The caller pressed 9# on the keypad.",
    ]
    assert len(llm.requests) == 2


async def test_dtmf_without_llm_turns_only_emits_events() -> None:
    llm = ScriptedLLM(["unused"])
    events = Events()
    cfg = config()
    cfg = cfg.model_copy(update={"dtmf": cfg.dtmf.model_copy(update={"to_llm": False})})
    async with VoiceSession(cfg, fake_models(llm=llm), sinks=[events]) as session:
        session.dtmf("5")
        await feed(session, silence(0.3))
    assert [e.digit for e in events.all if isinstance(e, DtmfEvent)] == ["5"]
    assert llm.requests == [] and events.finals() == []


async def test_hold_pauses_the_agent_and_ignores_music_on_hold() -> None:
    stt = FakeSTT(["this is hold music"])
    llm = ScriptedLLM(["Our opening hours are nine to five on weekdays."])
    events = Events()
    session = VoiceSession(config(), fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        await session.send_text("hours?")
        await feed(session, silence(0.4))
        assert session.state is SessionState.SPEAKING
        session.set_hold(True)
        held = await feed(session, np.concatenate([tone(1.0), silence(1.0)]))  # music on hold
        assert np.abs(held).max() == 0  # the agent is silent on hold
        assert stt.final_calls == 0 and events.phases() == []  # the music is not a turn
        session.set_hold(False)
        after = await feed(session, silence(3.0))
    assert np.abs(after).max() > 1000  # the reply went on where it paused
    [reply] = events.replies()
    assert not reply.interrupted
    holds = [e.on_hold for e in events.all if isinstance(e, HoldEvent)]
    assert holds == [True, False]


async def test_a_false_interruption_during_hold_does_not_restart_the_agent() -> None:
    stt = FakeSTT([""])  # a cough: no words
    llm = ScriptedLLM(["Our opening hours are nine to five on weekdays and ten to two."])
    events = Events()
    session = VoiceSession(config(), fake_models(stt=stt, llm=llm), sinks=[events])
    async with session:
        await session.send_text("hours?")
        await feed(session, silence(0.4))
        await feed(session, tone(0.3))  # the cough pauses the agent...
        assert events.phases() == ["paused"]
        session.set_hold(True)  # ...and the caller puts the call on hold meanwhile
        held = await feed(session, silence(2.5))  # the false interruption resolves on hold
        assert events.phases() == ["paused", "resumed"]
        assert np.abs(held).max() == 0  # on hold, the agent stays silent all the same
        session.set_hold(False)
        after = await feed(session, silence(3.0))
    assert np.abs(after).max() > 1000
    [reply] = events.replies()
    assert not reply.interrupted
