"""The call bridge on an in-memory transport and fake providers: fast and deterministic.

Defect 7 ("a failed task leaves a deaf call"): a call whose inbound audio
iterator raises must end at once (not at the idle timeout, which these tests
set to an hour), tell the caller with an error event, leave the manager and
leave no task behind. The tests wait for events, never for durations; the
``HANG_GUARD_S`` timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from agent.config import AgentConfig
from agent.events import SessionState
from media.frames import PIPELINE_RATE, AudioFrame
from media.playout import PlayoutBuffer
from media.transport import (
    ControlInbox,
    ControlMessage,
    HangUp,
    InvalidControl,
    TextInput,
    Transport,
    TransportClosedError,
    parse_control,
)
from media.webrtc import from_av
from signaling.calls import Call, CallManager
from store.settings import StoreSettings
from store.store import Store
from tests.fakes import ScriptedLLM, fake_models, tone

HANG_GUARD_S = 30.0
"""Only turns a hang into a failure; no assert depends on how long anything took."""

Inbound = AudioFrame | Exception | None
"""What a test feeds the transport's inbound audio: a frame, an error to raise, or the end."""


class MemoryTransport:
    """A ``Transport`` whose caller is the test."""

    kind = "memory"

    def __init__(self, *, send_error: Exception | None = None) -> None:
        self.audio: asyncio.Queue[Inbound] = asyncio.Queue()
        self.inbox = ControlInbox()
        self.events: list[dict[str, Any]] = []
        self.played: list[AudioFrame] = []
        self.closed_with: list[str] = []
        self._send_error = send_error
        self._changed = asyncio.Event()

    async def inbound(self) -> AsyncIterator[AudioFrame]:
        while True:
            item = await self.audio.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def control(self) -> AsyncIterator[ControlMessage]:
        async for message in self.inbox:
            yield message

    async def play(self, playout: PlayoutBuffer) -> None:
        async for frame, speech in playout.frames():
            if speech:
                self.played.append(frame)

    async def send_event(self, event: Mapping[str, Any]) -> None:
        if self._send_error is not None:
            raise self._send_error
        self.events.append(dict(event))
        self._changed.set()

    async def close(self, reason: str) -> None:
        self.closed_with.append(reason)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(HANG_GUARD_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def _config() -> AgentConfig:
    base = AgentConfig.load()
    return base.model_copy(update={"greeting": None})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(
        StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)
    )
    yield opened
    await opened.close()


@pytest.fixture
def manager(store: Store) -> CallManager:
    llm = ScriptedLLM(["Hello there, how can I help?"])
    return CallManager(
        fake_models(llm=llm), _config(), max_calls=2, idle_timeout_s=3600.0, store=store
    )


def _running() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def _start(manager: CallManager, transport: Transport) -> Call:
    call = await manager.open(transport.kind, room_id="room_test", output_rate=PIPELINE_RATE)
    manager.start(call, transport)
    return call


async def _ended(call: Call) -> None:
    async with asyncio.timeout(HANG_GUARD_S):
        await call.wait_ended()


async def _leftovers(before: set[asyncio.Task[Any]], call: Call, store: Store) -> list[str]:
    """Tasks started since ``before`` that still run (any owner), and session tasks.

    The store's writer is let go idle first: its in-flight database work (the
    call's session row) belongs to the store, not to the call.
    """
    assert await store.writer.flush()
    stray = [t.get_name() for t in _running() - before - {asyncio.current_task()}]
    return stray + ["session task"] * call.session.active_tasks


def _stereo_48k(seconds: float) -> AudioFrame:
    mono = tone(seconds, rate=48_000)
    return AudioFrame(np.repeat(mono, 2), 48_000, channels=2)


# ------------------------------------------------------------------ defect 7


async def test_failed_inbound_task_ends_the_call_with_an_error_event(
    store: Store, manager: CallManager, caplog: pytest.LogCaptureFixture
) -> None:
    before = _running()
    transport = MemoryTransport()
    call = await _start(manager, transport)
    transport.audio.put_nowait(_stereo_48k(0.02))
    transport.audio.put_nowait(RuntimeError("decoder exploded on secret-payload"))
    with caplog.at_level(logging.WARNING, logger="signaling.bridge"):
        await _ended(call)  # well before the hour-long idle timeout

    assert call.end_reason == "audio-in failed (RuntimeError)"
    errors = transport.of_type("error")
    assert [(e["stage"], e["retryable"]) for e in errors] == [("call", False)]
    assert "audio-in failed" in errors[0]["message"]
    assert transport.closed_with == [call.end_reason]
    assert manager.get(call.id) is None and manager.active == 0
    assert call.session.state is SessionState.CLOSED
    # the reason is logged with the exception class, never its message
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError" in logged and "secret-payload" not in logged
    assert await _leftovers(before, call, store) == []


async def test_failed_send_ends_the_call(store: Store, manager: CallManager) -> None:
    before = _running()
    transport = MemoryTransport(send_error=ValueError("broken pipe"))
    call = await _start(manager, transport)
    transport.inbox.put(TextInput("Hi!"))  # the session's events must go out now
    await _ended(call)
    assert call.end_reason == "events failed (ValueError)"
    assert manager.active == 0
    assert await _leftovers(before, call, store) == []


