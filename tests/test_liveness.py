"""Dead calls end fast (issue 14, defect 2): no inbound audio, and a WebRTC peer that failed.

A call whose transport delivers no audio frame for ``no_audio_timeout_s`` is
ended with the reason ``no audio`` (the caller gets an ``error`` event first
when it can still be sent; ``parley_calls_ended_total`` counts it), while the
speech-idle timeout stays a separate, longer setting. A WebRTC peer whose ICE
failed, or that stays ``disconnected``, is gone at once or after a short grace.

The bridge tests run on an in-memory transport and fake providers; the wire
tests run a real server on loopback (fake providers: the models play no part
in liveness) with a real WebSocket client and a real aiortc caller. Timeouts
are short and set by the tests; the ``within`` bounds only turn a hang into a
failure, with room for a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
import websockets
from aiortc import RTCPeerConnection
from pyee.asyncio import AsyncIOEventEmitter

from agent.config import AgentConfig
from media.caller import CallerPeer
from media.frames import PIPELINE_RATE, AudioFrame
from media.playout import PlayoutBuffer
from media.transport import Hold
from media.webrtc import WebRtcTransport
from signaling.bridge import NO_AUDIO_REASON
from signaling.calls import Call, CallManager
from signaling.metrics import ServerMetrics, end_reason_label
from store.settings import StoreSettings
from store.store import Store
from tests.fakes import ScriptedLLM, fake_models
from tests.server import running_server
from tests.test_bridge import HANG_GUARD_S, MemoryTransport
from tests.webrtc_client import connect, events, speaking, wait_freed

NO_AUDIO_S = 0.3
"""The no-audio timeout of the bridge tests."""
WIRE_NO_AUDIO_S = 3.0
"""The no-audio timeout of the wire tests (ICE and DTLS must connect well within it)."""
WIRE_IDLE_S = 60.0


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
def metrics() -> ServerMetrics:
    return ServerMetrics()


@pytest.fixture
def manager(store: Store, metrics: ServerMetrics) -> CallManager:
    return CallManager(
        fake_models(llm=ScriptedLLM(["Hello there."])),
        _config(),
        max_calls=2,
        idle_timeout_s=3600.0,
        no_audio_timeout_s=NO_AUDIO_S,
        on_end=lambda call: metrics.call_ended(call.transport, call.end_reason),
        store=store,
    )


async def _start(manager: CallManager, transport: MemoryTransport) -> Call:
    call = await manager.open(transport.kind, room_id="room_test", output_rate=PIPELINE_RATE)
    manager.start(call, transport)
    return call


def _ended_count(metrics: ServerMetrics, transport: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "parley_calls_ended_total", {"transport": transport, "reason": reason}
    )
    return value or 0.0


async def _feed_silence(transport: MemoryTransport, seconds: float) -> None:
    """Deliver 20 ms silent frames in real time for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        transport.audio.put_nowait(AudioFrame(np.zeros(320, np.int16), PIPELINE_RATE))
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- the bridge


async def test_a_call_without_audio_ends_with_a_reason_an_event_and_a_count(
    manager: CallManager, metrics: ServerMetrics
) -> None:
    transport = MemoryTransport()
    started = time.monotonic()
    call = await _start(manager, transport)
    async with asyncio.timeout(HANG_GUARD_S):
        await call.wait_ended()
    assert time.monotonic() - started >= NO_AUDIO_S
    assert call.end_reason == NO_AUDIO_REASON
    errors = transport.of_type("error")
    assert [(e["stage"], e["message"]) for e in errors] == [
        ("call", f"the call ended: no audio received for {NO_AUDIO_S:g} s")
    ]
    assert transport.closed_with == [NO_AUDIO_REASON]
    assert manager.active == 0
    assert _ended_count(metrics, "memory", "no_audio") == 1


async def test_a_call_that_sends_audio_is_not_ended(manager: CallManager) -> None:
    transport = MemoryTransport()
    call = await _start(manager, transport)
    await _feed_silence(transport, 4 * NO_AUDIO_S)  # silence is audio: the caller is there
    assert not call.ended and manager.get(call.id) is call
    await manager.end(call, "hung up")
    assert call.end_reason == "hung up"


async def test_a_call_on_hold_is_not_ended_for_want_of_audio(manager: CallManager) -> None:
    transport = MemoryTransport()
    call = await _start(manager, transport)
    transport.inbox.put(Hold(on_hold=True))
    await asyncio.sleep(4 * NO_AUDIO_S)  # no audio while held (a SIP caller's inactive stream)
    assert not call.ended
    transport.inbox.put(Hold(on_hold=False))  # back, and still silent: the timer runs again
    async with asyncio.timeout(HANG_GUARD_S):
        await call.wait_ended()
    assert call.end_reason == NO_AUDIO_REASON


