"""``FallbackTTS``: a ``TTS`` that speaks with the first healthy provider of a chain.

``fallback_tts()`` builds the right wrapper for a chain: a
``StreamingFallbackTTS`` (which also implements ``StreamingTTS``) when the
chain's first provider takes text while it is written, else a plain
``FallbackTTS``; reply code checks ``isinstance(tts, StreamingTTS)`` as it
would for a single provider and never needs to know the chain.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from functools import partial

from agent.chunker import ChunkerSettings
from agent.errors import ConfigError, ProviderError
from agent.fallback.breaker import BreakerSettings, CircuitBreaker, Clock
from agent.fallback.chain import ChainEntry
from agent.fallback.policy import Limits, RetryPolicy
from agent.fallback.stats import FallbackStats
from agent.fallback.tts_stream import FallbackInputStream
from agent.fallback.wrapper import ChainWrapper
from agent.tts import TTS, SpeechChunk, StreamingTTS, TTSInputStream


def _audible(chunk: SpeechChunk) -> bool:
    return chunk.pcm.size > 0


class FallbackTTS(ChainWrapper[TTS]):
    """Speaks each text with the first provider of ``chain`` that starts in time.

    Before the first audio, a provider that fails or exceeds
    ``limits.tts_first_audio_s`` is retried (retryable failures, per
    ``policy``) or replaced by the next one, within ``limits.budget_s``;
    providers whose circuit is open are skipped. After audio was yielded, a
    failure (or ``limits.idle_s`` without audio) raises a ``ProviderError``
    and nothing is repeated. When no provider served,
    ``AllProvidersFailedError``. Chunks say their own rate and voice, so a
    fallback voice mid-call is heard as such; ``sample_rate`` and ``voice``
    are the first provider's. The wrapper owns its providers.
    """

    def __init__(
        self,
        chain: Sequence[tuple[str, TTS]],
        limits: Limits | None = None,
        policy: RetryPolicy | None = None,
        *,
        breaker: BreakerSettings | None = None,
        clock: Clock = time.monotonic,
        stats: FallbackStats | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(
            "tts", chain, limits, policy, breaker=breaker, clock=clock, stats=stats, draw=draw
        )
        first = self.engine.entries[0].provider
        self.sample_rate = first.sample_rate
        self.voice = first.voice

    def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        """Yield the audio of ``text`` from the first provider that starts in time."""
        return self.speak(text, self.engine.entries)

    def speak(
        self, text: str, entries: Sequence[ChainEntry[TTS]]
    ) -> AsyncGenerator[SpeechChunk, None]:
        """``stream(text)`` over a part of the chain (the input stream's fallback)."""
        if self._closed:
            raise ProviderError("tts", "fallback chain is closed")

        def open_stream(tts: TTS) -> AsyncGenerator[SpeechChunk, None]:
            return tts.stream(text)

        return self.engine.relay(
            open_stream,
            commits=_audible,
            limit_s=self.limits.tts_first_audio_s,
            idle_s=self.limits.idle_s,
            budget_s=self.limits.budget_s,
            entries=entries,
        )


class StreamingFallbackTTS:
    """A ``FallbackTTS`` whose first provider also takes text while it is written.

    ``stream(text)`` is ``FallbackTTS.stream``. ``open_stream()`` returns a
    ``FallbackInputStream``: the first provider's input stream while it
    works; when that provider fails (or gives no audio within
    ``limits.tts_first_audio_s`` of the first speakable text) before any
    audio, or its circuit is open, the same stream object goes on speaking
    the whole text sentence by sentence with the rest of the chain (the
    single provider's ``stream()`` if the chain has one entry). The reply
    code pushes text and reads audio the same way in both cases; once audio
    was heard, a failure raises ``ProviderError`` from the stream.
    """

    def __init__(
        self,
        chain: Sequence[tuple[str, TTS]],
        limits: Limits | None = None,
        policy: RetryPolicy | None = None,
        *,
        chunker: ChunkerSettings | None = None,
        breaker: BreakerSettings | None = None,
        clock: Clock = time.monotonic,
        stats: FallbackStats | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if not chain or not isinstance(chain[0][1], StreamingTTS):
            raise ConfigError("tts: the chain's first provider does not take streamed text")
        self._tts = FallbackTTS(
            chain, limits, policy, breaker=breaker, clock=clock, stats=stats, draw=draw
        )
        self._chunker = chunker or ChunkerSettings()
        self.sample_rate = self._tts.sample_rate
        self.voice = self._tts.voice

    @property
    def stats(self) -> FallbackStats:
        """The counters this chain writes to."""
        return self._tts.stats

    @property
    def breakers(self) -> Mapping[str, CircuitBreaker]:
        """Each provider's circuit breaker, by chain name (for health and metrics)."""
        return self._tts.breakers

    def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        """See ``FallbackTTS.stream``."""
        return self._tts.stream(text)

    def open_stream(self) -> TTSInputStream:
        """Start an utterance whose text is pushed piece by piece; see the class docstring."""
        entries = self._tts.engine.entries
        return FallbackInputStream(
            self._tts.engine,
            entries[0],
            speak=partial(self._tts.speak, entries=entries[1:] or entries),
            limits=self._tts.limits,
            chunker=self._chunker,
        )

    async def aclose(self) -> None:
        """Close every provider of the chain; idempotent."""
        await self._tts.aclose()


def fallback_tts(
    chain: Sequence[tuple[str, TTS]],
    limits: Limits | None = None,
    policy: RetryPolicy | None = None,
    *,
    chunker: ChunkerSettings | None = None,
    breaker: BreakerSettings | None = None,
    clock: Clock = time.monotonic,
    stats: FallbackStats | None = None,
) -> FallbackTTS | StreamingFallbackTTS:
    """The fallback wrapper for ``chain``: streaming input when its first provider streams."""
    if chain and isinstance(chain[0][1], StreamingTTS):
        return StreamingFallbackTTS(
            chain, limits, policy, chunker=chunker, breaker=breaker, clock=clock, stats=stats
        )
    return FallbackTTS(chain, limits, policy, breaker=breaker, clock=clock, stats=stats)
