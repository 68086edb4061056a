"""Text-to-speech provider interface.

Each chunk carries its own sample rate and the voice that produced it, so a
fallback from one voice to another (a 24 kHz cloud voice to 22.05 kHz Piper)
can happen mid-call and the phrase cache keys on the voice actually heard.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from media.errors import AudioFormatError
from media.frames import PCM


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    """Mono int16 PCM of synthesized speech, at ``sample_rate``, spoken by ``voice``."""

    pcm: PCM
    sample_rate: int
    voice: str

    def __post_init__(self) -> None:
        if self.pcm.dtype != np.int16 or self.pcm.ndim != 1:
            raise AudioFormatError("speech chunks are flat mono int16 PCM")
        if self.sample_rate <= 0:
            raise AudioFormatError(f"invalid sample rate {self.sample_rate}")

    @property
    def duration(self) -> float:
        """Seconds of audio in the chunk."""
        return self.pcm.size / self.sample_rate


@runtime_checkable
class TTS(Protocol):
    """Streams speech for a piece of text."""

    sample_rate: int
    """Native rate of the default voice (chunks say their own rate)."""
    voice: str
    """Name of the default voice."""

    def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        """Yield the audio of ``text`` in chunks as soon as each is synthesized."""
        ...

    async def aclose(self) -> None:
        """Release the provider (threads, connections); idempotent."""
        ...
