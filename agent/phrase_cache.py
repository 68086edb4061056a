"""TTS phrase caching: a TTS wrapper that serves phrases it synthesized before.

Fixed phrases (greetings, confirmations, short answers) come back from the
cache at once instead of waiting for synthesis. The cache itself is injected
(the store implements ``PhraseCache``; the agent never imports the store).

Audio is cached under the voice that actually produced it, read from the
chunks: when a fallback voice spoke, its audio is stored under the fallback's
name, never under the primary's, and an utterance whose chunks came from
more than one voice or at more than one rate is not cached at all.

Over a TTS that takes streamed text (``StreamingTTS``), ``cached_tts`` gives
a wrapper that also streams: replies the LLM writes go to the inner input
stream untouched (they are not cached), canned phrases through ``stream``
and the cache. Cached audio is served with provider ``"cache"`` (no vendor
was paid for it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Protocol, runtime_checkable

import numpy as np

from agent.tts import TTS, SpeechChunk, StreamingTTS, TTSInputStream

CACHE_PROVIDER = "cache"
"""The provider of audio served from the cache."""


@runtime_checkable
class PhraseCache(Protocol):
    """Audio of phrases by voice and text: ``(sample_rate, int16 LE PCM bytes)``.

    Both calls are on the audio's critical path, so an implementation must
    answer ``get`` within a few milliseconds (a slow lookup is a miss) and
    must not wait for storage in ``put`` (write-behind).
    """

    async def get(self, voice: str, text: str) -> tuple[int, bytes] | None:
        """Cached audio, or None."""
        ...

    async def put(self, voice: str, text: str, sample_rate: int, audio: bytes) -> None:
        """Remember a phrase's audio."""
        ...


class CachedTTS:
    """Implements ``agent.tts.TTS`` over another TTS plus a ``PhraseCache``.

    Only phrases up to ``max_chars`` are cached (long LLM sentences rarely
    repeat and would only fill the cache). Lookups use the inner TTS's
    default voice; an utterance interrupted before its end is not cached.
    """

    def __init__(self, inner: TTS, cache: PhraseCache, max_chars: int = 160) -> None:
        self.inner = inner
        self.cache = cache
        self.max_chars = max_chars
        self.sample_rate: int = inner.sample_rate
        self.voice: str = inner.voice
        self.hits = 0
        self.misses = 0
        self.uncacheable = 0
        """Utterances not cached because their chunks mixed voices or rates."""

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        """Cached audio in one chunk, or the inner TTS's chunks (then cached)."""
        cacheable = 0 < len(text.strip()) <= self.max_chars
        if cacheable:
            cached = await self.cache.get(self.voice, text)
            if cached is not None and len(cached[1]) >= 2:
                rate, audio = cached
                self.hits += 1
                pcm = np.frombuffer(audio, dtype="<i2", count=len(audio) // 2).astype(np.int16)
                yield SpeechChunk(pcm, rate, self.voice, CACHE_PROVIDER)
                return
            self.misses += 1
        chunks: list[SpeechChunk] = []
        async with aclosing(self.inner.stream(text)) as inner_chunks:
            async for chunk in inner_chunks:
                if cacheable:
                    chunks.append(chunk)
                yield chunk
        if chunks:
            await self._remember(text, chunks)

    async def _remember(self, text: str, chunks: list[SpeechChunk]) -> None:
        voices = {c.voice for c in chunks}
        rates = {c.sample_rate for c in chunks}
        if len(voices) != 1 or len(rates) != 1:
            self.uncacheable += 1
            return
        audio = np.concatenate([c.pcm for c in chunks]).astype("<i2").tobytes()
        await self.cache.put(chunks[0].voice, text, chunks[0].sample_rate, audio)

    async def aclose(self) -> None:
        """Close the inner TTS (the cache belongs to whoever injected it)."""
        await self.inner.aclose()


class CachedStreamingTTS(CachedTTS):
    """``CachedTTS`` over a ``StreamingTTS``: input streams pass through uncached."""

    def __init__(self, inner: StreamingTTS, cache: PhraseCache, max_chars: int = 160) -> None:
        super().__init__(inner, cache, max_chars)
        self._streaming = inner

    def open_stream(self) -> TTSInputStream:
        """The inner TTS's input stream (LLM replies are not cached)."""
        return self._streaming.open_stream()


def cached_tts(inner: TTS, cache: PhraseCache, max_chars: int = 160) -> CachedTTS:
    """The phrase cache over ``inner``, streaming text in when ``inner`` does."""
    if isinstance(inner, StreamingTTS):
        return CachedStreamingTTS(inner, cache, max_chars)
    return CachedTTS(inner, cache, max_chars)
