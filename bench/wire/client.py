"""An aiortc caller peer for the benchmark: speaks clips on demand, records what comes back.

Unlike ``tests.webrtc_client.Caller`` (one signal fixed in advance), this
caller sends silence until a scenario queues a clip, so a scenario can react
to the agent (ask the next question once the reply is over, talk over a
reply that is playing). It records the send time of every 20 ms frame of a
clip, so the time the caller's speech started and ended in the sent audio is
known exactly, and the arrival time, loudness and digital silence of every
frame of the agent's audio, plus every event of the ``events`` data channel
with its arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench.wire.audio import AudioTrace
from bench.wire.speech import Utterance
from media.frames import PCM, PIPELINE_RATE, rms_dbfs
from media.resample import resample

TRACK_RATE = 48_000
FRAME_SAMPLES = TRACK_RATE // 50
UPSAMPLE = TRACK_RATE // PIPELINE_RATE


class CallError(RuntimeError):
    """A call could not be set up (refused, timed out)."""


@dataclass(eq=False)
class Clip:
    """A clip queued on the caller's track, with the send time of each of its frames."""

    utterance: Utterance
    pcm: PCM
    """The clip at the track's rate."""
    frame_times: list[float] = field(default_factory=list)
    """Monotonic time each 20 ms frame of the clip was handed to the encoder."""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def frames(self) -> int:
        """Frames the clip spans."""
        return -(-self.pcm.size // FRAME_SAMPLES)

    def sent_at(self, sample: int) -> float:
        """Send time of a sample of the clip (16 kHz offset); the clip must be sent."""
        if not self.frame_times:
            raise ValueError("clip not sent yet")
        pos = sample * UPSAMPLE
        idx = min(pos // FRAME_SAMPLES, len(self.frame_times) - 1)
        return self.frame_times[idx] + (pos - idx * FRAME_SAMPLES) / TRACK_RATE

    @property
    def started_at(self) -> float:
        """When the first frame of the clip was sent."""
        return self.frame_times[0]

    @property
    def speech_start_at(self) -> float:
        """When the first sample of speech was sent."""
        return self.sent_at(self.utterance.speech_start)

    @property
    def speech_end_at(self) -> float:
        """When the last sample of speech was sent."""
        return self.sent_at(self.utterance.speech_end)

    async def wait(self, within_s: float) -> bool:
        """Wait until the whole clip is sent; False if that takes over ``within_s``."""
        try:
            await asyncio.wait_for(self.done.wait(), within_s)
        except TimeoutError:
            return False
        return True


class CallerTrack(MediaStreamTrack):
    """The caller's microphone: paced 20 ms frames at 48 kHz, silence between clips."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._clips: deque[Clip] = deque()
        self._offset = 0
        self._start: float | None = None
        self._pts = 0

    def play(self, utterance: Utterance) -> Clip:
        """Queue a clip; it starts on the next frame after the clips queued before it."""
        clip = Clip(utterance, resample(utterance.pcm, PIPELINE_RATE, TRACK_RATE))
        self._clips.append(clip)
        return clip

    @property
    def busy(self) -> bool:
        """Whether a clip is playing or queued."""
        return bool(self._clips)

    async def recv(self) -> av.AudioFrame:
        """The next frame, at its due time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            due = self._start + self._pts / TRACK_RATE
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        now = time.monotonic()
        out = np.zeros(FRAME_SAMPLES, np.int16)
        if self._clips:
            clip = self._clips[0]
            chunk = clip.pcm[self._offset : self._offset + FRAME_SAMPLES]
            out[: chunk.size] = chunk
            clip.frame_times.append(now)
            self._offset += FRAME_SAMPLES
            if self._offset >= clip.pcm.size:
                self._clips.popleft()
                self._offset = 0
                clip.done.set()
        frame = av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = TRACK_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, TRACK_RATE)
        self._pts += FRAME_SAMPLES
        return frame


class WireCaller:
    """One caller: a room, an aiortc peer connection, its audio and its events."""

    def __init__(self, client: httpx.AsyncClient, label: str = "caller") -> None:
        self.client = client
        self.label = label
        self.pc = RTCPeerConnection()
        self.track = CallerTrack()
        self.pc.addTrack(self.track)
        self.channel = self.pc.createDataChannel("events")
        self.events: list[tuple[float, dict[str, Any]]] = []
        """(arrival monotonic time, event) of every data-channel event."""
        self._times: list[float] = []
        self._db: list[float] = []
        self._zero: list[bool] = []
        self._reader: asyncio.Task[None] | None = None
        self.room: dict[str, Any] | None = None
        self.call_id: str | None = None
        self.connect_s: float | None = None

        @self.channel.on("message")
        def on_message(message: object) -> None:
            if isinstance(message, str):
                with contextlib.suppress(json.JSONDecodeError):
                    self.events.append((time.monotonic(), json.loads(message)))

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self._reader is None:
                self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            pcm = frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            self._times.append(time.monotonic())
            self._db.append(rms_dbfs(pcm))
            self._zero.append(not bool(np.any(pcm)))

    async def connect(self, within_s: float = 30.0) -> float:
        """Create a room, offer, wait for the media and the data channel; returns seconds."""
        t0 = time.monotonic()
        r = await self.client.post("/v1/rooms", json={"name": self.label})
        if r.status_code != 201:
            raise CallError(f"room refused: {r.status_code} {r.text[:200]}")
        self.room = r.json()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        room = self.room
        assert room is not None
        r = await self.client.post(
            f"/v1/rooms/{room['id']}/offer",
            json={"sdp": self.pc.localDescription.sdp, "type": "offer"},
            headers={"Authorization": f"Bearer {room['token']}"},
        )
        if r.status_code != 200:
            raise CallError(f"offer refused: {r.status_code} {r.text[:200]}")
        answer = r.json()
        self.call_id = str(answer["call_id"])
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        ok = await self.wait_until(
            lambda: self.pc.connectionState == "connected" and self.channel.readyState == "open",
            within_s - (time.monotonic() - t0),
        )
        if not ok:
            state = self.pc.connectionState
            raise CallError(f"call not connected within {within_s} s ({state})")
        self.connect_s = time.monotonic() - t0
        return self.connect_s

    def say(self, utterance: Utterance) -> Clip:
        """Queue a clip on the caller's track."""
        return self.track.play(utterance)

    async def wait_until(self, predicate: Callable[[], bool], within_s: float) -> bool:
        """Poll ``predicate`` every 20 ms; False if it is still false after ``within_s``."""
        deadline = time.monotonic() + max(0.0, within_s)
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def of_type(self, kind: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        """Events of one type that arrived at or after ``since`` (monotonic)."""
        return [(t, e) for t, e in self.events if e.get("type") == kind and t >= since]

    def trace(self) -> AudioTrace:
        """The agent's received audio so far."""
        return AudioTrace.of(self._times, self._db, self._zero)

    def last_loud(self, threshold_dbfs: float) -> float | None:
        """Arrival time of the latest received frame louder than the threshold."""
        for t, db in zip(reversed(self._times), reversed(self._db), strict=True):
            if db > threshold_dbfs:
                return t
        return None

    def loud_since(self, since: float, threshold_dbfs: float) -> float | None:
        """Arrival time of the first frame after ``since`` louder than the threshold."""
        n = len(self._times)
        i = n
        while i > 0 and self._times[i - 1] >= since:
            i -= 1
        for j in range(i, n):
            if self._db[j] > threshold_dbfs:
                return self._times[j]
        return None

    async def hang_up(self) -> None:
        """Delete the room (which ends the call on the server), then close the peer."""
        room = self.room
        if room is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.delete(
                    f"/v1/rooms/{room['id']}",
                    headers={"Authorization": f"Bearer {room['token']}"},
                    timeout=15,
                )
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
