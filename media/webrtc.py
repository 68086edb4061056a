"""aiortc glue: the agent's outgoing audio track and the caller's inbound audio pump."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.frames import PIPELINE_RATE, AudioFrame
from media.playout import PlayoutBuffer


class PlayoutTrack(MediaStreamTrack):
    """An audio track that plays a ``PlayoutBuffer`` in paced 20 ms frames.

    aiortc pulls ``recv()``; this track sleeps until each frame's due time
    (computed from the start, so pacing never drifts) and hands the encoder
    the buffer's next frame, silence when the agent is quiet.
    """

    kind = "audio"

    def __init__(self, playout: PlayoutBuffer) -> None:
        super().__init__()
        self._playout = playout
        self._rate = playout.sample_rate
        self._time_base = fractions.Fraction(1, self._rate)
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, at its due time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self._playout.frame_samples
            due = self._start + self._pts / self._rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:  # stalled (e.g. a busy loop): resync instead of bursting
                self._start = time.monotonic() - self._pts / self._rate
        pcm, _ = self._playout.pull()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        return frame


async def pump_inbound(
    track: MediaStreamTrack, sink: Callable[[AudioFrame], None], rate: int = PIPELINE_RATE
) -> None:
    """Read a remote audio track until it ends, handing ``sink`` mono int16 frames at ``rate``.

    Decoded Opus arrives as 48 kHz stereo; PyAV's resampler (stateful, so
    frame joins are seamless) converts it.
    """
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    position = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not isinstance(frame, av.AudioFrame):
            continue
        for out in resampler.resample(frame):
            pcm = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            if pcm.size:
                sink(AudioFrame(pcm, rate, 1, position / rate))
                position += pcm.size
