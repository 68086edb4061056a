"""``/v1/ws/voice``: a call over a plain WebSocket.

Connect with ``?room=ROOM_ID&token=JOIN_TOKEN`` (or an ``Authorization:
Bearer`` header); add ``&session=SESSION_ID&session_token=...`` to continue a
session. The first message out is ``{"type": "session", "session_id": ...,
"call_id": ...}`` (with a ``session_token`` when a new session started).

In: binary messages of 16-bit little-endian mono PCM at 16 kHz (any length),
and JSON text messages ``{"type": "text", "text": ...}`` or ``{"type": "hangup"}``.
Out: JSON session events as text messages, and the agent's voice as binary
16 kHz PCM in 20 ms frames, paced in real time and sent only while the agent
speaks (barge-in simply stops them).

Refusals close the socket after one JSON error with code 4401 (no or bad
token), 4403 (another room's token, or its API key revoked), 4404 (no such
room), 4429 (a rate limit or the API key's call quota) or 4503 (too many
calls, or the store unavailable); a frame over ``MAX_MESSAGE_BYTES`` closes
it with 1009. When the call ends the server closes with 1000 and the reason
(``hung up``, ``idle timeout``, ``no audio``...).

Audio must keep flowing, silence included: a socket that delivers no audio for
``PARLEY_NO_AUDIO_TIMEOUT_S`` (15 s) gets an ``error`` event (stage ``call``,
"the call ended: no audio received for 15 s") and is closed with 1000 and
``no audio``, so a client that connects and goes quiet cannot hold a call slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from media.frames import FRAME_MS, PIPELINE_RATE, AudioFrame
from media.playout import PlayoutBuffer
from media.transport import ControlInbox, ControlMessage, TransportClosedError, parse_control
from signaling.admission import AdmissionError, authorize, open_call, start_call
from signaling.ratelimit import RateLimitedError
from signaling.state import AppState
from signaling.tokens import bearer

router = APIRouter()

MAX_MESSAGE_BYTES = 256 * 1024
"""About 8 s of 16 kHz PCM in one message."""
_FRAME_SAMPLES = PIPELINE_RATE * FRAME_MS // 1000


class WebSocketTransport:
    """A call over a Starlette WebSocket (see ``media.transport.Transport``).

    One socket carries everything: ``inbound()`` is its reader, yielding the
    binary audio and routing text messages to the control inbox. Sends are
    serialised by a lock (events and audio come from different tasks).
    """

    kind = "websocket"

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._lock = asyncio.Lock()
        self._inbox = ControlInbox()

    async def inbound(self) -> AsyncIterator[AudioFrame]:
        """The caller's PCM in 20 ms frames (odd bytes carry over) until the socket closes."""
        carry = b""
        try:
            while True:
                try:
                    message = await self._ws.receive()
                except (WebSocketDisconnect, RuntimeError):
                    return
                if message["type"] == "websocket.disconnect":
                    return
                data: bytes | None = message.get("bytes")
                text: str | None = message.get("text")
                if data is not None:
                    if len(data) > MAX_MESSAGE_BYTES:
                        await self._close(1009, "message too big")
                        return
                    buf = carry + data
                    usable = len(buf) - len(buf) % 2
                    carry = buf[usable:]
                    pcm = np.frombuffer(buf[:usable], dtype="<i2").astype(np.int16)
                    for i in range(0, pcm.size, _FRAME_SAMPLES):
                        yield AudioFrame(pcm[i : i + _FRAME_SAMPLES], PIPELINE_RATE)
                elif text is not None:
                    self._inbox.put(parse_control(text))
        finally:
            self._inbox.close()

    async def control(self) -> AsyncIterator[ControlMessage]:
        """The text messages, parsed (they end with the socket)."""
        async for message in self._inbox:
            yield message

    async def play(self, playout: PlayoutBuffer) -> None:
        """Send the agent's paced frames while it speaks (silence is not sent)."""
        async for frame, speech in playout.frames():
            if speech:
                await self._send(frame.samples.astype("<i2").tobytes())

    async def send_event(self, event: Mapping[str, Any]) -> None:
        """Send one event as a JSON text message."""
        await self._send(json.dumps(event))

    async def close(self, reason: str) -> None:
        """Close with 1000 and the reason (idempotent)."""
        await self._close(1000, reason)

    async def _send(self, data: str | bytes) -> None:
        async with self._lock:
            if not self._open:
                raise TransportClosedError("websocket closed")
            try:
                if isinstance(data, bytes):
                    await self._ws.send_bytes(data)
                else:
                    await self._ws.send_text(data)
            except (WebSocketDisconnect, OSError) as exc:
                raise TransportClosedError("websocket closed") from exc

    async def _close(self, code: int, reason: str) -> None:
        async with self._lock:
            if self._open:
                with contextlib.suppress(Exception):
                    await self._ws.close(code=code, reason=reason[:120])

    @property
    def _open(self) -> bool:
        return (
            self._ws.client_state is WebSocketState.CONNECTED
            and self._ws.application_state is WebSocketState.CONNECTED
        )


@router.websocket("/v1/ws/voice")
async def voice_socket(ws: WebSocket) -> None:
    """A voice call over a WebSocket (see the module docstring for the protocol)."""
    st: AppState = ws.app.state.parley
    session_id = ws.query_params.get("session") or None
    try:
        grant = await authorize(
            st,
            ws.query_params.get("room", ""),
            ws.query_params.get("token") or bearer(ws.headers.get("authorization")),
            session_id=session_id,
            session_token=ws.query_params.get("session_token"),
            address=st.limits.client_address(ws),
        )
        admitted = await open_call(st, grant, "websocket", output_rate=PIPELINE_RATE)
    except AdmissionError as exc:
        await _refuse(ws, exc)
        return
    except RateLimitedError as exc:
        await _refuse(ws, AdmissionError(429, "rate_limited", str(exc)))
        return
    call = admitted.call
    try:
        await ws.accept()
        hello: dict[str, Any] = {
            "type": "session",
            "session_id": call.session.id,
            "call_id": call.id,
        }
        if admitted.session_token is not None:
            hello["session_token"] = admitted.session_token
        await ws.send_text(json.dumps(hello))
        start_call(st, call, WebSocketTransport(ws))
        await call.wait_ended()
    finally:
        await st.calls.end(call, "websocket closed")


async def _refuse(ws: WebSocket, exc: AdmissionError) -> None:
    await ws.accept()
    error = {"type": "error", "stage": exc.stage, "message": str(exc), "retryable": exc.retryable}
    await ws.send_text(json.dumps(error))
    await ws.close(code=4000 + exc.status, reason=str(exc)[:120])
