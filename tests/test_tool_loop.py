"""The reply loop with tools, through a real VoiceSession speaking with the real Piper voice.

A scripted LLM (``tests.fakes.ScriptedLLM``: our own protocol, played back)
asks for tool calls; the tools are real async handlers; the caller types
(a typed turn supersedes the active reply exactly like a confirmed barge-in:
``VoiceSession._interrupt_reply``). Audio is pulled from the playout buffer
faster than real time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from sqlalchemy import select

from agent.config import AgentConfig
from agent.events import (
    AgentEvent,
    ReplyEvent,
    SessionState,
    StateEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from agent.llm import ChatMessage, ToolCallDelta, ToolSpec
from agent.providers.piper import PiperTTS
from agent.runtime import AgentModels
from agent.session import VoiceSession
from agent.tools import Tool, ToolContext, ToolError, ToolRegistry, ToolResult
from media.frames import rms_dbfs
from signaling.recorder import SessionRecorder
from store.models import InteractionLog
from store.store import Store
from tests.fakes import EnergyVAD, FakeSTT, ScriptedLLM
from tests.textnorm import normalize

PLAY_SPEC = ToolSpec(
    "play_track",
    "Play a track found by a search query.",
    {
        "type": "object",
        "properties": {"query": {"type": "string", "minLength": 1}},
        "required": ["query"],
        "additionalProperties": False,
    },
)


E = TypeVar("E", bound=AgentEvent)


class Events:
    """Collects a session's events."""

    def __init__(self) -> None:
        self.all: list[AgentEvent] = []

    def __call__(self, event: AgentEvent) -> None:
        self.all.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.all if isinstance(e, kind)]


class Player:
    """A play tool that records its calls; ``delay`` seconds of work, or a gate."""

    def __init__(self, delay: float = 0.0, *, gate: asyncio.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate
        self.calls: list[dict[str, Any]] = []
        self.started = asyncio.Event()
        self.finished = 0
        self.cancelled = 0

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        self.calls.append(arguments)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        title = arguments["query"].title()
        return ToolResult(f"Now playing {title}.", "play", {"track": title})


def call(name: str, arguments: str, index: int = 0, call_id: str | None = None) -> ToolCallDelta:
    return ToolCallDelta(index, call_id or f"c{index}", name, arguments)


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperTTS]:
    voice = PiperTTS()
    yield voice
    voice.close()


def tool_config(agent_config: AgentConfig, **tools: Any) -> AgentConfig:
    return agent_config.model_copy(
        update={"greeting": None, "tools": agent_config.tools.model_copy(update=tools)}
    )


def session_of(
    config: AgentConfig,
    llm: ScriptedLLM,
    piper: PiperTTS,
    registry: ToolRegistry,
    *sinks: Any,
) -> VoiceSession:
    models = AgentModels(vad=EnergyVAD(), stt=FakeSTT([""]), llm=llm, tts=piper)
    return VoiceSession(config, models, sinks=list(sinks), tools=registry)


async def drain(session: VoiceSession, timeout_s: float = 30.0) -> np.ndarray:
    """Pull the agent's audio until its reply is over (no reply, LISTENING)."""
    out: list[np.ndarray] = []
    deadline = time.monotonic() + timeout_s
    await asyncio.sleep(0)
    while session.reply is not None or session.state is not SessionState.LISTENING:
        assert time.monotonic() < deadline, "the reply never ended"
        pcm, _ = session.playout.pull()
        out.append(pcm)
        await asyncio.sleep(0.001)
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def loud(audio: np.ndarray) -> float:
    """Seconds of audio above -45 dBFS (20 ms frames at the playout rate)."""
    frame = 320
    return sum(
        0.02 for i in range(0, audio.size - frame, frame) if rms_dbfs(audio[i : i + frame]) > -45
    )


def tool_messages(messages: tuple[ChatMessage, ...]) -> list[ChatMessage]:
    return [m for m in messages if m.role == "tool"]


