"""TTS phrase cache: time to first audio, synthesized vs served from each cache tier.

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


async def first_audio_ms(tts: CachedTTS, text: str) -> float:
    """Milliseconds until the first PCM chunk of ``text`` (the stream is consumed whole)."""
    t0 = time.perf_counter()
    first: float | None = None
    async for _ in tts.stream(text):
        first = first or time.perf_counter()
    return ((first or time.perf_counter()) - t0) * 1000


async def main_async() -> dict[str, object]:
    """Cold (synthesis), hot-tier and SQL-tier first-audio times."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = StoreSettings(PARLEY_DATA_DIR=Path(tmp))
        store = await Store.open(settings)
        piper = PiperTTS()
        tts = CachedTTS(piper, store.phrases)
        try:
            async for _ in piper.stream("Warm up."):
                pass
            cold = [await first_audio_ms(tts, p) for p in PHRASES]
            await asyncio.sleep(0.1)
            hot = [await first_audio_ms(tts, p) for p in PHRASES]
            for p in PHRASES:  # empty the hot tier: the next lookups hit SQL
                from store.phrases import phrase_hash

                await store.hot.delete(f"tts:{phrase_hash(tts.voice, p)}")
            sql = [await first_audio_ms(tts, p) for p in PHRASES]
        finally:
            piper.close()
            await store.close()
    return {
        "backend": store.describe(),
        "phrases": len(PHRASES),
        "first_audio_ms_median": {
            "synthesized": round(statistics.median(cold), 2),
            "hot_tier": round(statistics.median(hot), 3),
            "sql_tier": round(statistics.median(sql), 2),
        },
        "speedup_hot": round(statistics.median(cold) / statistics.median(hot), 1),
    }


def main() -> None:
    """Entry point: print a table and the JSON."""
    result = asyncio.run(main_async())
    med = result["first_audio_ms_median"]
    assert isinstance(med, dict)
    for k, v in med.items():
        print(f"{k:<14} {v:>10} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
