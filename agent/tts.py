"""Text-to-speech provider interface."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from media.frames import PCM


@runtime_checkable
class TTS(Protocol):
    """Streams mono int16 PCM at ``sample_rate`` for a piece of text."""

    sample_rate: int
    voice: str
    """Name of the voice, used as part of cache keys."""

    def stream(self, text: str) -> AsyncGenerator[PCM, None]:
        """Yield the audio of ``text`` in chunks as soon as each is synthesized."""
        ...
