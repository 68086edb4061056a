"""Speech-to-text provider interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from media.frames import FloatPCM


@dataclass(frozen=True, slots=True)
class Transcript:
    """Result of transcribing one stretch of speech."""

    text: str
    confidence: float
    """Mean token probability in 0..1 (0 when there are no words)."""
    audio_s: float
    """Duration of the audio that was transcribed, in seconds."""
    processing_s: float
    """Wall time the provider spent, in seconds."""
    provider: str = "local"
    """The service that transcribed (``"local"``, ``"groq"``): for usage and cost."""
    model: str = ""
    """Its model (e.g. ``"whisper-large-v3-turbo"``)."""

    @property
    def words(self) -> list[str]:
        """The transcript split into words."""
        return self.text.split()


@runtime_checkable
class STT(Protocol):
    """Transcribes 16 kHz mono float32 audio.

    Implementations are shared by every session of the process, must be safe
    to call concurrently, and run their inference off the event loop.
    """

    sample_rate: int

    async def transcribe(self, audio: FloatPCM, *, partial: bool = False) -> Transcript:
        """Transcribe ``audio``; ``partial`` asks for a cheaper, interim result.

        Final transcriptions take priority over partial ones when both wait
        for the model; a cancelled request leaves the queue at once.
        """
        ...

    async def aclose(self) -> None:
        """Release the provider (threads, connections); idempotent."""
        ...
