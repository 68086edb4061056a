"""Stateful streaming resampling so 20 ms chunks join without clicks.

python-soxr for the agent's own audio (TTS to the playout rate: quality
first), libswresample for inbound audio (``FrameNormalizer``: latency first).
"""

from __future__ import annotations

import av
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

    Used by the call bridge on every inbound frame: Opus 48 kHz stereo, G.711
    8 kHz, or PCM of any rate in; 16 kHz mono int16 out. Inbound speech is
    latency-critical (every sample a filter withholds delays turn detection),
    so this uses libswresample (PyAV), which holds back a constant 16 samples
    (1 ms) at 48 -> 16 kHz, where soxr releases its output in blocks and holds
    back 8-21 ms ("HQ") or 6-12 ms ("LQ") (measured on 20 ms chunks; the
    wire benchmark's network/playout stage grew by ~25 ms with soxr "HQ").
    The resampler is created on the first frame and recreated if the input
    rate or channel count changes mid-stream.
    """

    def __init__(self, out_rate: int) -> None:
        if out_rate <= 0:
            raise AudioFormatError(f"invalid output rate {out_rate}")
        self.out_rate = out_rate
        self._resampler: av.AudioResampler | None = None
        self._input: tuple[int, int] | None = None
        self._position = 0

    def process(self, frame: AudioFrame) -> AudioFrame:
        """Normalize one frame (the output may be a few samples shorter at first)."""
        if frame.sample_rate == self.out_rate and frame.channels == 1 and self._input is None:
            pcm = frame.samples
        else:
            pcm = self._resample(frame)
        out = AudioFrame(pcm, self.out_rate, 1, self._position / self.out_rate)
        self._position += pcm.size
        return out

    def _resample(self, frame: AudioFrame) -> PCM:
        key = (frame.sample_rate, frame.channels)
        if self._resampler is None or self._input != key:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.out_rate)
            self._input = key
        layout = "mono" if frame.channels == 1 else "stereo"
        packed = av.AudioFrame.from_ndarray(
            frame.samples.reshape(1, -1), format="s16", layout=layout
        )
        packed.sample_rate = frame.sample_rate
        parts = [o.to_ndarray().reshape(-1) for o in self._resampler.resample(packed)]
        if not parts:
            return np.zeros(0, np.int16)
        out: PCM = np.concatenate(parts).astype(np.int16, copy=False)
        return out