async def test_tool_call_result_then_spoken_reply(
    agent_config: AgentConfig, piper: PiperTTS
) -> None:
    player = Player()
    registry = ToolRegistry([Tool(PLAY_SPEC, player)])
    llm = ScriptedLLM(
        [
            ["Sure.", call("play_track", '{"query": "shape of you"}')],
            "Playing Shape of You by Ed Sheeran.",
        ]
    )
    events = Events()
    config = tool_config(agent_config)
    async with session_of(config, llm, piper, registry, events) as session:
        await session.send_text("play shape of you by ed sheeran")
        audio = await drain(session)
        history = session.history.messages()
    assert player.calls == [{"query": "shape of you"}]
    # the model was offered the tool, then read its result
    assert [s.name for s in llm.requests[0].tools] == ["play_track"]
    results = tool_messages(llm.requests[1].messages)
    assert [m.content for m in results] == ["Now playing Shape Of You."]
    (reply,) = events.of(ReplyEvent)
    assert "shape of you by ed sheeran" in normalize(reply.text)
    assert normalize(reply.text).startswith("sure")
    assert not reply.interrupted
    assert loud(audio) > 1.0  # both steps were spoken
    (called,) = events.of(ToolCallEvent)
    (result,) = events.of(ToolResultEvent)
    assert (called.name, json.loads(called.arguments), called.step) == (
        "play_track",
        {"query": "shape of you"},
        0,
    )
    assert result.ok and result.action == "play" and result.data == {"track": "Shape Of You"}
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1].tool_calls[0].name == "play_track" and history[1].content == "Sure."
    assert history[3].content == "Playing Shape of You by Ed Sheeran."
    states = [e.state for e in events.of(StateEvent)]
    assert states == [
        SessionState.THINKING,
        SessionState.SPEAKING,
        SessionState.LISTENING,
        SessionState.CLOSED,
    ]


async def test_independent_calls_run_in_parallel(
    agent_config: AgentConfig, piper: PiperTTS
) -> None:
    slow_a, slow_b = Player(0.4), Player(0.4)
    spec_b = ToolSpec("queue_track", "Queue a track.", PLAY_SPEC.parameters)
    registry = ToolRegistry([Tool(PLAY_SPEC, slow_a), Tool(spec_b, slow_b)])
    llm = ScriptedLLM(
        [
            [
                call("play_track", '{"query": "a"}', 0, "x1"),
                call("queue_track", '{"query": "b"}', 1, "x2"),
            ],
            "Done.",
        ]
    )
    events = Events()
    async with session_of(tool_config(agent_config), llm, piper, registry, events) as session:
        await session.send_text("play a then b")
        await drain(session)
    results = events.of(ToolResultEvent)
    assert sorted(r.name for r in results) == ["play_track", "queue_track"]
    # each took 0.4 s; together well under the 0.8 s of running one after the other
    calls_at = [e.at for e in events.of(ToolCallEvent)]
    assert max(r.at for r in results) - min(calls_at) < 0.7
    assert [m.tool_call_id for m in tool_messages(llm.requests[1].messages)] == ["x1", "x2"]


async def test_a_slow_tool_times_out_and_the_model_hears_it(
    agent_config: AgentConfig, piper: PiperTTS
) -> None:
    stuck = Player(30.0)
    registry = ToolRegistry([Tool(PLAY_SPEC, stuck, timeout_s=0.2)])
    llm = ScriptedLLM(
        [[call("play_track", '{"query": "x"}')], "Sorry, the player is not answering."]
    )
    events = Events()
    config = tool_config(agent_config, filler_after_ms=5000)
    async with session_of(config, llm, piper, registry, events) as session:
        await session.send_text("play x")
        await drain(session)
    (result,) = events.of(ToolResultEvent)
    assert not result.ok and result.code == "timeout" and stuck.cancelled == 1
    assert 150 <= result.duration_ms < 1500
    (told,) = tool_messages(llm.requests[1].messages)
    assert "timeout" in told.content
    (reply,) = events.of(ReplyEvent)
    assert "not answering" in reply.text


async def test_garbage_arguments_are_retried_then_clarified(
    agent_config: AgentConfig, piper: PiperTTS
) -> None:
    player = Player()
    registry = ToolRegistry([Tool(PLAY_SPEC, player)])
    llm = ScriptedLLM(
        [
            [call("play_track", "{oops")],  # not JSON
            [call("play_track", '{"query": 12}')],  # wrong type
            [call("shuffle_everything", "{}")],  # unknown tool, past the rounds
        ]
    )
    events = Events()
    config = tool_config(agent_config, max_steps=2)
    async with session_of(config, llm, piper, registry, events) as session:
        await session.send_text("play something")
        audio = await drain(session)
        history = session.history.messages()
    assert player.calls == []  # nothing ran on bad arguments
    codes = [r.code for r in events.of(ToolResultEvent)]
    assert codes == ["bad_arguments", "bad_arguments"]
    second_try = tool_messages(llm.requests[1].messages)[-1].content
    assert "must be a JSON object" in second_try
    third = tool_messages(llm.requests[2].messages)[-1].content
    assert "query: expected a string, got 12" in third
    assert llm.requests[2].tools == ()  # the last request offers no tools
    (reply,) = events.of(ReplyEvent)
    assert reply.text == config.tools.clarification
    assert loud(audio) > 1.0  # the clarification was spoken
    assert history[-1].role == "assistant" and history[-1].content == reply.text


