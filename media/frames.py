"""The audio frame that flows between transports, the playout buffer and the agent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from media.errors import AudioFormatError

PCM = npt.NDArray[np.int16]
"""Interleaved signed 16-bit PCM samples."""

FloatPCM = npt.NDArray[np.float32]
"""Mono float32 samples in [-1, 1]."""

PIPELINE_RATE = 16_000
"""Sample rate of everything inside the agent (VAD, STT)."""

FRAME_MS = 20
"""Duration of one transport frame."""


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A block of int16 PCM audio.

    ``samples`` holds ``samples_per_channel * channels`` interleaved values.
    ``timestamp`` is the stream position of the first sample in seconds
    (stream clock, not wall clock).
    """

    samples: PCM
    sample_rate: int
    channels: int = 1
    timestamp: float = 0.0

    def __post_init__(self) -> None:
        if self.samples.dtype != np.int16:
            raise AudioFormatError(f"expected int16 samples, got {self.samples.dtype}")
        if self.samples.ndim != 1:
            raise AudioFormatError(
                f"expected a flat interleaved sample array, got shape {self.samples.shape}"
            )
        if self.sample_rate <= 0:
            raise AudioFormatError(f"sample rate must be positive, got {self.sample_rate}")
        if self.channels not in (1, 2):
            raise AudioFormatError(f"expected 1 or 2 channels, got {self.channels}")
        if self.samples.size % self.channels:
            raise AudioFormatError(
                f"{self.samples.size} samples do not divide into {self.channels} channels"
            )

    @property
    def samples_per_channel(self) -> int:
        """Number of sample instants in the frame."""
        return self.samples.size // self.channels

    @property
    def duration(self) -> float:
        """Duration of the frame in seconds."""
        return self.samples_per_channel / self.sample_rate

    def to_mono(self) -> AudioFrame:
        """Average the channels into one (returns ``self`` when already mono)."""
        if self.channels == 1:
            return self
        stereo = self.samples.reshape(-1, self.channels).astype(np.int32)
        mono = (stereo.sum(axis=1) // self.channels).astype(np.int16)
        return AudioFrame(mono, self.sample_rate, 1, self.timestamp)

    def to_float(self) -> FloatPCM:
        """Mono float32 view of the frame in [-1, 1]."""
        return int16_to_float(self.to_mono().samples)

    @classmethod
    def silence(
        cls, sample_rate: int, duration_ms: int = FRAME_MS, timestamp: float = 0.0
    ) -> AudioFrame:
        """A mono frame of digital silence."""
        return cls(np.zeros(sample_rate * duration_ms // 1000, np.int16), sample_rate, 1, timestamp)


def int16_to_float(pcm: PCM) -> FloatPCM:
    """Convert int16 PCM to float32 in [-1, 1)."""
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32, copy=False)


def float_to_int16(audio: npt.NDArray[np.floating]) -> PCM:
    """Convert float audio in [-1, 1] to int16, clipping out-of-range values."""
    out: PCM = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    return out


def rms_dbfs(pcm: PCM) -> float:
    """Loudness of int16 PCM in dBFS (-inf for digital silence)."""
    if pcm.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    return 20.0 * float(np.log10(rms / 32768.0)) if rms > 0 else float("-inf")