async def test_the_speech_idle_timeout_stays_separate(store: Store) -> None:
    manager = CallManager(
        fake_models(),
        _config(),
        max_calls=1,
        idle_timeout_s=0.3,
        no_audio_timeout_s=3600.0,
        store=store,
    )
    transport = MemoryTransport()
    call = await _start(manager, transport)
    feeding = asyncio.create_task(_feed_silence(transport, HANG_GUARD_S))
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            await call.wait_ended()
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
    assert call.end_reason == "idle timeout"
    assert transport.of_type("error")[-1]["message"] == "the call ended: no speech for 0.3 s"


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("no audio", "no_audio"),
        ("idle timeout", "idle_timeout"),
        ("ice failed", "ice_failed"),
        ("webrtc closed", "caller_left"),
        ("session closed (llm failed)", "session_closed"),
        ("audio-in failed (RuntimeError)", "task_failed"),
        ("something new and unforeseen", "other"),
        (None, "other"),
    ],
)
def test_end_reason_labels_are_bounded(reason: str | None, label: str) -> None:
    assert end_reason_label(reason) == label


# ------------------------------------------------------- WebRTC peer states


class FakePeer(AsyncIOEventEmitter):
    """The parts of ``RTCPeerConnection`` that ``WebRtcTransport`` uses, states set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.connectionState = "connecting"
        self.iceConnectionState = "checking"
        self.closed = False

    def addTrack(self, track: object) -> None:  # noqa: N802 (aiortc's name)
        pass

    def move(self, ice: str, connection: str) -> None:
        self.iceConnectionState, self.connectionState = ice, connection
        self.emit("iceconnectionstatechange")
        self.emit("connectionstatechange")

    async def close(self) -> None:
        self.closed = True
        self.move("closed", "closed")


async def _gone(transport: WebRtcTransport, playout: PlayoutBuffer, within_s: float) -> bool:
    """Whether ``play()`` (which returns once the peer is gone) returns within ``within_s``."""
    try:
        async with asyncio.timeout(within_s):
            await transport.play(playout)
    except TimeoutError:
        return False
    return True


@pytest.fixture
async def fake_peer() -> AsyncIterator[tuple[FakePeer, WebRtcTransport]]:
    peer = FakePeer()
    transport = WebRtcTransport(
        cast(RTCPeerConnection, peer), PIPELINE_RATE, disconnected_grace_s=0.2
    )
    yield peer, transport
    await transport.close("test over")


async def test_ice_failure_ends_the_peer_at_once(
    fake_peer: tuple[FakePeer, WebRtcTransport],
) -> None:
    peer, transport = fake_peer
    playout = _playout()
    peer.move("connected", "connected")
    peer.move("failed", "failed")
    assert await _gone(transport, playout, 1.0)
    assert transport.gone_reason == "ice failed" and peer.closed
    assert [f async for f in transport.inbound()] == []


async def test_a_disconnected_peer_is_gone_after_the_grace(
    fake_peer: tuple[FakePeer, WebRtcTransport],
) -> None:
    peer, transport = fake_peer
    playout = _playout()
    peer.move("connected", "connected")
    peer.move("disconnected", "disconnected")
    assert await _gone(transport, playout, HANG_GUARD_S)
    assert transport.gone_reason == "peer disconnected" and peer.closed


async def test_a_peer_that_reconnects_within_the_grace_stays(
    fake_peer: tuple[FakePeer, WebRtcTransport],
) -> None:
    peer, transport = fake_peer
    playout = _playout()
    peer.move("connected", "connected")
    peer.move("disconnected", "disconnected")
    await asyncio.sleep(0.05)
    peer.move("connected", "connected")
    assert not await _gone(transport, playout, 0.6)  # three graces later, still there
    assert transport.gone_reason is None and not peer.closed


def _playout() -> PlayoutBuffer:
    return PlayoutBuffer(PIPELINE_RATE)


# ------------------------------------------------------------------ the wire


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    models = fake_models(llm=ScriptedLLM(["Hello there."]))
    with running_server(
        models,
        max_calls=2,
        idle_timeout_s=WIRE_IDLE_S,
        no_audio_timeout_s=WIRE_NO_AUDIO_S,
    ) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        yield c


async def _room(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.post("/v1/rooms")
    assert r.status_code == 201, r.text
    room: dict[str, Any] = r.json()
    return room


async def _ended_metric(client: httpx.AsyncClient, transport: str, reason: str) -> float:
    text = (await client.get("/metrics")).text
    prefix = f'parley_calls_ended_total{{reason="{reason}",transport="{transport}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def _ws_url(base_url: str, room: dict[str, Any]) -> str:
    return base_url.replace("http", "ws") + f"/v1/ws/voice?room={room['id']}&token={room['token']}"


async def _read_until_closed(ws: Any, received: list[dict[str, Any]], within_s: float) -> None:
    """Read (keeping the JSON events) until the server closes: raises ``ConnectionClosed``."""
    async with asyncio.timeout(within_s):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                received.append(json.loads(message))


async def test_a_websocket_that_sends_nothing_is_closed_for_no_audio(
    base_url: str, client: httpx.AsyncClient
) -> None:
    before = await _ended_metric(client, "websocket", "no_audio")
    room = await _room(client)
    received: list[dict[str, Any]] = []
    started = time.monotonic()
    async with websockets.connect(_ws_url(base_url, room)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await _read_until_closed(ws, received, WIRE_NO_AUDIO_S + 20)
    took = time.monotonic() - started
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "no audio")
    assert WIRE_NO_AUDIO_S <= took < WIRE_NO_AUDIO_S + 20
    notice = [e for e in received if e.get("type") == "error"]
    assert [(e["stage"], e["message"]) for e in notice] == [
        ("call", f"the call ended: no audio received for {WIRE_NO_AUDIO_S:g} s")
    ]
    assert await wait_freed(client)
    assert await _ended_metric(client, "websocket", "no_audio") == before + 1


async def test_a_websocket_that_streams_silence_stays(
    base_url: str, client: httpx.AsyncClient
) -> None:
    room = await _room(client)
    async with websockets.connect(_ws_url(base_url, room)) as ws:
        deadline = time.monotonic() + 2 * WIRE_NO_AUDIO_S
        while time.monotonic() < deadline:
            await ws.send(np.zeros(320, "<i2").tobytes())
            await asyncio.sleep(0.02)
            with contextlib.suppress(TimeoutError):
                while True:  # drain what the server sends
                    await asyncio.wait_for(ws.recv(), 0.001)
        assert (await client.get("/health")).json()["active_calls"] == 1
        await ws.send(json.dumps({"type": "hangup"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await _read_until_closed(ws, [], HANG_GUARD_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.reason == "hung up"
    assert await wait_freed(client)


def _vanish(peer: CallerPeer) -> int:
    """Close the caller's ICE sockets without a word (no DTLS close, no SCTP abort, no
    hang-up): to the server the caller just stops existing. Returns the sockets closed."""
    ice_transports = {t.receiver.transport.transport for t in peer.pc.getTransceivers()}
    if peer.pc.sctp is not None:
        ice_transports.add(peer.pc.sctp.transport.transport)
    closed = 0
    for ice in ice_transports:
        for protocol in ice._connection._protocols:
            if protocol.transport is not None:
                protocol.transport.close()
                closed += 1
    return closed


async def test_a_webrtc_caller_that_vanishes_frees_its_slot(
    client: httpx.AsyncClient,
) -> None:
    before = await _ended_metric(client, "webrtc", "no_audio")
    peer = speaking()
    try:
        await connect(peer, client, await _room(client))
        assert await peer.wait_until(lambda: peer.connected, 20.0)
        assert (await client.get("/health")).json()["active_calls"] == 1
        assert _vanish(peer) > 0
        gone_at = time.monotonic()
        assert await wait_freed(client, WIRE_NO_AUDIO_S + 10)  # not ICE consent's ~30 s
        assert time.monotonic() - gone_at < WIRE_NO_AUDIO_S + 10
        assert await _ended_metric(client, "webrtc", "no_audio") == before + 1
    finally:
        await peer.close()


async def test_a_webrtc_caller_that_stops_sending_is_told_and_freed(
    client: httpx.AsyncClient,
) -> None:
    peer = speaking()
    try:
        await connect(peer, client, await _room(client))
        assert await peer.wait_until(lambda: peer.connected, 20.0)
        await asyncio.sleep(WIRE_NO_AUDIO_S + 0.5)  # audio flows: still up past the timeout
        assert (await client.get("/health")).json()["active_calls"] == 1
        peer.track.stop()  # the microphone stops; the connection and data channel stay up
        assert await peer.wait_until(lambda: bool(events(peer, "error")), WIRE_NO_AUDIO_S + 10)
        assert [e["message"] for e in events(peer, "error")] == [
            f"the call ended: no audio received for {WIRE_NO_AUDIO_S:g} s"
        ]
        assert await wait_freed(client)
    finally:
        await peer.close()
