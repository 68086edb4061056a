"""Preemptive replies: started on the pause's transcript, held, adopted or dropped.

Real Silero VAD and the real Piper voice on synthesized speech; the LLM is
scripted (``tests.fakes.ScriptedLLM``, with a fixed time to first token where
timing is compared) and the STT answers by the length of the audio it is
given (the pause's transcript is the words so far), so the speculative and
the final transcripts are exact. Lock-step driving (one frame in, the
pipeline settles, one frame out) keeps stream time deterministic; the
voice-to-voice comparison runs in real time, where the model's time to first
token is stream time too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import numpy as np
import pytest

from agent.cli import run_call
from agent.config import AgentConfig
from agent.events import (
    AgentEvent,
    MetricsEvent,
    ReplyDeltaEvent,
    ReplyEvent,
    SessionState,
    StateEvent,
    ToolCallEvent,
    ToolResultEvent,
    TranscriptEvent,
)
from agent.llm import (
    LLM,
    ChatMessage,
    GenerationSettings,
    LLMDelta,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from agent.pricing import PriceTable
from agent.runtime import AgentModels
from agent.session import VoiceSession
from agent.tools import Tool, ToolContext, ToolRegistry, ToolResult
from media.frames import PIPELINE_RATE, FloatPCM
from signaling.recorder import priced_usage
from signaling.usage import UsageTotals
from tests.fakes import FakeSTT, ScriptedLLM, feed
from tests.speech import compose, speak
from tests.test_session import speech_seconds, speech_span
from tests.textnorm import normalize

pytestmark = pytest.mark.slow

FIRST_PART = "What is the capital"
QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."
DROPPED = "Alpha beta gamma delta."
MID_PAUSE_S = 0.35
"""Silence put between the two halves; with the voice's own trailing and leading
silence the caller pauses ~0.5 s: past the speculative start, short of the 0.7 s
end of turn."""
FULL_AUDIO_S = 1.8
"""Utterance audio at least this long holds the whole question (the first half with
the preroll is ~1.3 s, the whole one ~2.1 s)."""


class Events:
    """A session's events with the monotonic time each arrived."""

    def __init__(self) -> None:
        self.timed: list[tuple[float, AgentEvent]] = []

    def __call__(self, event: AgentEvent) -> None:
        self.timed.append((time.monotonic(), event))

    @property
    def all(self) -> list[AgentEvent]:
        return [e for _, e in self.timed]

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.all if isinstance(e, kind)]

    def index(self, match: Callable[[AgentEvent], bool]) -> int:
        return next(i for i, e in enumerate(self.all) if match(e))


def by_length(audio: FloatPCM, partial: bool) -> str:
    """The words of the question said so far (by how much audio the STT got)."""
    return QUESTION if audio.size / PIPELINE_RATE >= FULL_AUDIO_S else FIRST_PART


def config_of(agent_config: AgentConfig, *, preemptive: bool) -> AgentConfig:
    turn = agent_config.turn.model_copy(update={"preemptive_reply": preemptive})
    stt = agent_config.stt.model_copy(update={"partials": False})
    return agent_config.model_copy(update={"greeting": None, "turn": turn, "stt": stt})


def session_of(
    config: AgentConfig,
    models: AgentModels,
    llm: LLM,
    events: Events,
    tools: ToolRegistry | None = None,
) -> VoiceSession:
    local = AgentModels(vad=models.vad, stt=FakeSTT(by_length), llm=llm, tts=models.tts)
    return VoiceSession(config, local, sinks=[events], tools=tools)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def finish(session: VoiceSession, timeout_s: float = 30.0) -> np.ndarray:
    """Go on in lock-step with silence until the agent is quiet and idle for 0.5 s."""
    out: list[np.ndarray] = []
    quiet = 0
    deadline = time.monotonic() + timeout_s
    while quiet < 25:
        assert time.monotonic() < deadline, "the agent never went quiet"
        pcm = await feed(session, np.zeros(320, np.int16))
        out.append(pcm)
        idle = session.state is SessionState.LISTENING and session.reply is None
        quiet = quiet + 1 if idle and not session.playout.buffered_ms else 0
    return np.concatenate(out)


