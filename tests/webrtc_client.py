"""An aiortc caller for tests: sends a WAV-like signal, records the agent's audio and events."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.frames import PCM, rms_dbfs
from media.resample import resample


class SignalTrack(MediaStreamTrack):
    """Plays 16 kHz mono PCM as a paced 48 kHz track, then silence forever."""

    kind = "audio"

    def __init__(self, pcm16k: PCM) -> None:
        super().__init__()
        self._pcm = resample(pcm16k, 16000, 48000)
        self._pos = 0
        self._start: float | None = None
        self.started_at: float | None = None
        """Monotonic time the first sample was sent."""

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = self.started_at = time.monotonic()
        due = self._start + self._pos / 48000
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        chunk = self._pcm[self._pos : self._pos + 960]
        if chunk.size < 960:
            chunk = np.concatenate([chunk, np.zeros(960 - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._pos
        frame.time_base = fractions.Fraction(1, 48000)
        self._pos += 960
        return frame


class Caller:
    """One aiortc peer calling the agent."""

    def __init__(self, pcm16k: PCM) -> None:
        self.pc = RTCPeerConnection()
        self.track = SignalTrack(pcm16k)
        self.pc.addTrack(self.track)
        self.channel = self.pc.createDataChannel("events")
        self.events: list[dict[str, Any]] = []
        self.audio: list[tuple[float, float]] = []
        """(arrival monotonic time, dBFS) of every received agent frame."""
        self._reader: asyncio.Task[None] | None = None

        @self.channel.on("message")
        def on_message(message: str) -> None:
            self.events.append(json.loads(message))

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            pcm = frame.to_ndarray().reshape(-1).astype(np.int16)
            self.audio.append((time.monotonic(), rms_dbfs(pcm)))

    async def connect(self, client: httpx.AsyncClient, room: dict[str, Any]) -> dict[str, Any]:
        """Offer, post to the server, apply the answer; returns the JSON answer."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        r = await client.post(
            f"/v1/rooms/{room['id']}/offer",
            json={"sdp": self.pc.localDescription.sdp, "type": "offer"},
            headers={"Authorization": f"Bearer {room['token']}"},
        )
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return answer

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Received events of one type."""
        return [e for e in self.events if e.get("type") == kind]

    async def wait_for(self, predicate: Any, within: float) -> None:
        """Poll until ``predicate()`` is true."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met; events: {[e['type'] for e in self.events]}")
            await asyncio.sleep(0.05)

    def loud_times(self, threshold_dbfs: float = -45.0) -> list[float]:
        """Arrival times of received frames louder than the threshold."""
        return [t for t, db in self.audio if db > threshold_dbfs]

    async def close(self) -> None:
        """Hang up."""
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
