"""A scripted WebSocket call against a live server (``tests.server.running_server``).

The caller joins a new room with its token in the URL (as browsers do: they
cannot set headers on a WebSocket), speaks PCM and types texts one turn at a
time, waits for each turn's reply and metrics, and hangs up. Its own
WebSocket library logs nothing (a logger of its own, above DEBUG), so a test
capturing every record of the process sees the server's alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import websockets

from media.frames import PCM

CLIENT_LOG = logging.getLogger("tests.wscall.client")
CLIENT_LOG.setLevel(logging.INFO)  # the library dumps every frame at DEBUG
CHUNK = 1600
"""100 ms of 16 kHz PCM a message."""
TURN_TIMEOUT_S = 30.0


@dataclass
class WsCall:
    """What the caller saw of one call."""

    room: dict[str, Any]
    url: str
    """The WebSocket URL, join token included."""
    hello: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    audio_bytes: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    """Headers of the WebSocket handshake's response (lower-case names)."""
    close_code: int | None = None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Events of one type, in order."""
        return [e for e in self.events if e.get("type") == kind]

    @property
    def call_id(self) -> str:
        """The server's id of the call."""
        return str(self.hello["call_id"])

    @property
    def texts(self) -> list[str]:
        """What was said and answered: final transcripts and reply texts."""
        finals = [e["text"] for e in self.of_type("transcript") if e["final"]]
        return finals + [e["text"] for e in self.of_type("reply")]


async def _until_metrics(call: WsCall, turns: int, arrived: asyncio.Event) -> None:
    """Wait (at most ``TURN_TIMEOUT_S``) until ``turns`` turns have their metrics."""
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while len(call.of_type("metrics")) < turns:
            arrived.clear()  # no await since the check: the reader cannot slip in between
            await arrived.wait()


async def websocket_call(
    base_url: str,
    *,
    speech: Sequence[PCM] = (),
    typed: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
) -> WsCall:
    """Create a room, join it over the WebSocket and take turns: each PCM of
    ``speech`` (sent at 5x real time), then each text of ``typed``; every turn
    waits for its reply's metrics. Hangs up and waits for the server to close."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        created = await client.post("/v1/rooms")
        assert created.status_code == 201, created.text
        room: dict[str, Any] = created.json()
    ws_url = (
        base_url.replace("http", "ws", 1) + f"/v1/ws/voice?room={room['id']}&token={room['token']}"
    )
    call = WsCall(room, ws_url)
    async with websockets.connect(
        ws_url, additional_headers=dict(headers or {}), logger=CLIENT_LOG, proxy=None
    ) as ws:
        response = ws.response
        assert response is not None
        call.response_headers = {k.lower(): v for k, v in response.headers.raw_items()}
        call.hello = json.loads(await ws.recv())
        assert call.hello["type"] == "session", call.hello

        arrived = asyncio.Event()

        async def reader() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    call.audio_bytes += len(message)
                else:
                    call.events.append(json.loads(message))
                    arrived.set()

        task = asyncio.create_task(reader())
        try:
            turns = 0
            for pcm in speech:
                for i in range(0, pcm.size, CHUNK):
                    await ws.send(pcm[i : i + CHUNK].astype("<i2").tobytes())
                    await asyncio.sleep(CHUNK / 16000 / 5)
                turns += 1
                await _until_metrics(call, turns, arrived)
            for text in typed:
                await ws.send(json.dumps({"type": "text", "text": text}))
                turns += 1
                await _until_metrics(call, turns, arrived)
            await ws.send(json.dumps({"type": "hangup"}))
            await asyncio.wait_for(task, 10)  # the server closes the socket
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        call.close_code = ws.close_code
    return call


def silence_after(pcm: PCM, seconds: float) -> PCM:
    """``pcm`` followed by ``seconds`` of digital silence (ends the caller's turn)."""
    return np.concatenate([pcm, np.zeros(round(seconds * 16000), np.int16)])
