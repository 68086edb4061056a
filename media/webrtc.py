"""aiortc as a call transport: the agent's pull track and the ``WebRtcTransport`` adapter.

The agent's peer connection carries the caller's audio track in (decoded by
aiortc: Opus as 48 kHz stereo, G.711 as 8 kHz mono), the agent's audio track
out (``PlayoutTrack``: aiortc pulls ``recv()``, paced by ``media.pacer.Pacer``),
and JSON control and events on the ``events`` data channel. The caller's
packets go through ``media.jitter.InboundAudioBuffer`` (no prefetch by
default: each is decoded as it arrives) rather than aiortc's 80 ms buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import av
import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.errors import AudioFormatError
from media.frames import FRAME_MS, PCM, AudioFrame
from media.jitter import INBOUND_PREFETCH, MAX_PREFETCH, InboundAudioBuffer, install
from media.pacer import Pacer
from media.playout import PlayoutBuffer
from media.transport import ControlInbox, ControlMessage, parse_control

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "events"
"""Label of the data channel that carries JSON events out and control messages in."""
MAX_CHANNEL_BUFFER = 1024 * 1024
"""Bytes queued on the events data channel beyond which new events are dropped."""
DISCONNECTED_GRACE_S = 3.0
"""How long a peer may stay ``disconnected`` (ICE consent lost) before it counts as gone."""


class PlayoutTrack(MediaStreamTrack):
    """The agent's audio track: paced 20 ms frames of a ``PlayoutBuffer``.

    aiortc pulls ``recv()``; each call waits on the pacer for the frame's due
    time and hands the encoder the buffer's next frame (silence when the
    agent is quiet, or before a buffer is attached: the track exists during
    SDP negotiation, the call binds its buffer when it starts).
    """

    kind = "audio"

    def __init__(self, sample_rate: int, frame_ms: int = FRAME_MS) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._pacer = Pacer(frame_ms / 1000)
        self._playout: PlayoutBuffer | None = None
        self._pts = 0

    def attach(self, playout: PlayoutBuffer) -> None:
        """Play ``playout`` from the next frame on."""
        if playout.sample_rate != self.sample_rate or playout.frame_samples != self.frame_samples:
            raise AudioFormatError(
                f"track plays {self.sample_rate} Hz frames of {self.frame_samples} samples, "
                f"the buffer has {playout.sample_rate} Hz frames of {playout.frame_samples}"
            )
        self._playout = playout

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, at its due time."""
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait()
        if self._playout is not None:
            pcm, _ = self._playout.pull()
        else:
            pcm = np.zeros(self.frame_samples, np.int16)
        frame = to_av(pcm, self.sample_rate, self._pts)
        self._pts += self.frame_samples
        return frame


def to_av(pcm: PCM, sample_rate: int, pts: int) -> av.AudioFrame:
    """Mono int16 PCM as an aiortc-ready frame stamped at ``pts`` (in samples)."""
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, sample_rate)
    return frame


def from_av(frame: av.AudioFrame) -> AudioFrame:
    """A decoded aiortc frame as an ``AudioFrame`` (rate and channels kept as they are).

    aiortc's decoders produce signed 16-bit samples, packed (``s16``) or
    planar (``s16p``); other sample formats raise ``AudioFormatError``.
    """
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if frame.format.name == "s16":
        pcm = data.reshape(-1)
    elif frame.format.name == "s16p":
        pcm = data.T.reshape(-1)  # (channels, samples) -> interleaved
    else:
        raise AudioFormatError(f"expected s16 or s16p audio, got {frame.format.name}")
    timestamp = float(frame.time) if frame.time is not None else 0.0
    return AudioFrame(pcm.astype(np.int16, copy=False), frame.sample_rate, channels, timestamp)


