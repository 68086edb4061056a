"""Whole calls through VoiceSession with the real local models.

The session is driven in lock-step (one 20 ms frame in, one frame of agent
audio out, waiting for the pipeline in between), which is the CLI's --fast
mode: deterministic, and faster than real time.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent.cli import run_call
from agent.config import AgentConfig
from agent.events import (
    AgentEvent,
    InterruptionEvent,
    MetricsEvent,
    ReplyEvent,
    SessionState,
    StateEvent,
    TranscriptEvent,
)
from agent.runtime import AgentModels
from agent.session import VoiceSession
from media.errors import AudioFormatError
from media.frames import AudioFrame, rms_dbfs
from tests.speech import compose, speak
from tests.textnorm import phrase_error

pytestmark = pytest.mark.slow

GREETING = (
    "Welcome to the demo line of the city library. Our opening hours are nine to five on "
    "weekdays, and ten to two on Saturdays. You can borrow up to twelve books at a time, "
    "and renew them online or by phone. We also have a music room and a quiet study hall."
)


class Recorder:
    """Collects the events of a session."""

    def __init__(self) -> None:
        self.events: list[AgentEvent] = []

    def __call__(self, event: AgentEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[AgentEvent]) -> list[AgentEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    def states(self) -> list[SessionState]:
        return [e.state for e in self.events if isinstance(e, StateEvent)]


def with_greeting(config: AgentConfig, greeting: str | None) -> AgentConfig:
    return config.model_copy(update={"greeting": greeting})


def speech_span(
    audio: np.ndarray, threshold_dbfs: float = -45.0, max_gap_s: float = 0.45
) -> list[tuple[float, float]]:
    """Stretches of speech (runs of loud 20 ms frames, short gaps bridged), in seconds."""
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for i in range(0, audio.size - 320, 320):
        loud = rms_dbfs(audio[i : i + 320]) > threshold_dbfs
        t = i / 16000
        if loud and start is None:
            start = t
        elif not loud and start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, audio.size / 16000))
    merged: list[tuple[float, float]] = []
    for a, b in spans:  # pauses between words and clauses do not split speech
        if merged and a - merged[-1][1] < max_gap_s:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def speech_seconds(audio: np.ndarray) -> float:
    """Total loud time (20 ms resolution)."""
    return sum(b - a for a, b in speech_span(audio, max_gap_s=0.0))


async def test_full_turn_transcript_reply_and_audio(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    rec = Recorder()
    caller = compose(0.5, "What is the capital of France?", 2.0)
    async with VoiceSession(agent_config, models, sinks=[rec]) as session:
        audio = await run_call(session, caller, fast=True)
        history = session.history.messages()
    finals = [e for e in rec.of(TranscriptEvent) if isinstance(e, TranscriptEvent) and e.final]
    assert len(finals) == 1
    assert phrase_error(finals[0].text, "what is the capital of France") <= 0.25
    assert 0.0 < finals[0].confidence <= 1.0
    replies = [e for e in rec.of(ReplyEvent) if isinstance(e, ReplyEvent)]
    assert len(replies) == 1 and replies[0].text and not replies[0].interrupted
    assert replies[0].heard_text == replies[0].text
    # the agent's voice starts after the caller's question ends
    spans = speech_span(audio)
    assert spans and spans[0][0] > 0.5 + 1.0
    assert speech_seconds(audio) > 0.5
    assert rec.states()[:3] == [
        SessionState.THINKING,
        SessionState.SPEAKING,
        SessionState.LISTENING,
    ]
    metrics = [e for e in rec.of(MetricsEvent) if isinstance(e, MetricsEvent)]
    assert len(metrics) == 1
    m = metrics[0]
    assert m.voice_to_voice_ms is not None and m.voice_to_voice_ms > 0
    assert m.llm_first_token_ms is not None and m.tts_first_audio_ms is not None
    assert m.speculative_hit and m.llm_tokens > 0
    assert [msg.role for msg in history] == ["user", "assistant"]


async def test_two_questions_give_two_turns(agent_config: AgentConfig, models: AgentModels) -> None:
    rec = Recorder()
    caller = compose(
        0.3, "What is the capital of France?", 5.0, "How many legs does a spider have?", 1.0
    )
    async with VoiceSession(agent_config, models, sinks=[rec]) as session:
        await run_call(session, caller, fast=True)
    finals = [
        e.text.lower()
        for e in rec.of(TranscriptEvent)
        if isinstance(e, TranscriptEvent) and e.final
    ]
    assert len(finals) == 2
    assert phrase_error(finals[0], "what is the capital of France") <= 0.25
    assert phrase_error(finals[1], "how many legs does a spider have") <= 0.25
    assert len(rec.of(ReplyEvent)) == 2


async def test_barge_in_stops_audio_and_keeps_only_heard_text(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    rec = Recorder()
    config = with_greeting(agent_config, GREETING)
    caller = compose(2.5, "Stop please, I have a question about parking.", 1.0)
    async with VoiceSession(config, models, sinks=[rec]) as session:
        audio = await run_call(session, caller, fast=True)
        history = session.history.messages()
    phases = [e.phase for e in rec.of(InterruptionEvent) if isinstance(e, InterruptionEvent)]
    assert phases[:2] == ["paused", "confirmed"]
    greeting_reply = next(e for e in rec.of(ReplyEvent) if isinstance(e, ReplyEvent))
    assert greeting_reply.interrupted
    heard = greeting_reply.heard_text
    assert heard and GREETING.startswith(heard) and len(heard) < len(GREETING) / 2
    assert history[0].role == "assistant" and history[0].interrupted
    assert history[0].content == heard
    # The agent went quiet within a fraction of a second of the caller's onset
    # (2.5 s + the Piper clip's leading silence) and stayed quiet while they spoke.
    # It spoke up to about then: the greeting's pause between its first two sentences
    # (a new synthesis chunk; Piper's output varies run to run) may fall just before.
    spans = speech_span(audio)
    first = spans[0]
    assert first[0] < 1.0
    assert 2.0 < first[1] < 2.5 + 0.6, spans
    # The caller's question then got its own answer.
    finals = [e for e in rec.of(TranscriptEvent) if isinstance(e, TranscriptEvent) and e.final]
    assert finals and phrase_error(finals[-1].text, "a question about parking") <= 0.25


async def test_false_interruption_resumes_reply(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    rec = Recorder()
    config = with_greeting(agent_config, GREETING)
    caller = compose(2.5, "Hmm.", 4.0)
    async with VoiceSession(config, models, sinks=[rec]) as session:
        audio = await run_call(session, caller, fast=True)
        history = session.history.messages()
    phases = [e.phase for e in rec.of(InterruptionEvent) if isinstance(e, InterruptionEvent)]
    assert "confirmed" not in phases
    replies = [e for e in rec.of(ReplyEvent) if isinstance(e, ReplyEvent)]
    assert len(replies) == 1 and not replies[0].interrupted
    assert history[-1].content == GREETING
    # the murmur (~0.4 s) paused the agent at its VAD onset (interruption.min_speech_ms 0),
    # and since it held no words the reply resumed where it paused
    assert phases == ["paused", "resumed"]
    # the whole greeting was played: as much loud audio as the greeting itself has
    expected = speech_seconds(speak(GREETING))
    assert speech_seconds(audio) == pytest.approx(expected, rel=0.1)


async def test_text_input_interrupts_and_replies(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    rec = Recorder()
    config = with_greeting(agent_config, GREETING)
    async with VoiceSession(config, models, sinks=[rec]) as session:
        for _ in range(50):  # 1 s of the greeting
            session.push_audio(AudioFrame.silence(16000))
            await session.wait_settled()
            session.playout.pull()
        await session.send_text("What time do you open on Saturday?")
        await run_call(session, np.zeros(16000, np.int16), fast=True)
        history = session.history.messages()
    assert [m.role for m in history] == ["assistant", "user", "assistant"]
    assert history[0].interrupted and history[1].content.startswith("What time")


async def test_close_mid_reply_leaves_no_task(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    rec = Recorder()
    config = with_greeting(agent_config, GREETING)
    before = {t for t in asyncio.all_tasks() if not t.done()}
    session = VoiceSession(config, models, sinks=[rec])
    await session.start()
    for _ in range(25):
        session.push_audio(AudioFrame.silence(16000))
        await session.wait_settled()
        session.playout.pull()
    assert session.state is SessionState.SPEAKING
    await session.close()
    assert session.closed
    assert session.active_tasks == 0
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    assert not leftover, leftover
    reply = next(e for e in rec.of(ReplyEvent) if isinstance(e, ReplyEvent))
    assert reply.interrupted and reply.heard_text
    # the shared models are free again: a new session still works
    async with VoiceSession(agent_config, models) as again:
        await again.send_text("Say hello.")
        await run_call(again, np.zeros(8000, np.int16), fast=True)
        assert again.history.messages()[-1].role == "assistant"


async def test_wrong_audio_format_is_rejected(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    async with VoiceSession(agent_config, models) as session:
        with pytest.raises(AudioFormatError, match="16000 Hz mono"):
            session.push_audio(AudioFrame(np.zeros(160, np.int16), 8000))
        with pytest.raises(AudioFormatError, match="16000 Hz mono"):
            session.push_audio(AudioFrame(np.zeros(640, np.int16), 16000, channels=2))
        session.push_audio(AudioFrame.silence(16000))