async def test_clean_transport_close_ends_the_call(store: Store, manager: CallManager) -> None:
    before = _running()
    transport = MemoryTransport()
    call = await _start(manager, transport)
    transport.audio.put_nowait(_stereo_48k(0.1))
    transport.audio.put_nowait(None)  # the caller is gone
    await _ended(call)
    assert call.end_reason == "memory closed"
    assert transport.of_type("error") == []
    assert transport.closed_with == ["memory closed"]
    assert manager.get(call.id) is None
    assert await _leftovers(before, call, store) == []


async def test_a_caller_gone_while_sending_is_a_clean_end(manager: CallManager) -> None:
    transport = MemoryTransport(send_error=TransportClosedError("gone"))
    call = await _start(manager, transport)
    transport.inbox.put(TextInput("Hi!"))
    await _ended(call)
    assert call.end_reason == "memory closed"


async def test_the_session_closing_on_its_own_ends_the_call(manager: CallManager) -> None:
    transport = MemoryTransport()
    call = await _start(manager, transport)
    await call.session.close()  # as the session does on a fatal task failure
    await _ended(call)
    assert call.end_reason == "session closed"
    assert transport.of_type("state")[-1]["state"] == "closed"  # the caller saw it close
    assert manager.active == 0


@pytest.mark.parametrize("runner_started", [True, False])
async def test_end_from_outside_cancels_every_task(
    store: Store, manager: CallManager, runner_started: bool
) -> None:
    before = _running()
    transport = MemoryTransport()
    call = await _start(manager, transport)
    if runner_started:
        await asyncio.sleep(0)  # one loop step: the runner starts its tasks
    await asyncio.gather(manager.end(call, "room deleted"), manager.end(call, "server shutdown"))
    assert call.ended and call.end_reason == "room deleted"  # the first reason is kept
    assert transport.closed_with == ["room deleted"]
    assert await _leftovers(before, call, store) == []


# --------------------------------------------------------------------- control


async def test_control_messages_text_errors_and_hangup(manager: CallManager) -> None:
    transport = MemoryTransport()
    call = await _start(manager, transport)
    transport.inbox.put(TextInput("Hello?"))
    await transport.wait_for(lambda: bool(transport.of_type("reply")))
    finals = [e["text"] for e in transport.of_type("transcript") if e["final"]]
    assert finals == ["Hello?"]
    assert transport.of_type("reply")[0]["text"] == "Hello there, how can I help?"

    transport.inbox.put(parse_control("{broken"))
    await transport.wait_for(lambda: bool(transport.of_type("error")))
    error = transport.of_type("error")[0]
    assert (error["stage"], error["retryable"]) == ("input", False)
    assert "JSON" in error["message"]

    transport.inbox.put(HangUp())
    await _ended(call)
    assert call.end_reason == "hung up"
    assert transport.closed_with == ["hung up"]


async def test_inbound_audio_is_normalised_once_to_16k_mono(
    manager: CallManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = MemoryTransport()
    call = await _start(manager, transport)
    pushed: list[AudioFrame] = []
    push = call.session.push_audio

    def spy(frame: AudioFrame) -> None:
        pushed.append(frame)
        push(frame)

    monkeypatch.setattr(call.session, "push_audio", spy)
    for _ in range(25):  # 0.5 s of 20 ms Opus-like frames
        transport.audio.put_nowait(_stereo_48k(0.02))
    transport.audio.put_nowait(None)
    await _ended(call)
    assert {(f.sample_rate, f.channels) for f in pushed} == {(PIPELINE_RATE, 1)}
    total = sum(f.samples.size for f in pushed)
    assert 0.4 * PIPELINE_RATE < total <= 0.5 * PIPELINE_RATE  # less the resampler's delay


# ----------------------------------------------------------- transport pieces


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type": "text", "text": "hi"}', TextInput("hi")),
        ('{"type": "hangup"}', HangUp()),
        ("not json", InvalidControl("control message is not valid JSON")),
        (b"\x00\x01", InvalidControl("control messages must be JSON text, not binary")),
        ('{"type": "text"}', None),
        ('["text"]', None),
        ("x" * (16 * 1024 + 1), None),
    ],
)
def test_parse_control(raw: str | bytes, expected: ControlMessage | None) -> None:
    parsed = parse_control(raw)
    if expected is None:
        assert isinstance(parsed, InvalidControl)
    else:
        assert parsed == expected


async def test_control_inbox_drops_oldest_input_but_never_a_hangup() -> None:
    inbox = ControlInbox(maxsize=2)
    inbox.put(HangUp())
    inbox.put(TextInput("a"))
    inbox.put(TextInput("b"))  # full: "a" goes, the hang-up stays
    inbox.close()
    inbox.put(TextInput("after close"))
    assert [m async for m in inbox] == [HangUp(), TextInput("b")]
    assert inbox.dropped == 1


def test_from_av_keeps_the_decoder_rate_and_channels() -> None:
    left = np.arange(960, dtype=np.int16)
    right = -left
    packed = np.stack([left, right], axis=1).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(packed, format="s16", layout="stereo")
    frame.sample_rate = 48_000
    out = from_av(frame)
    assert (out.sample_rate, out.channels, out.samples_per_channel) == (48_000, 2, 960)
    assert np.array_equal(out.samples[:4], [0, 0, 1, -1])
    planar = av.AudioFrame.from_ndarray(np.stack([left, right]), format="s16p", layout="stereo")
    planar.sample_rate = 48_000
    assert np.array_equal(from_av(planar).samples, out.samples)