async def test_barge_in_cancels_a_cancellable_tool(
    agent_config: AgentConfig, piper: PiperTTS
) -> None:
    player = Player(gate=asyncio.Event())
    registry = ToolRegistry([Tool(PLAY_SPEC, player, cancellable=True)])
    llm = ScriptedLLM([[call("play_track", '{"query": "x"}')], "Okay, never mind."])
    events = Events()
    config = tool_config(agent_config, filler_after_ms=5000)
    async with session_of(config, llm, piper, registry, events) as session:
        await session.send_text("play x")
        await player.started.wait()
        await session.send_text("no wait, stop")
        await drain(session)
        history = session.history.messages()
    assert player.cancelled == 1 and player.finished == 0
    results = events.of(ToolResultEvent)
    assert [(r.code, r.late) for r in results] == [("cancelled", True)]
    # the cancelled call never reached the history; the second turn was answered
    assert all(not m.tool_calls for m in history) and all(m.role != "tool" for m in history)
    assert history[-1].content == "Okay, never mind."


async def test_barge_in_lets_a_non_cancellable_action_finish_and_commits_it(
    agent_config: AgentConfig, piper: PiperTTS
) -> None:
    player = Player(0.5)
    registry = ToolRegistry([Tool(PLAY_SPEC, player, cancellable=False)])
    llm = ScriptedLLM([[call("play_track", '{"query": "hello"}')], "It is playing; anything else?"])
    events = Events()
    config = tool_config(agent_config, filler_after_ms=5000)
    async with session_of(config, llm, piper, registry, events) as session:
        await session.send_text("play hello")
        await player.started.wait()
        await session.send_text("actually stop")
        await drain(session)
        history = session.history.messages()
    assert player.finished == 1 and player.cancelled == 0
    (result,) = events.of(ToolResultEvent)
    assert result.ok and result.late and result.action == "play"
    # the action's result is in the history, and the next reply was asked with it
    roles = [m.role for m in history]
    assert "tool" in roles
    assert [m.content for m in tool_messages(llm.requests[1].messages)] == ["Now playing Hello."]
    assert history[-1].content == "It is playing; anything else?"


async def test_a_slow_tool_gets_a_spoken_filler_kept_out_of_the_history(
    agent_config: AgentConfig, piper: PiperTTS
) -> None:
    player = Player(1.2)
    registry = ToolRegistry([Tool(PLAY_SPEC, player, filler="Let me find that.")])
    llm = ScriptedLLM([[call("play_track", '{"query": "x"}')], "Here it is."])
    events = Events()
    config = tool_config(agent_config, filler_after_ms=200)
    async with session_of(config, llm, piper, registry, events) as session:
        await session.send_text("play x")
        audio = await drain(session)
        history = session.history.messages()
    (reply,) = events.of(ReplyEvent)
    assert normalize(reply.text) == "let me find that here it is"
    assert loud(audio) > 1.0
    assert [m.content for m in history if m.role == "assistant"] == ["", "Here it is."]


async def test_a_fast_tool_gets_no_filler(agent_config: AgentConfig, piper: PiperTTS) -> None:
    registry = ToolRegistry([Tool(PLAY_SPEC, Player(0.0))])
    llm = ScriptedLLM([[call("play_track", '{"query": "x"}')], "Here it is."])
    events = Events()
    async with session_of(tool_config(agent_config), llm, piper, registry, events) as session:
        await session.send_text("play x")
        await drain(session)
    (reply,) = events.of(ReplyEvent)
    assert reply.text == "Here it is."


