"""The TTS phrase cache stays off the audio's critical path, on both store backends.

Reads are time-boxed (a hung SQL tier never holds up first audio), writes
are write-behind (a stream ends without waiting for storage), audio is keyed
by the voice that produced it, and the SQL tier is purged by age and size.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text, update

from agent.phrase_cache import CachedTTS
from agent.tts import SpeechChunk
from store.models import TtsAudio, utcnow
from store.phrases import PhraseAudioCache, hot_key, phrase_hash
from store.repositories import PurgeResult, TtsAudioRepository
from store.settings import StoreSettings
from store.store import Store
from tests.backends import SERVER_BACKEND, drop_schema, empty_database, migrate, store_settings
from tests.proxy import TcpProxy


class ScriptedTTS:
    """Speaks ``len(text) * 100`` samples in two chunks; ``chunk_voices`` names who spoke."""

    def __init__(
        self, voice: str = "primary", chunk_voices: tuple[str, str] | None = None, rate: int = 22050
    ) -> None:
        self.voice = voice
        self.sample_rate = rate
        self.chunk_voices = chunk_voices or (voice, voice)
        self.calls = 0

    def audio(self, text: str) -> np.ndarray:
        return np.arange(len(text) * 100, dtype=np.int16)

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        self.calls += 1
        pcm = self.audio(text)
        half = pcm.size // 2
        for part, voice in zip((pcm[:half], pcm[half:]), self.chunk_voices, strict=True):
            yield SpeechChunk(part, self.sample_rate, voice)

    async def aclose(self) -> None:
        return None


class GatedRepository:
    """A real SQL tier whose reads and/or writes block until their gate opens."""

    def __init__(self, inner: TtsAudioRepository, *, gate_get: bool, gate_put: bool) -> None:
        self.inner = inner
        self.gate_get = gate_get
        self.gate_put = gate_put
        self.gate = asyncio.Event()
        self.get_entered = asyncio.Event()
        self.put_entered = asyncio.Event()
        self.gets_done = 0
        self.puts_done = 0

    async def get(self, voice: str, text_hash: str) -> tuple[int, bytes] | None:
        self.get_entered.set()
        if self.gate_get:
            await self.gate.wait()
        found = await self.inner.get(voice, text_hash)
        self.gets_done += 1
        return found

    async def put(self, voice: str, text_hash: str, sample_rate: int, audio: bytes) -> None:
        self.put_entered.set()
        if self.gate_put:
            await self.gate.wait()
        await self.inner.put(voice, text_hash, sample_rate, audio)
        self.puts_done += 1

    async def touch(self, text_hashes: list[str]) -> None:
        await self.inner.touch(text_hashes)

    async def purge(self, max_age_s: float, max_bytes: int) -> PurgeResult:
        return await self.inner.purge(max_age_s, max_bytes)


def _aware(value: dt.datetime | None) -> dt.datetime:
    """SQLite returns naive UTC datetimes."""
    assert value is not None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


async def test_phrase_cache_serves_the_same_audio(store: Store) -> None:
    store.phrases.read_budget_s = 5.0  # hits must not depend on the machine's load
    inner = ScriptedTTS()
    tts = CachedTTS(inner, store.phrases)
    first = [c async for c in tts.stream("Welcome back!")]
    again = [c async for c in tts.stream("Welcome back!")]
    assert inner.calls == 1 and tts.hits == 1
    assert np.array_equal(np.concatenate([c.pcm for c in first]), again[0].pcm)
    assert (again[0].sample_rate, again[0].voice) == (22050, "primary")
    long_text = "x" * 500
    _ = [c async for c in tts.stream(long_text)]
    _ = [c async for c in tts.stream(long_text)]
    assert inner.calls == 3  # long phrases are not cached
    assert await store.phrases.flush()
    assert store.phrases.stats.writes == 1  # written behind to the SQL tier


async def test_first_audio_never_waits_for_a_hung_sql_read(store: Store) -> None:
    repo = GatedRepository(TtsAudioRepository(store.db), gate_get=True, gate_put=False)
    cache = PhraseAudioCache(store.hot, repo, 60.0, read_budget_s=0.005)
    cache.start()
    inner = ScriptedTTS()
    tts = CachedTTS(inner, cache)
    try:
        stream = tts.stream("Hello there!")
        first = await anext(stream)
        # The first chunk is here, synthesized, while the lookup is still running ...
        assert inner.calls == 1 and first.voice == "primary"
        assert cache.inflight_lookups == 1 and repo.gets_done == 0
        await repo.get_entered.wait()  # ... and it goes on to block in the SQL read
        assert repo.gets_done == 0
        rest = [c async for c in stream]
        assert len(rest) == 1
        assert cache.stats.slow_lookups == 1 and cache.stats.misses == 1
        # A second caller asking for another phrase is not held up either.
        other = [c async for c in tts.stream("Goodbye!")]
        assert inner.calls == 2 and len(other) == 2 and repo.gets_done == 0
    finally:
        repo.gate.set()
        await cache.aclose()
    assert cache.inflight_lookups == 0


async def test_slow_sql_hit_warms_the_hot_tier_in_the_background(store: Store) -> None:
    real = TtsAudioRepository(store.db)
    digest = phrase_hash("primary", "One moment please.")
    await real.put("primary", digest, 16000, np.arange(800, dtype="<i2").tobytes())
    repo = GatedRepository(real, gate_get=True, gate_put=False)
    cache = PhraseAudioCache(store.hot, repo, 60.0, read_budget_s=0.005)
    cache.start()
    try:
        assert await cache.get("primary", "One moment please.") is None  # over budget: a miss
        assert repo.gets_done == 0
        repo.gate.set()
        assert await cache.settle()
        assert await store.hot.get(hot_key(digest)) is not None  # warmed by the late read
        cache.read_budget_s = 5.0  # the hit below must not depend on the machine's load
        found = await cache.get("primary", "one moment   PLEASE.")
        assert found is not None and found[0] == 16000
        assert np.array_equal(np.frombuffer(found[1], "<i2"), np.arange(800))
        assert cache.stats.hot_hits == 1 and repo.gets_done == 1
    finally:
        repo.gate.set()
        await cache.aclose()


async def test_lookups_in_flight_are_bounded(store: Store) -> None:
    repo = GatedRepository(TtsAudioRepository(store.db), gate_get=True, gate_put=False)
    cache = PhraseAudioCache(store.hot, repo, 60.0, read_budget_s=0.001, max_lookups=2)
    cache.start()
    try:
        for phrase in ("a one", "a two", "a three", "a one"):
            assert await cache.get("v", phrase) is None
        # two lookups hang; the third phrase is shed; the repeated one joins its lookup
        assert cache.inflight_lookups == 2
        assert cache.stats.lookups_shed == 1 and cache.stats.slow_lookups == 3
    finally:
        repo.gate.set()
        await cache.aclose()


async def test_stream_ends_without_waiting_for_the_sql_write(store: Store) -> None:
    real = TtsAudioRepository(store.db)
    repo = GatedRepository(real, gate_get=False, gate_put=True)
    cache = PhraseAudioCache(store.hot, repo, 60.0)
    cache.start()
    inner = ScriptedTTS()
    tts = CachedTTS(inner, cache)
    try:
        first = [c async for c in tts.stream("Sure, playing it now.")]
        await repo.put_entered.wait()
        # The stream is over while its audio is still being written to SQL ...
        assert repo.puts_done == 0 and cache.pending_writes == 1
        # ... and the queued phrase already answers the next caller.
        again = [c async for c in tts.stream("Sure, playing it now.")]
        assert inner.calls == 1 and tts.hits == 1
        assert np.array_equal(np.concatenate([c.pcm for c in first]), again[0].pcm)
        repo.gate.set()
        assert await cache.flush()
        stored = await real.get("primary", phrase_hash("primary", "Sure, playing it now."))
        assert stored is not None and stored[0] == 22050
    finally:
        repo.gate.set()
        await cache.aclose()


async def test_full_write_queue_drops_new_phrases_and_close_drains(store: Store) -> None:
    real = TtsAudioRepository(store.db)
    repo = GatedRepository(real, gate_get=False, gate_put=True)
    cache = PhraseAudioCache(store.hot, repo, 60.0, max_pending_writes=2)
    cache.start()
    try:
        for i in range(3):
            await cache.put("v", f"phrase {i}", 16000, bytes(100))
        assert cache.stats.writes_dropped == 1 and cache.pending_writes == 2
        repo.gate.set()
    finally:
        await cache.aclose()  # drains what is queued
    assert cache.stats.writes == 2 and cache.pending_writes == 0
    for i, kept in enumerate((True, True, False)):
        assert (await real.get("v", phrase_hash("v", f"phrase {i}")) is not None) is kept


async def test_fallback_audio_is_cached_under_the_voice_that_spoke(store: Store) -> None:
    store.phrases.read_budget_s = 5.0  # hits must not depend on the machine's load
    inner = ScriptedTTS(voice="primary", chunk_voices=("backup", "backup"), rate=16000)
    tts = CachedTTS(inner, store.phrases)
    _ = [c async for c in tts.stream("How can I help?")]
    assert await store.phrases.flush()
    assert await store.phrases.get("primary", "How can I help?") is None
    found = await store.phrases.get("backup", "How can I help?")
    assert found is not None and found[0] == 16000
    _ = [c async for c in tts.stream("How can I help?")]
    assert inner.calls == 2  # the primary voice is never served the backup's audio

    mixed = ScriptedTTS(voice="primary", chunk_voices=("primary", "backup"))
    mixed_tts = CachedTTS(mixed, store.phrases)
    _ = [c async for c in mixed_tts.stream("Half and half.")]
    assert await store.phrases.flush()
    assert mixed_tts.uncacheable == 1
    for voice in ("primary", "backup"):
        assert await store.phrases.get(voice, "Half and half.") is None


async def test_cached_audio_keeps_its_own_rate(store: Store) -> None:
    store.phrases.read_budget_s = 5.0  # hits must not depend on the machine's load
    await store.phrases.put("primary", "Hi!", 24000, np.ones(240, dtype="<i2").tobytes())
    inner = ScriptedTTS(voice="primary", rate=22050)
    chunks = [c async for c in CachedTTS(inner, store.phrases).stream("Hi!")]
    assert inner.calls == 0
    assert [(c.sample_rate, c.voice, c.pcm.size) for c in chunks] == [(24000, "primary", 240)]


async def test_interrupted_stream_is_not_cached(store: Store) -> None:
    inner = ScriptedTTS()
    tts = CachedTTS(inner, store.phrases)
    stream = tts.stream("Let me tell you a story.")
    _ = await anext(stream)
    await stream.aclose()  # barge-in after the first chunk
    assert await store.phrases.flush()
    assert store.phrases.pending_writes == 0
    assert await store.phrases.get("primary", "Let me tell you a story.") is None


async def test_purge_removes_old_then_least_recently_used_rows(store: Store) -> None:
    repo = TtsAudioRepository(store.db)
    now = utcnow()
    ages_days = {"old": 40, "a": 3, "b": 2, "c": 1}  # last use, days ago
    for name, days in ages_days.items():
        await repo.put("v", name, 16000, bytes(1000))
        async with store.db.begin() as db:
            await db.execute(
                update(TtsAudio)
                .where(TtsAudio.text_hash == name)
                .values(last_used_at=now - dt.timedelta(days=days))
            )
    await repo.touch(["a"])  # "a" was just used: now the most recent
    assert await repo.total_bytes() == 4000
    result = await repo.purge(max_age_s=30 * 24 * 3600, max_bytes=2500)
    assert (result.expired, result.over_size) == (1, 1)
    async with store.db() as db:
        left = sorted(await db.scalars(select(TtsAudio.text_hash)))
    assert left == ["a", "c"]  # "old" aged out, then "b", the least recently used
    assert await repo.total_bytes() == 2000
    assert (await repo.purge(30 * 24 * 3600, 2500)).total == 0


async def test_store_purges_phrase_audio_by_its_settings(settings: StoreSettings) -> None:
    settings = settings.model_copy(
        update={"tts_cache_max_age_s": 3600, "tts_cache_max_bytes": 1024 * 1024}
    )
    store = await Store.open(settings)
    try:
        repo = TtsAudioRepository(store.db)
        for name in ("stale", "big1", "big2"):
            await repo.put("v", name, 16000, bytes(600 * 1024))
        async with store.db.begin() as db:
            await db.execute(
                update(TtsAudio)
                .where(TtsAudio.text_hash == "stale")
                .values(last_used_at=utcnow() - dt.timedelta(hours=2))
            )
        assert await store.purge() == 2  # the stale row, then big1 to get under 1 MiB
        assert store.phrases.stats.purged == 2 and store.stats()["tts_cache_purged"] == 2
        async with store.db() as db:
            assert list(await db.scalars(select(TtsAudio.text_hash))) == ["big2"]
    finally:
        await store.close()


async def test_migration_backfills_phrase_sizes(backend: str, tmp_path: Path) -> None:
    settings = store_settings(backend, tmp_path / "m")
    engine = await empty_database(settings)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0001")
            await conn.execute(
                text(
                    "INSERT INTO tts_audio (voice, text_hash, sample_rate, audio, created_at,"
                    " last_used_at) VALUES ('v', 'h', 16000, :audio, :now, :now)"
                ),
                {"audio": bytes(1234), "now": utcnow()},
            )
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "head")
            size = await conn.scalar(text("SELECT size_bytes FROM tts_audio"))
        assert size == 1234
    finally:
        await engine.dispose()
        await drop_schema(settings)


async def test_stalled_database_never_holds_up_audio(backend: str, tmp_path: Path) -> None:
    if backend != SERVER_BACKEND:
        pytest.skip("an embedded SQLite file cannot hang on the network")
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    settings = store_settings(backend, tmp_path / "d", pg_port=proxy.port)
    store = await Store.open(settings)
    try:
        await store.phrases.put("primary", "Welcome back!", 22050, bytes(4410))
        assert await store.phrases.flush()
        await store.hot.delete(hot_key(phrase_hash("primary", "Welcome back!")))
        proxy.stall()
        inner = ScriptedTTS()
        tts = CachedTTS(inner, store.phrases)
        stream = tts.stream("Welcome back!")
        _ = await anext(stream)
        # Synthesized audio flows while the SQL read waits on the stalled database.
        assert inner.calls == 1 and store.phrases.inflight_lookups == 1
        _ = [c async for c in stream]
        assert store.phrases.pending_writes == 1  # its write waits too, off the stream
        proxy.restore()
        assert await store.phrases.flush(30)
        assert await store.phrases.settle(30)
    finally:
        proxy.restore()
        await store.close()
        await drop_schema(settings)
        await proxy.close()


async def test_served_phrases_are_marked_used_in_batches(store: Store) -> None:
    repo = TtsAudioRepository(store.db)
    digest = phrase_hash("v", "Thanks!")
    await repo.put("v", digest, 16000, bytes(320))
    long_ago = utcnow() - dt.timedelta(days=20)
    await repo.touch([digest], at=long_ago)
    cache = PhraseAudioCache(store.hot, repo, 60.0, read_budget_s=5.0, touch_interval_s=3600)
    cache.start()
    try:
        assert await cache.get("v", "Thanks!") is not None  # SQL hit, warms the hot tier
        assert await cache.get("v", "Thanks!") is not None  # hot hit
        async with store.db() as db:  # not yet written: uses are batched
            last = await db.scalar(select(TtsAudio.last_used_at))
        assert _aware(last) < utcnow() - dt.timedelta(days=19)
    finally:
        await cache.aclose()  # flushes the batch
    async with store.db() as db:
        last = await db.scalar(select(TtsAudio.last_used_at))
    assert _aware(last) > utcnow() - dt.timedelta(hours=1)


async def test_embedded_phrase_audio_never_evicts_session_contexts(tmp_path: Path) -> None:
    """In-process, phrases have their own LRU: audio floods it, contexts stay."""
    settings = StoreSettings(
        PARLEY_DATA_DIR=tmp_path,
        PARLEY_HOT_CACHE_BYTES=1024 * 1024,
        PARLEY_TTS_CACHE_READ_BUDGET_MS=0,
    )
    store = await Store.open(settings)
    try:
        assert store.phrase_hot is not store.hot
        await store.state.save("ses_ctx", [{"role": "user", "content": "hello"}])
        audio = bytes(200 * 1024)  # ~6 s of 16 kHz PCM a phrase
        for i in range(20):
            await store.phrases.put("joe", f"phrase number {i}", 16000, audio)
        assert await store.phrases.flush()
        assert await store.state.load("ses_ctx") == [{"role": "user", "content": "hello"}]
        # the newest phrase answers from memory even with no time budget at all
        assert await store.phrases.get("joe", "phrase number 19") == (16000, audio)
        assert store.phrases.stats.hot_hits == 1
    finally:
        await store.close()
