"""TTS phrase cache: synthesized audio by (voice, text), hot tier first, then SQL."""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy.exc import SQLAlchemyError

from store.cache import HotCache
from store.repositories import TtsAudioRepository

log = logging.getLogger(__name__)


def phrase_hash(voice: str, text: str) -> str:
    """Stable hash of a phrase (whitespace and case normalised) for one voice."""
    canonical = " ".join(text.split()).casefold()
    return hashlib.sha256(f"{voice}\n{canonical}".encode()).hexdigest()


class PhraseAudioCache:
    """Implements the agent's ``PhraseCache`` protocol over the store's tiers.

    Values are ``(sample_rate, int16 little-endian PCM bytes)``.
    """

    def __init__(self, hot: HotCache, sql: TtsAudioRepository, ttl_s: float) -> None:
        self._hot = hot
        self._sql = sql
        self._ttl_s = ttl_s

    async def get(self, voice: str, text: str) -> tuple[int, bytes] | None:
        """Cached audio of a phrase, or None."""
        digest = phrase_hash(voice, text)
        hot = await self._hot.get(f"tts:{digest}")
        if hot is not None and len(hot) >= 4:
            return int.from_bytes(hot[:4], "little"), hot[4:]
        try:
            stored = await self._sql.get(voice, digest)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("TTS cache SQL tier unavailable: %s", type(exc).__name__)
            return None
        if stored is not None:
            rate, audio = stored
            await self._hot.set(f"tts:{digest}", rate.to_bytes(4, "little") + audio, self._ttl_s)
        return stored

    async def put(self, voice: str, text: str, sample_rate: int, audio: bytes) -> None:
        """Remember a phrase's audio in both tiers (best effort)."""
        digest = phrase_hash(voice, text)
        await self._hot.set(f"tts:{digest}", sample_rate.to_bytes(4, "little") + audio, self._ttl_s)
        try:
            await self._sql.put(voice, digest, sample_rate, audio)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("TTS cache SQL tier unavailable: %s", type(exc).__name__)
