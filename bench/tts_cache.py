"""TTS phrase cache: time to first audio, synthesized vs served from each cache tier.

Also measures the two cases the cache must never make slower than synthesis
alone: the SQL tier hanging (every read blocks) and the write-behind of new
phrases (the stream must end without waiting for storage).

Run: ``.venv/bin/python -m bench.tts_cache`` (embedded store in a temp dir;
set DATABASE_URL / REDIS_URL to measure the server tiers instead).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from agent.phrase_cache import CachedTTS
from agent.providers.piper import PiperTTS
from store.phrases import PhraseAudioCache, hot_key, phrase_hash
from store.repositories import PurgeResult
from store.settings import StoreSettings
from store.store import Store

PHRASES = [
    "Hello! How can I help you today?",
    "Sorry, I did not catch that. Could you say it again?",
    "One moment please.",
    "Sure, playing it now.",
    "Goodbye, and have a nice day!",
    "I have added that to your playlist.",
]


class HungRepository:
    """A SQL tier whose every call blocks until released (a database that hangs)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def get(self, voice: str, text_hash: str) -> tuple[int, bytes] | None:
        """Blocks until released; then a miss."""
        await self.release.wait()
        return None

    async def put(self, voice: str, text_hash: str, sample_rate: int, audio: bytes) -> None:
        """Blocks until released."""
        await self.release.wait()

    async def touch(self, text_hashes: list[str]) -> None:
        """Blocks until released."""
        await self.release.wait()

    async def purge(self, max_age_s: float, max_bytes: int) -> PurgeResult:
        """Nothing to purge."""
        return PurgeResult()


async def first_audio_ms(tts: CachedTTS, text: str) -> tuple[float, float]:
    """Milliseconds until the first chunk of ``text`` and until the stream ended."""
    t0 = time.perf_counter()
    first: float | None = None
    async for _ in tts.stream(text):
        first = first or time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - t0) * 1000, (end - t0) * 1000


async def main_async() -> dict[str, object]:
    """First-audio times: synthesized, hot tier, SQL tier, SQL tier hung."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = StoreSettings(PARLEY_DATA_DIR=Path(tmp))
        store = await Store.open(settings)
        piper = PiperTTS()
        tts = CachedTTS(piper, store.phrases)
        try:
            async for _ in piper.stream("Warm up."):
                pass
            cold = [await first_audio_ms(tts, p) for p in PHRASES]
            await store.phrases.flush()
            hot = [await first_audio_ms(tts, p) for p in PHRASES]
            for p in PHRASES:  # empty the hot tier: the next lookups hit SQL
                await store.hot.delete(hot_key(phrase_hash(tts.voice, p)))
            sql = [await first_audio_ms(tts, p) for p in PHRASES]

            hung_repo = HungRepository()
            hung_cache = PhraseAudioCache(store.hot, hung_repo, 60.0)
            hung_cache.start()
            hung_tts = CachedTTS(piper, hung_cache)
            try:
                hung = [await first_audio_ms(hung_tts, p + " Again.") for p in PHRASES]
            finally:
                hung_repo.release.set()
                await hung_cache.aclose()
        finally:
            await piper.aclose()
            await store.close()

    def med(samples: list[tuple[float, float]], which: int = 0) -> float:
        return round(statistics.median(s[which] for s in samples), 3)

    return {
        "backend": store.describe(),
        "phrases": len(PHRASES),
        "first_audio_ms_median": {
            "synthesized": med(cold),
            "hot_tier": med(hot),
            "sql_tier": med(sql),
            "sql_hung_synthesized": med(hung),
        },
        "stream_end_ms_median": {"synthesized": med(cold, 1), "sql_hung": med(hung, 1)},
        "speedup_hot": round(med(cold) / max(med(hot), 1e-3), 1),
    }


def main() -> None:
    """Entry point: print a table and the JSON."""
    result = asyncio.run(main_async())
    for section in ("first_audio_ms_median", "stream_end_ms_median"):
        values = result[section]
        assert isinstance(values, dict)
        print(section)
        for k, v in values.items():
            print(f"  {k:<22} {v:>10} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
