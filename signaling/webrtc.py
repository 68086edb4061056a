"""WebRTC calls: answer a caller's SDP offer with an aiortc peer that runs the agent.

The agent's peer receives the caller's Opus track (decoded, resampled to
16 kHz mono and pushed into the session), sends its own audio track (paced
frames from the session's playout buffer), and talks JSON on the ``events``
data channel: session events out, ``{"type": "text", "text": ...}`` in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from agent.errors import SessionClosedError
from agent.events import SessionState, StateEvent
from media.webrtc import PlayoutTrack, pump_inbound
from signaling.calls import Call, CallManager
from signaling.settings import IceServer

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "events"
MAX_SDP_BYTES = 64 * 1024
MAX_CHANNEL_MESSAGE = 16 * 1024


class SdpError(ValueError):
    """An offer that is not a usable SDP audio offer."""


def check_offer(sdp: str, kind: str) -> None:
    """Reject what is obviously not an SDP offer with audio before aiortc sees it."""
    if kind != "offer":
        raise SdpError(f"expected an SDP offer, got type {kind!r}")
    if len(sdp) > MAX_SDP_BYTES:
        raise SdpError("SDP is too large")
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    if not any(line.startswith("m=audio") for line in lines):
        raise SdpError("SDP offer has no audio media section")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise SdpError("SDP offer has no DTLS fingerprint")


async def answer_offer(
    manager: CallManager,
    room_id: str,
    sdp: str,
    kind: str,
    ice_servers: list[IceServer],
    output_rate: int,
    *,
    session_id: str | None = None,
) -> tuple[Call, RTCSessionDescription]:
    """Create the agent's peer for an offer; returns the call and the SDP answer.

    Raises ``SdpError`` for a malformed offer and ``CallLimitError`` when full.
    """
    check_offer(sdp, kind)
    config = RTCConfiguration(
        iceServers=[RTCIceServer(s.urls, s.username, s.credential) for s in ice_servers]
    )
    pc = RTCPeerConnection(config)
    call: Call | None = None
    try:
        call = await manager.open(
            "webrtc", room_id=room_id, output_rate=output_rate, session_id=session_id
        )
        _wire(manager, call, pc)
        pc.addTrack(PlayoutTrack(call.session.playout))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, IndexError) as exc:
            raise SdpError(f"malformed SDP offer: {exc}") from exc
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        local = pc.localDescription
        return call, local
    except BaseException:
        if call is not None:
            await manager.end(call, "offer failed")
        else:
            await pc.close()
        raise


def _wire(manager: CallManager, call: Call, pc: RTCPeerConnection) -> None:
    channel_ready: asyncio.Future[RTCDataChannel] = asyncio.get_running_loop().create_future()

    async def close_pc() -> None:
        await pc.close()

    call.on_end(close_pc)
    call.spawn(_forward_events(call, channel_ready), "events")

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            call.spawn(_pump(call, track), "inbound")

    @pc.on("datachannel")
    def on_datachannel(channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_CHANNEL:
            return

        @channel.on("message")
        def on_message(message: Any) -> None:
            _on_channel_message(call, channel, message)

        if not channel_ready.done():
            channel_ready.set_result(channel)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await manager.end(call, f"peer connection {pc.connectionState}")


async def _pump(call: Call, track: MediaStreamTrack) -> None:
    def push(frame: Any) -> None:
        with contextlib.suppress(SessionClosedError):
            call.session.push_audio(frame)

    await pump_inbound(track, push)


async def _forward_events(call: Call, channel_ready: asyncio.Future[RTCDataChannel]) -> None:
    channel = await channel_ready
    if channel.readyState == "connecting":
        opened = asyncio.Event()
        channel.once("open", opened.set)
        await opened.wait()
    async for event in call.session.events():
        if channel.readyState != "open":
            return
        channel.send(json.dumps(event.to_dict()))
        if isinstance(event, StateEvent) and event.state is SessionState.CLOSED:
            return


def _on_channel_message(call: Call, channel: RTCDataChannel, message: Any) -> None:
    def reply_error(text: str) -> None:
        if channel.readyState == "open":
            channel.send(
                json.dumps({"type": "error", "stage": "input", "message": text, "retryable": False})
            )

    if not isinstance(message, str) or len(message) > MAX_CHANNEL_MESSAGE:
        reply_error("expected a JSON text message of at most 16 KiB")
        return
    try:
        data = json.loads(message)
    except json.JSONDecodeError:
        reply_error("message is not valid JSON")
        return
    if (
        not isinstance(data, dict)
        or data.get("type") != "text"
        or not isinstance(data.get("text"), str)
    ):
        reply_error('expected {"type": "text", "text": "..."}')
        return
    call.touch()
    call.spawn(call.session.send_text(data["text"]), "text-input")
