"""Text-to-speech provider interface.

Each chunk carries its own sample rate and the voice that produced it, so a
fallback from one voice to another (a 24 kHz cloud voice to 22.05 kHz Piper)
can happen mid-call and the phrase cache keys on the voice actually heard.

A TTS that can take its text while the LLM is still writing it (ElevenLabs'
input-streaming WebSocket) also implements ``StreamingTTS``: ``open_stream()``
gives a ``TTSInputStream`` that text is pushed into piece by piece and audio
comes out of, each chunk saying which characters it speaks (``text``), so the
playout still knows what the caller heard.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
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
    provider: str = "local"
    """The service that synthesized it (``"local"``, ``"elevenlabs"``): for usage and cost."""
    text: str | None = None
    """The characters this audio speaks, when the provider says (input streaming)."""

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


class TTSInputStream(Protocol):
    """One utterance whose text arrives in pieces (see ``StreamingTTS``).

    ``push`` and ``end`` are called by one task, iteration by another; the
    iterator ends after ``end()`` once all audio was delivered. ``aclose()``
    abandons the utterance at once (barge-in): pending audio is dropped and
    the iterator ends. Failures surface as ``ProviderError`` from any method.
    """

    async def push(self, text: str) -> None:
        """Add text as the LLM writes it (any size, even part of a word)."""
        ...

    async def end(self) -> None:
        """No more text: synthesize what is pending and finish the stream."""
        ...

    def __aiter__(self) -> AsyncIterator[SpeechChunk]:
        """Audio as it is synthesized; each chunk's ``text`` says what it speaks."""
        ...

    async def aclose(self) -> None:
        """Stop now and release the connection (idempotent)."""
        ...


@runtime_checkable
class StreamingTTS(TTS, Protocol):
    """A TTS that also takes text while it is being written."""

    def open_stream(self) -> TTSInputStream:
        """Start an utterance; push its text into the returned stream."""
        ...
