"""TTS phrase caching: a TTS wrapper that serves phrases it synthesized before.

Fixed phrases (greetings, confirmations, short answers) come back from the
cache at once instead of waiting for synthesis. The cache itself is injected
(the store implements ``PhraseCache``; the agent never imports the store).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

import numpy as np

from agent.tts import TTS
from media.frames import PCM


@runtime_checkable
class PhraseCache(Protocol):
    """Audio of phrases by voice and text: ``(sample_rate, int16 LE PCM bytes)``."""

    async def get(self, voice: str, text: str) -> tuple[int, bytes] | None:
        """Cached audio, or None."""
        ...

    async def put(self, voice: str, text: str, sample_rate: int, audio: bytes) -> None:
        """Remember a phrase's audio."""
        ...


class CachedTTS:
    """Implements ``agent.tts.TTS`` over another TTS plus a ``PhraseCache``.

    Only phrases up to ``max_chars`` are cached (long LLM sentences rarely
    repeat and would only fill the cache).
    """

    def __init__(self, inner: TTS, cache: PhraseCache, max_chars: int = 160) -> None:
        self.inner = inner
        self.cache = cache
        self.max_chars = max_chars
        self.sample_rate: int = inner.sample_rate
        self.voice: str = inner.voice
        self.hits = 0
        self.misses = 0

    async def stream(self, text: str) -> AsyncGenerator[PCM, None]:
        """Cached audio in one chunk, or the inner TTS's chunks (then cached)."""
        cacheable = 0 < len(text.strip()) <= self.max_chars
        if cacheable:
            cached = await self.cache.get(self.voice, text)
            if cached is not None and cached[0] == self.sample_rate:
                self.hits += 1
                yield np.frombuffer(cached[1], dtype="<i2").astype(np.int16)
                return
            self.misses += 1
        parts: list[PCM] = []
        async for pcm in self.inner.stream(text):
            parts.append(pcm)
            yield pcm
        if cacheable and parts:
            audio = np.concatenate(parts).astype("<i2").tobytes()
            await self.cache.put(self.voice, text, self.sample_rate, audio)
