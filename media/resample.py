"""Stateful streaming resampling (python-soxr) so 20 ms chunks join without clicks."""

from __future__ import annotations

import numpy as np
import soxr

from media.errors import AudioFormatError
from media.frames import PCM, AudioFrame


class StreamResampler:
    """Resample one mono int16 stream chunk by chunk.

    The filter state is carried between calls, so feeding 20 ms pieces gives
    the same signal as resampling the whole stream at once (up to the filter's
    delay, which ``flush`` drains at the end of the stream).
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise AudioFormatError(f"invalid resampling rates {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        self._stream = (
            None
            if self._passthrough
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
        )

    def process(self, pcm: PCM) -> PCM:
        """Resample the next chunk of the stream (may return fewer samples at first)."""
        if pcm.dtype != np.int16:
            raise AudioFormatError(f"expected int16 samples, got {pcm.dtype}")
        if self._stream is None:
            return pcm
        out: PCM = self._stream.resample_chunk(pcm, last=False)
        return out

    def flush(self) -> PCM:
        """Drain the filter at the end of the stream."""
        if self._stream is None:
            return np.zeros(0, np.int16)
        out: PCM = self._stream.resample_chunk(np.zeros(0, np.int16), last=True)
        return out


def resample(pcm: PCM, in_rate: int, out_rate: int) -> PCM:
    """Resample a whole mono int16 signal in one call."""
    if in_rate == out_rate:
        return pcm
    out: PCM = soxr.resample(pcm, in_rate, out_rate, quality="HQ")
    return out


class FrameNormalizer:
    """Turn frames of any rate/channel count into mono frames at one target rate.

    Used by transports at their edge: Opus 48 kHz stereo, G.711 8 kHz, or PCM
    of any rate in; 16 kHz mono int16 out. The resampler is created on the
    first frame and recreated if the input rate changes mid-stream.
    """

    def __init__(self, out_rate: int) -> None:
        self.out_rate = out_rate
        self._resampler: StreamResampler | None = None
        self._position = 0

    def process(self, frame: AudioFrame) -> AudioFrame:
        """Normalize one frame (the output may be a few samples shorter at first)."""
        mono = frame.to_mono()
        if self._resampler is None or self._resampler.in_rate != mono.sample_rate:
            self._resampler = StreamResampler(mono.sample_rate, self.out_rate)
        pcm = self._resampler.process(mono.samples)
        out = AudioFrame(pcm, self.out_rate, 1, self._position / self.out_rate)
        self._position += pcm.size
        return out