async def test_tool_errors_reach_the_model_and_actions_reach_the_interaction_log(
    agent_config: AgentConfig, piper: PiperTTS, store: Store
) -> None:
    async def like(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        raise ToolError("like_track", "nothing is playing", code="nothing_playing")

    like_spec = ToolSpec("like_track", "Like the current track.")
    registry = ToolRegistry([Tool(PLAY_SPEC, Player()), Tool(like_spec, like)])
    llm = ScriptedLLM(
        [
            [call("play_track", '{"query": "abba"}', 0, "p"), call("like_track", "{}", 1, "l")],
            "Playing ABBA, but I could not like it.",
        ]
    )
    await store.sessions.create("ses_tools", "webrtc")
    recorder = SessionRecorder(store, "ses_tools", "webrtc")
    events = Events()
    models = AgentModels(vad=EnergyVAD(), stt=FakeSTT([""]), llm=llm, tts=piper)
    config = tool_config(agent_config)
    async with VoiceSession(
        config, models, sinks=[recorder, events], session_id="ses_tools", tools=registry
    ) as session:
        await session.send_text("play abba and like it")
        await drain(session)
    told = {m.tool_call_id: m.content for m in tool_messages(llm.requests[1].messages)}
    assert told["l"] == "error (nothing_playing): nothing is playing"
    assert await store.writer.flush()
    async with store.db() as db:
        rows = list(await db.scalars(select(InteractionLog)))
    (row,) = rows
    assert (row.user_input, row.final_action) == ("play abba and like it", "play")
    raw = json.loads(row.raw_llm_output)
    assert raw["text"] == "Playing ABBA, but I could not like it."
    assert [(c["name"], c["ok"], c["code"]) for c in raw["tool_calls"]] == [
        ("play_track", True, None),
        ("like_track", False, "nothing_playing"),
    ]


@pytest.fixture
async def no_tools_session(
    agent_config: AgentConfig, piper: PiperTTS
) -> AsyncIterator[tuple[VoiceSession, ScriptedLLM]]:
    llm = ScriptedLLM(["Hello there."])
    models = AgentModels(vad=EnergyVAD(), stt=FakeSTT([""]), llm=llm, tts=piper)
    async with VoiceSession(tool_config(agent_config), models) as session:
        yield session, llm


async def test_a_session_without_tools_offers_none(
    no_tools_session: tuple[VoiceSession, ScriptedLLM],
) -> None:
    session, llm = no_tools_session
    await session.send_text("hi")
    await drain(session)
    assert llm.requests[0].tools == ()
    assert [m.role for m in session.history.messages()] == ["user", "assistant"]


@pytest.mark.parametrize("said_first", ["", "Sure."])
async def test_a_late_round_goes_before_the_question_that_followed_it(
    agent_config: AgentConfig, piper: PiperTTS, said_first: str
) -> None:
    """The caller asks something new while an action that may not be cancelled runs:
    the action's round enters the history where it happened, so the next request
    ends on the caller's new words, not on the late tool result."""
    gate = asyncio.Event()
    player = Player(gate=gate)
    registry = ToolRegistry([Tool(PLAY_SPEC, player, cancellable=False)])
    first: list[Any] = [said_first] if said_first else []
    llm = ScriptedLLM([[*first, call("play_track", '{"query": "hello"}')], "It is five."])
    config = tool_config(agent_config, filler_after_ms=5000)
    async with session_of(config, llm, piper, registry) as session:
        await session.send_text("play hello")
        await player.started.wait()
        if said_first:  # the caller hears the words before the call, then cuts in
            deadline = time.monotonic() + 10
            while not session.playout.segments(session.reply.id if session.reply else ""):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            while session.reply is not None and not session.reply.heard_text:
                assert time.monotonic() < deadline
                session.playout.pull()
                await asyncio.sleep(0.001)
        await session.send_text("what time is it")
        await asyncio.sleep(0.05)
        gate.set()  # the action ends after the new question entered the history
        await drain(session)
        history = session.history.messages()
    assert player.finished == 1
    asked = llm.requests[1].messages
    assert asked[-1].role == "user" and normalize(asked[-1].content) == "what time is it"
    roles = [m.role for m in asked[1:]]  # after the system prompt
    assert roles[-3:] == ["assistant", "tool", "user"]
    assert [m.content for m in tool_messages(asked)] == ["Now playing Hello."]
    assert normalize(asked[1].content) == "play hello"
    if said_first:
        assert [m.role for m in history[:2]] == ["user", "assistant"]
        assert normalize(history[1].content).startswith("sure")
    assert history[-1].content == "It is five."
