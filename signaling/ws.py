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
token), 4403 (another room's token), 4404 (no such room) or 4503 (too many
calls); a frame over ``MAX_MESSAGE_BYTES`` closes it with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from agent.errors import SessionClosedError
from agent.events import SessionState, StateEvent
from media.frames import FRAME_MS, PIPELINE_RATE, AudioFrame
from signaling.calls import Call, CallLimitError
from signaling.state import AppState
from signaling.tokens import TokenError, bearer

log = logging.getLogger(__name__)
router = APIRouter()

MAX_MESSAGE_BYTES = 256 * 1024
"""About 8 s of 16 kHz PCM in one message."""
_FRAME_SAMPLES = PIPELINE_RATE * FRAME_MS // 1000


async def _refuse(ws: WebSocket, code: int, kind: str, detail: str) -> None:
    await ws.accept()
    await ws.send_text(
        json.dumps({"type": "error", "stage": kind, "message": detail, "retryable": code == 4503})
    )
    await ws.close(code=code, reason=detail[:120])


@router.websocket("/v1/ws/voice")
async def voice_socket(ws: WebSocket) -> None:
    """A voice call over a WebSocket (see the module docstring for the protocol)."""
    st: AppState = ws.app.state.parley
    room_id = ws.query_params.get("room", "")
    token = ws.query_params.get("token") or bearer(ws.headers.get("authorization"))
    if st.rooms.get(room_id) is None:
        await _refuse(ws, 4404, "auth", "no such room")
        return
    try:
        st.tokens.verify(token, room_id)
    except TokenError as exc:
        await _refuse(ws, 4401 if exc.status == 401 else 4403, "auth", str(exc))
        return
    session_id = ws.query_params.get("session") or None
    if session_id is not None:
        try:
            st.tokens.verify_session(ws.query_params.get("session_token"), session_id)
        except TokenError as exc:
            await _refuse(ws, 4401 if exc.status == 401 else 4403, "auth", str(exc))
            return
    try:
        call = await st.calls.open(
            "websocket", room_id=room_id, output_rate=PIPELINE_RATE, session_id=session_id
        )
    except CallLimitError as exc:
        await _refuse(ws, 4503, "capacity", str(exc))
        return
    st.metrics.calls.labels("websocket").inc()
    await ws.accept()
    hello: dict[str, Any] = {"type": "session", "session_id": call.session.id, "call_id": call.id}
    if session_id is None:
        hello["session_token"] = st.tokens.mint_session(call.session.id)[0]
    await ws.send_text(json.dumps(hello))

    async def close_socket() -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=1000, reason=call.end_reason or "call ended")

    call.on_end(close_socket)
    send_lock = asyncio.Lock()
    call.spawn(_send_events(ws, call, send_lock), "ws-events")
    call.spawn(_send_audio(ws, call, send_lock), "ws-audio")
    try:
        await _receive(ws, call, send_lock)
    finally:
        await st.calls.end(call, "websocket closed")


async def _send(ws: WebSocket, lock: asyncio.Lock, data: str | bytes) -> None:
    async with lock:
        if isinstance(data, bytes):
            await ws.send_bytes(data)
        else:
            await ws.send_text(data)


async def _send_events(ws: WebSocket, call: Call, lock: asyncio.Lock) -> None:
    async for event in call.session.events():
        await _send(ws, lock, json.dumps(event.to_dict()))
        if isinstance(event, StateEvent) and event.state is SessionState.CLOSED:
            return


async def _send_audio(ws: WebSocket, call: Call, lock: asyncio.Lock) -> None:
    async for frame, speech in call.session.playout.frames():
        if speech:
            await _send(ws, lock, frame.samples.astype("<i2").tobytes())


async def _receive(ws: WebSocket, call: Call, lock: asyncio.Lock) -> None:
    carry = b""

    async def error(detail: str) -> None:
        await _send(
            ws,
            lock,
            json.dumps({"type": "error", "stage": "input", "message": detail, "retryable": False}),
        )

    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        data: bytes | None = message.get("bytes")
        text: str | None = message.get("text")
        if data is not None:
            if len(data) > MAX_MESSAGE_BYTES:
                await ws.close(code=1009, reason="message too big")
                return
            buf = carry + data
            usable = len(buf) - len(buf) % 2
            carry = buf[usable:]
            pcm = np.frombuffer(buf[:usable], dtype="<i2").astype(np.int16)
            for i in range(0, pcm.size, _FRAME_SAMPLES):
                with contextlib.suppress(SessionClosedError):
                    call.session.push_audio(AudioFrame(pcm[i : i + _FRAME_SAMPLES], PIPELINE_RATE))
        elif text is not None:
            if len(text) > 16 * 1024:
                await error("text message over 16 KiB")
                continue
            try:
                payload = json.loads(text)
            except json.JSONDecodeError:
                await error("text messages must be JSON")
                continue
            kind = payload.get("type") if isinstance(payload, dict) else None
            if kind == "hangup":
                return
            if kind == "text" and isinstance(payload.get("text"), str):
                call.touch()
                await call.session.send_text(payload["text"])
                continue
            await error('expected {"type": "text", "text": ...} or {"type": "hangup"}')