def first_sound_s(audio: np.ndarray) -> float:
    spans = speech_span(audio)
    assert spans, "the agent said nothing"
    return spans[0][0]


def user_speech_end_s(pcm: np.ndarray) -> float:
    return speech_span(pcm)[-1][1]


async def test_a_pause_mid_sentence_drops_the_held_reply_unheard(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    events = Events()
    llm = ScriptedLLM([DROPPED, ANSWER])
    config = config_of(agent_config, preemptive=True)
    before_pause = compose(0.5, FIRST_PART, MID_PAUSE_S)
    rest = compose("of France?", 1.5)
    async with session_of(config, models, llm, events) as session:
        heard = [await feed(session, before_pause)]
        # Stream time stands still here until the held reply has audio queued: the
        # drop below happens with its audio in the buffer.
        await wait_for(lambda: session.playout.buffered_ms > 0)
        assert session.state is SessionState.LISTENING and session.reply is None
        assert not events.of(ReplyDeltaEvent) and not events.of(StateEvent)
        heard.append(await feed(session, rest))
        heard.append(await finish(session))
        history = session.history.messages()
    audio = np.concatenate(heard)
    caller = np.concatenate([before_pause, rest])
    # the held reply answered the first half and was dropped when the caller went on
    assert len(llm.requests) == 2
    assert normalize(llm.requests[0].messages[-1].content) == normalize(FIRST_PART)
    assert normalize(llm.requests[1].messages[-1].content) == normalize(QUESTION)
    # nothing of it was heard, sent or committed
    sent = " ".join(e.text for e in events.of(ReplyDeltaEvent))
    assert "alpha" not in normalize(sent)
    replies = events.of(ReplyEvent)
    assert len(replies) == 1 and normalize(replies[0].text) == normalize(ANSWER)
    assert [(m.role, normalize(m.content)) for m in history] == [
        ("user", normalize(QUESTION)),
        ("assistant", normalize(ANSWER)),
    ]
    finals = [e for e in events.of(TranscriptEvent) if e.final]
    assert len(finals) == 1
    # the agent's first sound comes after the whole question's end of turn
    end_of_turn = user_speech_end_s(caller) + config.turn.end_of_turn_silence_ms / 1000
    assert first_sound_s(audio) >= end_of_turn - 0.1
    # ... and what was heard is the answer alone, not the dropped reply too
    assert speech_seconds(audio) == pytest.approx(speech_seconds(speak(ANSWER)), rel=0.15)
    metrics = events.of(MetricsEvent)
    assert len(metrics) == 1 and metrics[0].preemptive


async def real_time_call(
    agent_config: AgentConfig, models: AgentModels, *, preemptive: bool
) -> tuple[float, Events, ScriptedLLM]:
    """One question in real time; returns the agent's first sound after the end of the
    caller's speech (stream time, s), the events and the LLM."""
    events = Events()
    llm = ScriptedLLM([ANSWER], first_token_delay=0.4)
    config = config_of(agent_config, preemptive=preemptive)
    caller = compose(0.5, QUESTION, 2.5)
    async with session_of(config, models, llm, events) as session:
        audio = await run_call(session, caller, fast=False)
    return first_sound_s(audio) - user_speech_end_s(caller), events, llm


async def test_preemptive_reply_is_held_to_the_turn_end_and_answers_sooner(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    on, events, llm = await real_time_call(agent_config, models, preemptive=True)
    off, events_off, llm_off = await real_time_call(agent_config, models, preemptive=False)
    eot_s = agent_config.turn.end_of_turn_silence_ms / 1000
    # the first sound comes after the turn ended, ...
    assert on >= eot_s - 0.1
    # ... and sooner: the model's 400 ms to first token hid behind the end-of-turn wait
    assert on < off - 0.25, (on, off)
    m = events.of(MetricsEvent)[0]
    assert m.preemptive and m.preemptive_hidden_ms is not None and m.preemptive_hidden_ms > 300
    marks = m.marks_ms
    # the LLM and the first TTS chunk started while the turn was still pending
    assert marks["llm_start"] < marks["tts_first_chunk"] < marks["turn_end"] <= marks["released"]
    assert m.voice_to_voice_ms is not None
    m_off = events_off.of(MetricsEvent)[0]
    assert not m_off.preemptive and m_off.preemptive_hidden_ms is None
    assert m_off.marks_ms["llm_start"] >= m_off.marks_ms["turn_end"]
    # one request each: the held reply was adopted, not asked again
    assert len(llm.requests) == 1 and len(llm_off.requests) == 1
    # the client saw THINKING only after the final transcript, and no reply text before it
    final = events.index(lambda e: isinstance(e, TranscriptEvent) and e.final)
    thinking = events.index(
        lambda e: isinstance(e, StateEvent) and e.state is SessionState.THINKING
    )
    first_delta = events.index(lambda e: isinstance(e, ReplyDeltaEvent))
    assert final < thinking < first_delta
    states = [e.state for e in events.of(StateEvent)]
    assert states[:3] == [SessionState.THINKING, SessionState.SPEAKING, SessionState.LISTENING]


PLAY = ToolSpec(
    "play_track",
    "Play a track found by a search query.",
    {
        "type": "object",
        "properties": {"query": {"type": "string", "minLength": 1}},
        "required": ["query"],
        "additionalProperties": False,
    },
)


class Player:
    """A play tool that records when it ran."""

    def __init__(self) -> None:
        self.ran_at: list[float] = []

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        self.ran_at.append(time.monotonic())
        return ToolResult(f"Now playing {arguments['query']}.", "play", {})


def play(query: str, index: int) -> ToolCallDelta:
    return ToolCallDelta(0, f"c{index}", "play_track", f'{{"query": "{query}"}}')


async def test_a_held_reply_runs_no_tool_before_its_turn_is_confirmed(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    events = Events()
    player = Player()
    registry = ToolRegistry([Tool(PLAY, player)])
    llm = ScriptedLLM([[play("capital", 0)], [play("france", 1)], "Here it is."])
    config = config_of(agent_config, preemptive=True)
    eot_s = config.turn.end_of_turn_silence_ms / 1000
    async with session_of(config, models, llm, events, registry) as session:
        await feed(session, compose(0.5, FIRST_PART, MID_PAUSE_S))
        # the first half's held reply asked for a tool: the call waits, unseen
        await wait_for(lambda: llm.completed == 1)
        await asyncio.sleep(0.2)
        assert not player.ran_at and not events.of(ToolCallEvent)
        await feed(session, compose("of France?", eot_s - 0.35))
        # the whole question's held reply asked for a tool too; the turn is still pending
        await wait_for(lambda: llm.completed == 2)
        await asyncio.sleep(0.2)
        assert not player.ran_at and session.state is SessionState.LISTENING
        await finish(session)
    confirmed_at = next(t for t, e in events.timed if isinstance(e, TranscriptEvent) and e.final)
    assert len(player.ran_at) == 1 and player.ran_at[0] > confirmed_at
    calls = events.of(ToolCallEvent)
    assert [c.arguments for c in calls] == ['{"query": "france"}']
    results = events.of(ToolResultEvent)
    assert len(results) == 1 and results[0].ok
    replies = events.of(ReplyEvent)
    assert len(replies) == 1 and normalize(replies[0].text) == normalize("Here it is.")


HELD_USAGE = UsageDelta("acme", "acme-large", prompt_tokens=120, completion_tokens=6)
ANSWER_USAGE = UsageDelta("acme", "acme-large", prompt_tokens=140, completion_tokens=7)
PRICES = PriceTable.parse(
    {
        "providers": {
            "acme": {"llm": {"usd_per_1m_prompt_tokens": 2.0, "usd_per_1m_completion_tokens": 10.0}}
        }
    }
)


async def test_a_dropped_reply_is_billed_with_the_turn_that_follows(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    events = Events()
    llm = ScriptedLLM([[DROPPED, HELD_USAGE], [ANSWER, ANSWER_USAGE]])
    config = config_of(agent_config, preemptive=True)
    async with session_of(config, models, llm, events) as session:
        await feed(session, compose(0.5, FIRST_PART, MID_PAUSE_S))
        # the held reply's stream ended (its usage reported) and its first words were
        # sent to synthesis before the caller goes on
        await wait_for(lambda: llm.completed == 1 and session.playout.buffered_ms > 0)
        await feed(session, compose("of France?", 1.5))
        await finish(session)
    assert len(llm.requests) == 2
    metrics = events.of(MetricsEvent)
    assert len(metrics) == 1  # the dropped reply reported no turn of its own
    usage = metrics[0].usage
    assert usage["preemptive_dropped"] == 1 and usage["dropped_unreported"] == 0
    # the turn's tokens are both requests', the dropped one's shown apart
    assert (usage["dropped_prompt_tokens"], usage["dropped_completion_tokens"]) == (120, 6)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (260, 13)
    # the dropped reply's first chunk went to synthesis: its characters count too
    dropped_chars = usage["dropped_tts_chars"]
    assert 0 < dropped_chars <= len(DROPPED)
    assert len(ANSWER) - 2 <= usage["tts_chars"] - dropped_chars <= len(ANSWER)
    # the cost estimate and the session's sums include it
    stored = priced_usage(usage, PRICES)
    assert stored is not None
    assert stored["cost_by_stage"]["llm"] == pytest.approx((260 * 2.0 + 13 * 10.0) / 1e6)
    totals = UsageTotals.of([stored]).to_dict()
    assert totals["prompt_tokens"] == 260 and totals["preemptive_dropped"] == 1
    assert (totals["dropped_prompt_tokens"], totals["dropped_tts_chars"]) == (120, dropped_chars)


class StallingLLM:
    """A ``ScriptedLLM`` whose first stream stalls after ``pieces`` deltas, as a model
    still generating would, until its consumer cancels it (before any usage report)."""

    supports_tools = True

    def __init__(self, inner: ScriptedLLM, pieces: int) -> None:
        self.inner = inner
        self.model = inner.model
        self.pieces = pieces
        self.stalled = asyncio.Event()
        self._stall_next = True

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncGenerator[LLMDelta, None]:
        stall, self._stall_next = self._stall_next, False
        sent = 0
        async with contextlib.aclosing(self.inner.stream(messages, settings, tools)) as deltas:
            async for delta in deltas:
                if stall and sent == self.pieces:
                    self.stalled.set()
                    await asyncio.Event().wait()  # until the held reply is cancelled
                sent += 1
                yield delta

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_reply_dropped_mid_stream_counts_the_pieces_it_streamed(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    events = Events()
    scripted = ScriptedLLM(["Alpha beta gamma delta epsilon zeta", [ANSWER, ANSWER_USAGE]])
    llm = StallingLLM(scripted, pieces=3)
    config = config_of(agent_config, preemptive=True)
    async with session_of(config, models, llm, events) as session:
        await feed(session, compose(0.5, FIRST_PART, MID_PAUSE_S))
        await asyncio.wait_for(llm.stalled.wait(), 10.0)
        await feed(session, compose("of France?", 1.5))
        await finish(session)
    assert scripted.cancelled == 1 and scripted.completed == 1
    usage = events.of(MetricsEvent)[0].usage
    # cut before its report: three pieces streamed count as completion tokens, the
    # prompt is unknown, and the reply is flagged as unreported
    assert usage["preemptive_dropped"] == 1 and usage["dropped_unreported"] == 1
    assert (usage["dropped_prompt_tokens"], usage["dropped_completion_tokens"]) == (0, 3)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (140, 10)
    assert usage["llm_provider"] == "acme"
