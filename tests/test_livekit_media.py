"""The LiveKit transport without a LiveKit server.

livekit 1.2.1 runs its media engine without a room: an ``rtc.AudioSource``
behind a ``LocalAudioTrack`` can be read back with ``AudioStream.from_track``
(real WebRTC audio processing, resampling and 10 ms pulls; no network). So
the audio half is tested end to end on that loopback: the caller's audio in
at 16 kHz mono, the agent's audio out through the project's pacer, and
barge-in dropping what the source had queued. The room half (attributes,
text streams) needs a room: here it is livekit-agents' own mock room
(``livekit.agents.ipc.mock_room``, what its console and fake jobs use), whose
calls are recorded; ``tests/test_livekit_room.py`` runs it on a real server
where one is configured.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.ipc.mock_room import create_mock_room

from agent.events import (
    InterruptionEvent,
    ReplyDeltaEvent,
    ReplyEvent,
    SessionState,
    StateEvent,
    TranscriptEvent,
)
from media.frames import FRAME_MS, PIPELINE_RATE
from media.livekit import LiveKitAudio, LiveKitTransport, caller_stream
from media.livekit_conventions import (
    AGENT_INTERIM_S,
    ATTRIBUTE_AGENT_STATE,
    ATTRIBUTE_FINAL,
    ATTRIBUTE_SEGMENT_ID,
    ATTRIBUTE_TRACK_ID,
    TOPIC_EVENTS,
    TOPIC_TRANSCRIPTION,
    ClearAudio,
    LiveKitConventions,
    Publish,
    SetState,
)
from media.playout import PlayoutBuffer

AGENT_RATE = 48_000


def tone(seconds: float, rate: int, hz: float = 440.0, level: float = 8000.0) -> np.ndarray:
    n = int(seconds * rate)
    return (level * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.int16)


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0


class Loopback:
    """A source and the stream that reads it back through a local track (no room)."""

    def __init__(self, rate: int, queue_ms: int = 1000) -> None:
        self.source = rtc.AudioSource(rate, 1, queue_size_ms=queue_ms)
        self.track = rtc.LocalAudioTrack.create_audio_track("loopback", self.source)

    def stream(self) -> rtc.AudioStream:
        return caller_stream(self.track)


async def collect(frames: AsyncIterator[Any], seconds: float) -> list[Any]:
    got: list[Any] = []

    async def read() -> None:
        async for frame in frames:
            got.append((time.monotonic(), frame))

    task = asyncio.create_task(read())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return got


@pytest.fixture
def mock_room() -> Iterator[rtc.Room]:
    room = create_mock_room()  # cached by livekit-agents: reset what earlier tests recorded
    room.reset_mock()
    room.isconnected.return_value = True
    yield cast(rtc.Room, room)
    room.reset_mock()


def caller_of(room: rtc.Room) -> rtc.RemoteParticipant:
    return next(iter(room.remote_participants.values()))


async def test_caller_audio_arrives_at_16k_mono_in_20ms_frames() -> None:
    caller = Loopback(AGENT_RATE)  # a browser sends 48 kHz
    agent = Loopback(AGENT_RATE)
    audio = LiveKitAudio(agent.source, caller.stream())
    reader = asyncio.create_task(collect(audio.frames(), 1.2))
    speech = tone(1.0, AGENT_RATE)
    step = AGENT_RATE * FRAME_MS // 1000
    for i in range(0, speech.size, step):
        chunk = speech[i : i + step]
        await caller.source.capture_frame(
            rtc.AudioFrame(chunk.tobytes(), AGENT_RATE, 1, chunk.size)
        )
    got = await reader
    await audio.aclose()
    frames = [f for _, f in got]
    assert frames, "no caller audio came back through the loopback"
    assert {(f.sample_rate, f.channels) for f in frames} == {(PIPELINE_RATE, 1)}
    assert {f.samples.size for f in frames} == {PIPELINE_RATE * FRAME_MS // 1000}
    pcm = np.concatenate([f.samples for f in frames])
    # the 440 Hz tone survives the trip (WebRTC's processing may change its level)
    loud = pcm[np.abs(pcm) > 500]
    assert loud.size > 0.5 * PIPELINE_RATE
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * PIPELINE_RATE / pcm.size
    assert abs(peak_hz - 440) < 10


async def test_agent_audio_is_paced_out_at_the_playout_rate() -> None:
    agent = Loopback(AGENT_RATE, queue_ms=200)
    listener = agent.stream()  # what the caller hears, read back at 16 kHz
    audio = LiveKitAudio(agent.source)
    playout = PlayoutBuffer(AGENT_RATE)
    segment = playout.open_segment("u1", "a tone")
    await playout.push(segment, tone(1.0, AGENT_RATE))
    playout.close_segment(segment)
    playout.finish_utterance("u1")
    player = asyncio.create_task(audio.play(playout))
    heard = await collect(aiter_frames(listener), 1.6)
    player.cancel()
    await asyncio.gather(player, return_exceptions=True)
    await listener.aclose()
    await audio.aclose()
    # one capture per 20 ms frame of speech, paced in real time (the buffer was full at once)
    assert audio.captured_frames == 50
    loud = [t for t, f in heard if rms(f) > 1000]
    assert loud, "the agent's audio never reached the track"
    assert 0.8 <= loud[-1] - loud[0] <= 1.3


async def aiter_frames(stream: rtc.AudioStream) -> AsyncIterator[np.ndarray]:
    async for event in stream:
        yield np.frombuffer(event.frame.data, dtype=np.int16).copy()


async def test_barge_in_clears_the_sources_queue(mock_room: rtc.Room) -> None:
    agent = Loopback(AGENT_RATE, queue_ms=1000)
    listener = agent.stream()
    transport = LiveKitTransport(
        mock_room, caller_of(mock_room), LiveKitAudio(agent.source), agent_track="TR_agent"
    )
    reader = asyncio.create_task(collect(aiter_frames(listener), 1.5))
    speech = tone(1.0, AGENT_RATE)
    await agent.source.capture_frame(rtc.AudioFrame(speech.tobytes(), AGENT_RATE, 1, speech.size))
    await asyncio.sleep(0.3)
    cut = time.monotonic()
    await transport.send_event(InterruptionEvent(turn_id="t1", phase="paused").to_dict())
    heard = await reader
    await listener.aclose()
    await transport.close("test over")
    assert transport.audio.cleared == 1
    before = [t for t, f in heard if t < cut and rms(f) > 1000]
    after = [t for t, f in heard if t >= cut + 0.1 and rms(f) > 1000]
    assert before, "the agent was not heard before the barge-in"
    # without the clear, ~0.7 s of queued tone would still play after the cut
    assert after == []


async def test_a_state_event_sets_the_agent_state_attribute(mock_room: rtc.Room) -> None:
    agent = Loopback(AGENT_RATE)
    transport = LiveKitTransport(mock_room, caller_of(mock_room), LiveKitAudio(agent.source))
    event = StateEvent(state=SessionState.THINKING, previous=SessionState.LISTENING).to_dict()
    await transport.send_event(event)
    await transport.close("test over")
    participant = mock_room.local_participant
    participant.set_attributes.assert_awaited_once_with(  # type: ignore[attr-defined]
        {ATTRIBUTE_AGENT_STATE: "thinking"}
    )
    sent = participant.send_text.await_args  # type: ignore[attr-defined]
    assert sent.kwargs["topic"] == TOPIC_EVENTS
    assert json.loads(sent.args[0])["state"] == "thinking"
    assert sent.kwargs["destination_identities"] == [transport.caller]


async def test_chat_and_dtmf_from_the_caller_become_control(mock_room: rtc.Room) -> None:
    agent = Loopback(AGENT_RATE)
    caller = caller_of(mock_room)
    transport = LiveKitTransport(mock_room, caller, LiveKitAudio(agent.source))
    handlers = {c.args[0]: c.args[1] for c in mock_room.on.call_args_list}  # type: ignore[attr-defined]
    handlers["sip_dtmf_received"](rtc.SipDTMF(code=5, digit="5", participant=caller))
    stranger = rtc.SipDTMF(code=1, digit="1", participant=None)
    handlers["sip_dtmf_received"](stranger)  # LiveKit SIP's own digits (no participant) count
    transport._inbox.close()
    received = [m async for m in transport.control()]
    await transport.close("test over")
    assert [getattr(m, "digit", None) for m in received] == ["5", "1"]
    mock_room.register_text_stream_handler.assert_called_once()  # type: ignore[attr-defined]
    assert mock_room.register_text_stream_handler.call_args.args[0] == "lk.chat"  # type: ignore[attr-defined]


def test_transcripts_follow_livekits_segment_conventions() -> None:
    clock = [100.0]
    conventions = LiveKitConventions(
        "caller-1", caller_track="TR_caller", agent_track="TR_agent", clock=lambda: clock[0]
    )

    def published(event: dict[str, Any]) -> list[Publish]:
        return [
            a for a in conventions.map(event) if isinstance(a, Publish) and a.topic != TOPIC_EVENTS
        ]

    partial = published(
        TranscriptEvent(turn_id="t1", text="what is", final=False, confidence=0.5).to_dict()
    )
    final = published(
        TranscriptEvent(turn_id="t1", text="what is the time", final=True, confidence=0.9).to_dict()
    )
    assert len(partial) == len(final) == 1
    assert partial[0].sender == final[0].sender == "caller-1"
    assert partial[0].attributes[ATTRIBUTE_FINAL] == "false"
    assert final[0].attributes[ATTRIBUTE_FINAL] == "true"
    assert final[0].attributes[ATTRIBUTE_TRACK_ID] == "TR_caller"
    # one segment: the final replaces the partial
    assert partial[0].attributes[ATTRIBUTE_SEGMENT_ID] == final[0].attributes[ATTRIBUTE_SEGMENT_ID]

    first = published(ReplyDeltaEvent(turn_id="t2", text="It is ").to_dict())
    too_soon = published(ReplyDeltaEvent(turn_id="t2", text="noon ").to_dict())
    clock[0] += AGENT_INTERIM_S
    later = published(ReplyDeltaEvent(turn_id="t2", text="now.").to_dict())
    done = published(
        ReplyEvent(
            turn_id="t2", text="It is noon now.", heard_text="It is noon", interrupted=True
        ).to_dict()
    )
    assert [p.text for p in first + too_soon + later] == ["It is ", "It is noon now."]
    assert done[0].text == "It is noon"  # what the caller heard, not what was written
    assert done[0].sender is None  # the agent's own words
    assert done[0].attributes[ATTRIBUTE_TRACK_ID] == "TR_agent"
    assert {p.attributes[ATTRIBUTE_SEGMENT_ID] for p in first + later + done} == {
        first[0].attributes[ATTRIBUTE_SEGMENT_ID]
    }
    assert partial[0].attributes[ATTRIBUTE_SEGMENT_ID] != first[0].attributes[ATTRIBUTE_SEGMENT_ID]


def test_states_and_barge_in_map_to_livekit_actions() -> None:
    conventions = LiveKitConventions("caller-1")
    for state, expected in (
        (SessionState.SPEAKING, [SetState("speaking")]),
        (SessionState.CLOSED, []),
    ):
        event = StateEvent(state=state, previous=SessionState.THINKING).to_dict()
        actions = conventions.map(event)
        assert isinstance(actions[0], Publish) and actions[0].topic == TOPIC_EVENTS
        assert actions[1:] == expected
    for phase, clears in (("paused", True), ("confirmed", True), ("resumed", False)):
        actions = conventions.map(InterruptionEvent(turn_id="t", phase=phase).to_dict())
        assert (ClearAudio() in actions) is clears
    assert all(
        a.topic != TOPIC_TRANSCRIPTION
        for a in conventions.map(
            TranscriptEvent(turn_id="t", text="", final=False, confidence=0).to_dict()
        )
        if isinstance(a, Publish)
    )