class WebRtcTransport:
    """A call over an aiortc ``RTCPeerConnection`` (see ``media.transport.Transport``).

    Create it before the SDP exchange (it adds the agent's track and listens
    for the caller's track and data channel). The caller is gone, and
    ``inbound()`` and ``play()`` end, when the connection closes, as soon as
    ICE or DTLS fails (``connectionState`` or ``iceConnectionState``
    ``"failed"``), or when it stays ``"disconnected"`` for
    ``disconnected_grace_s`` without recovering. ``gone_reason`` then says why
    (``"ice failed"``, ``"connection failed"``, ``"peer disconnected"``; None
    for a plain close). A peer that vanishes without any of these (its ICE
    consent checks fail only after ~30 s) is caught sooner by the bridge's
    no-audio timeout.

    ``inbound_prefetch``: packets of the caller's audio the jitter buffer
    holds before decoding (``media.jitter``; 0, the default, holds none).
    """

    kind = "webrtc"

    def __init__(
        self,
        pc: RTCPeerConnection,
        output_rate: int,
        *,
        disconnected_grace_s: float = DISCONNECTED_GRACE_S,
        inbound_prefetch: int = INBOUND_PREFETCH,
    ) -> None:
        if not 0 <= inbound_prefetch <= MAX_PREFETCH:
            raise ValueError(f"inbound_prefetch must be within 0-{MAX_PREFETCH}")
        self._pc = pc
        self.disconnected_grace_s = disconnected_grace_s
        self.inbound_prefetch = inbound_prefetch
        self.inbound_buffer: InboundAudioBuffer | None = None
        """The caller's jitter buffer, once their track is known (None if aiortc refused it)."""
        self.gone_reason: str | None = None
        """Why the peer is gone, when it failed rather than closed (see the class doc)."""
        self._grace: asyncio.Task[None] | None = None
        self.track = PlayoutTrack(output_rate)
        pc.addTrack(self.track)
        loop = asyncio.get_running_loop()
        self._remote: asyncio.Future[MediaStreamTrack | None] = loop.create_future()
        self._channel: asyncio.Future[RTCDataChannel] = loop.create_future()
        self._inbox = ControlInbox()
        self._gone = asyncio.Event()
        self.dropped_events = 0
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)
        pc.on("iceconnectionstatechange", self._on_state)

    # ------------------------------------------------------------ aiortc callbacks

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self._remote.done():
            # fired in setRemoteDescription: no packet has arrived yet
            receiver = next((r for r in self._pc.getReceivers() if r.track is track), None)
            if receiver is not None:
                self.inbound_buffer = install(receiver, self.inbound_prefetch)
            self._remote.set_result(track)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_CHANNEL or self._channel.done():
            return
        channel.on("message", lambda message: self._inbox.put(parse_control(message)))
        channel.on("close", self._inbox.close)
        self._channel.set_result(channel)

    async def _on_state(self) -> None:
        ice, connection = self._pc.iceConnectionState, self._pc.connectionState
        log.debug("peer connection %s, ice %s", connection, ice)
        if ice == "failed":
            await self._peer_gone("ice failed")
        elif connection == "failed":
            await self._peer_gone("connection failed")
        elif "closed" in (ice, connection):
            await self._peer_gone()
        elif "disconnected" in (ice, connection):
            if (self._grace is None or self._grace.done()) and not self._gone.is_set():
                self._grace = asyncio.get_running_loop().create_task(
                    self._disconnected(), name="webrtc:disconnected-grace"
                )
        elif self._grace is not None and not self._gone.is_set():
            self._grace.cancel()  # recovered within the grace period (reaped by close)

    async def _disconnected(self) -> None:
        """The peer stayed disconnected for the grace period: it is gone."""
        await asyncio.sleep(self.disconnected_grace_s)
        await self._peer_gone("peer disconnected")

    async def _peer_gone(self, reason: str | None = None) -> None:
        if self._gone.is_set():
            return
        self.gone_reason = reason
        self._gone.set()
        if self._grace is not None and self._grace is not asyncio.current_task():
            self._grace.cancel()
        self._inbox.close()
        if not self._remote.done():
            self._remote.set_result(None)
        # stops the receivers: the caller's track ends and inbound() returns
        await self._pc.close()

    # ------------------------------------------------------------ Transport

    async def inbound(self) -> AsyncIterator[AudioFrame]:
        """The caller's decoded audio (48 kHz stereo for Opus) until the track ends."""
        track = await self._remote
        if track is None:
            return
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame):
                yield from_av(frame)

    async def control(self) -> AsyncIterator[ControlMessage]:
        """Control messages of the ``events`` data channel (none for a WHIP client)."""
        async for message in self._inbox:
            yield message

    async def play(self, playout: PlayoutBuffer) -> None:
        """Bind the buffer to the agent's track (aiortc pulls it) until the peer is gone."""
        self.track.attach(playout)
        await self._gone.wait()

    async def send_event(self, event: Mapping[str, Any]) -> None:
        """Send on the data channel, once the caller opened it; dropped if it closed.

        The data channel is optional (media may continue without it), so a
        closed channel drops events rather than ending the call. Past
        ``MAX_CHANNEL_BUFFER`` bytes queued for a caller who does not read,
        events are dropped and counted in ``dropped_events``.
        """
        channel = await self._channel
        if channel.readyState == "connecting":
            opened = asyncio.Event()
            channel.once("open", opened.set)
            channel.once("close", opened.set)
            await opened.wait()
        if channel.readyState != "open":
            return
        if channel.bufferedAmount > MAX_CHANNEL_BUFFER:
            # The caller stopped reading: events are dropped (counted) rather
            # than buffered without bound; audio and the call go on.
            self.dropped_events += 1
            return
        channel.send(json.dumps(event))

    async def close(self, reason: str) -> None:
        """Close the peer connection (idempotent) and reap the grace timer."""
        log.debug("closing peer connection: %s", reason)
        with contextlib.suppress(Exception):
            await self._peer_gone()
        grace, self._grace = self._grace, None
        if grace is not None:
            # cancelled by _peer_gone if it was still waiting; else it is closing the peer
            await asyncio.gather(grace, return_exceptions=True)
