"""A WebRTC caller peer: speaks queued clips on a paced track, records what comes back.

The project's one client-side aiortc peer, used by the call tests
(``tests.webrtc_client``) and the wire benchmark (``bench.wire.client``). It
knows nothing of HTTP: ``offer()`` gives the SDP to post, ``accept()`` takes
the answer.

The microphone (``ClipTrack``) sends silence until a clip is queued, paced by
``media.pacer.Pacer`` like the agent's own track, and records the send time of
every frame of a clip, so when the caller's speech started and ended is known
exactly. The agent's audio is recorded frame by frame (arrival time, dBFS,
digital silence), and every JSON event of the ``events`` data channel with its
arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.frames import FRAME_MS, PCM, rms_dbfs
from media.pacer import Pacer
from media.resample import resample
from media.webrtc import EVENTS_CHANNEL, to_av

TRACK_RATE = 48_000
"""The caller's track rate (what a browser sends)."""


@dataclass(eq=False)
class Clip:
    """A clip queued on a ``ClipTrack``, with the send time of each of its frames."""

    pcm: PCM
    """The clip at the track's rate."""
    rate: int
    frame_samples: int
    frame_times: list[float] = field(default_factory=list)
    """Monotonic time each frame of the clip was handed to the encoder."""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def frames(self) -> int:
        """Frames the clip spans."""
        return -(-self.pcm.size // self.frame_samples)

    def sent_at(self, sample: int, rate: int) -> float:
        """Send time of the clip's sample at offset ``sample`` (counted at ``rate`` Hz)."""
        if not self.frame_times:
            raise ValueError("clip not sent yet")
        pos = sample * self.rate // rate
        idx = min(pos // self.frame_samples, len(self.frame_times) - 1)
        return self.frame_times[idx] + (pos - idx * self.frame_samples) / self.rate

    @property
    def started_at(self) -> float:
        """When the first frame of the clip was sent."""
        return self.sent_at(0, self.rate)

    async def wait(self, within_s: float) -> bool:
        """Wait until the whole clip is sent; False if that takes over ``within_s``."""
        try:
            await asyncio.wait_for(self.done.wait(), within_s)
        except TimeoutError:
            return False
        return True


class ClipTrack(MediaStreamTrack):
    """A caller's microphone: paced mono frames of queued clips, silence between them."""

    kind = "audio"

    def __init__(self, rate: int = TRACK_RATE, frame_ms: int = FRAME_MS) -> None:
        super().__init__()
        self.rate = rate
        self.frame_samples = rate * frame_ms // 1000
        self._pacer = Pacer(frame_ms / 1000)
        self._clips: deque[Clip] = deque()
        self._offset = 0
        self._pts = 0

    def play(self, pcm: PCM, rate: int) -> Clip:
        """Queue mono PCM at ``rate`` Hz; it starts after the clips queued before it."""
        clip = Clip(resample(pcm, rate, self.rate), self.rate, self.frame_samples)
        self._clips.append(clip)
        return clip

    @property
    def busy(self) -> bool:
        """Whether a clip is playing or queued."""
        return bool(self._clips)

    @property
    def started_at(self) -> float | None:
        """Monotonic time the track's first frame was sent."""
        return self._pacer.started_at

    async def recv(self) -> av.AudioFrame:
        """The next frame, at its due time."""
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait()
        out = np.zeros(self.frame_samples, np.int16)
        if self._clips:
            clip = self._clips[0]
            chunk = clip.pcm[self._offset : self._offset + self.frame_samples]
            out[: chunk.size] = chunk
            clip.frame_times.append(time.monotonic())
            self._offset += self.frame_samples
            if self._offset >= clip.pcm.size:
                self._clips.popleft()
                self._offset = 0
                clip.done.set()
        frame = to_av(out, self.rate, self._pts)
        self._pts += self.frame_samples
        return frame


class CallerPeer:
    """One aiortc peer calling the agent: a ``ClipTrack`` out; audio and events in."""

    def __init__(self, pc: RTCPeerConnection | None = None) -> None:
        self.pc = pc or RTCPeerConnection()
        self.track = ClipTrack()
        self.pc.addTrack(self.track)
        self.channel = self.pc.createDataChannel(EVENTS_CHANNEL)
        self.events: list[tuple[float, dict[str, Any]]] = []
        """(arrival monotonic time, event) of every data-channel event."""
        self.frame_times: list[float] = []
        """Arrival monotonic time of every frame of the agent's audio."""
        self.frame_dbfs: list[float] = []
        """Loudness of every received frame."""
        self.frame_silent: list[bool] = []
        """Whether each received frame was digital silence."""
        self._reader: asyncio.Task[None] | None = None

        @self.channel.on("message")
        def on_message(message: object) -> None:
            if isinstance(message, str):
                with contextlib.suppress(json.JSONDecodeError):
                    self.events.append((time.monotonic(), json.loads(message)))

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            pcm = frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            self.frame_times.append(time.monotonic())
            self.frame_dbfs.append(rms_dbfs(pcm))
            self.frame_silent.append(not bool(np.any(pcm)))

    async def offer(self) -> str:
        """Create the SDP offer (to post to the server)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def accept(self, sdp: str, kind: str = "answer") -> None:
        """Apply the server's SDP answer."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, kind))

    @property
    def connected(self) -> bool:
        """Whether media flows and the data channel is open."""
        return self.pc.connectionState == "connected" and self.channel.readyState == "open"

    def send(self, message: Mapping[str, Any] | str) -> None:
        """Send a control message on the data channel (a mapping is JSON-encoded)."""
        self.channel.send(message if isinstance(message, str) else json.dumps(message))

    def of_type(self, kind: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        """Events of one type that arrived at or after ``since`` (monotonic)."""
        return [(t, e) for t, e in self.events if e.get("type") == kind and t >= since]

    def loud_times(self, threshold_dbfs: float = -45.0) -> list[float]:
        """Arrival times of received frames louder than the threshold."""
        return [
            t
            for t, db in zip(self.frame_times, self.frame_dbfs, strict=True)
            if db > threshold_dbfs
        ]

    async def wait_until(self, predicate: Callable[[], bool], within_s: float) -> bool:
        """Poll ``predicate`` every 20 ms; False if it is still false after ``within_s``."""
        deadline = time.monotonic() + max(0.0, within_s)
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def close(self) -> None:
        """Hang up: close the peer connection and stop recording."""
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
