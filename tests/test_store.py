"""The store on both backends: PostgreSQL + Redis, and SQLite + the in-process cache."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from store.cache import MemoryCache, RedisCache
from store.keys import normalize_key
from store.repositories import TurnRecord
from store.settings import StoreSettings
from store.store import Store
from tests.backends import SERVER_BACKEND, drop_schema, empty_database, migrate, store_settings
from tests.proxy import TcpProxy


def test_key_normalization() -> None:
    assert normalize_key("Play ShaPE _oF-You") == normalize_key("play shape of you song")
    assert normalize_key("Could you play Beyoncé, please?") == "play beyonce"
    assert normalize_key("  PLAY   the   Wall!! ") == "play the wall"
    assert normalize_key("Play Shape of You") != normalize_key("Play Shape of Me")


async def test_turns_roundtrip_with_interruption(store: Store, backend: str) -> None:
    assert store.describe()["sql"] == ("postgresql" if backend == SERVER_BACKEND else "sqlite")
    await store.sessions.create("ses_a", "webrtc")
    w = store.writer
    w.submit(TurnRecord("ses_a", "turn_1", "user", "What is the capital?", stt_confidence=0.8))
    w.submit(
        TurnRecord(
            "ses_a",
            "turn_1",
            "assistant",
            "Paris is the capital of France.",
            heard_text="Paris is the",
            interrupted=True,
            latencies={"voice_to_voice_ms": 812.0},
        )
    )
    w.submit(TurnRecord("ses_a", "turn_2", "user", "Thanks", stt_confidence=0.6))
    w.submit(TurnRecord("ses_a", "turn_2", "user", "Thanks", stt_confidence=0.6))  # re-delivery
    assert await w.flush()
    turns = await store.sessions.turns("ses_a")
    assert [(t.seq, t.role, t.interrupted) for t in turns] == [
        (1, "user", False),
        (2, "assistant", True),
        (3, "user", False),
    ]
    assert turns[1].heard_text == "Paris is the"
    assert turns[1].latencies == {"voice_to_voice_ms": 812.0}
    row = await store.sessions.get("ses_a")
    assert row is not None and row.turn_count == 2
    assert row.avg_stt_confidence == pytest.approx(0.7)
    await store.sessions.end("ses_a")
    row = await store.sessions.get("ses_a")
    assert row is not None and row.status == "ended" and row.ended_at is not None
    assert await store.sessions.delete("ses_a")
    assert await store.sessions.turns("ses_a") == []


async def test_tiered_cache_tiers_and_normalized_keys(store: Store) -> None:
    calls = 0

    async def source() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"uri": "track:42"}

    cache = store.cache
    assert await cache.get_or_load("music", "Play ShaPE _oF-You", source) == {"uri": "track:42"}
    assert await cache.get_or_load("music", "play shape of you song", source) == {"uri": "track:42"}
    assert calls == 1 and cache.stats.hot_hits == 1
    # the hot tier loses the key: the SQL tier answers and refills it
    await store.hot.delete(cache.key("music", "play shape of you"))
    assert await cache.get("music", "PLAY shape of you") == {"uri": "track:42"}
    assert cache.stats.sql_hits == 1
    assert await cache.get("music", "play shape of you") == {"uri": "track:42"}
    assert cache.stats.hot_hits == 2 and calls == 1
    assert await cache.get("music", "something else") is None


async def test_hot_tier_ttl(store: Store) -> None:
    await store.hot.set("ttl-key", b"v", 0.2)
    assert await store.hot.get("ttl-key") == b"v"
    await asyncio.sleep(0.35)
    assert await store.hot.get("ttl-key") is None


def test_memory_cache_is_a_bounded_lru() -> None:
    async def run() -> None:
        lru = MemoryCache(max_entries=3)
        for k in "abc":
            await lru.set(k, k.encode(), None)
        assert await lru.get("a") == b"a"  # a is now most recent
        await lru.set("d", b"d", None)
        assert await lru.get("b") is None and len(lru) == 3

    asyncio.run(run())


def test_memory_cache_is_bounded_in_bytes() -> None:
    async def run() -> None:
        lru = MemoryCache(max_entries=100, max_bytes=1000)
        for k in "abc":  # 3 x (1 + 300) bytes
            await lru.set(k, bytes(300), None)
        assert lru.nbytes == 903 and len(lru) == 3
        assert await lru.get("a") is not None  # a is now the most recent
        await lru.set("d", bytes(300), None)  # 1204 > 1000: b, the least recent, goes
        assert await lru.get("b") is None
        assert [k for k in "acd" if await lru.get(k) is not None] == ["a", "c", "d"]
        assert lru.nbytes == 903
        await lru.set("c", bytes(10), None)  # replacing a value frees its old bytes
        assert lru.nbytes == 1 + 300 + 1 + 10 + 1 + 300
        await lru.set("huge", bytes(2000), None)  # larger than the whole bound: not stored
        assert await lru.get("huge") is None and len(lru) == 3
        await lru.delete("a")
        assert lru.nbytes == 312 and lru.evictions == 2

    asyncio.run(run())


async def test_store_settings_bound_the_hot_tier_in_bytes(tmp_path: Path) -> None:
    settings = StoreSettings(
        PARLEY_DATA_DIR=tmp_path,
        DATABASE_URL=None,
        REDIS_URL=None,
        PARLEY_HOT_CACHE_BYTES=2 * 1024 * 1024,
    )
    store = await Store.open(settings)
    try:
        assert isinstance(store.hot, MemoryCache)
        assert store.hot.max_bytes == 2 * 1024 * 1024
        for i in range(12):  # 12 x 200 KB of "PCM": only 10 fit in 2 MiB
            await store.hot.set(f"tts:{i}", bytes(200_000), None)
        assert store.hot.nbytes <= 2 * 1024 * 1024 and len(store.hot) == 10
        assert await store.hot.get("tts:0") is None and await store.hot.get("tts:11") is not None
    finally:
        await store.close()


async def test_context_with_tool_calls_passes_through_unchanged(store: Store) -> None:
    context: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Wie wird das Wetter in Zürich? ☀", "interrupted": False},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Zürich"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": {"temp_c": 21.5, "sky": ["sun", None], "alerts": [], "ok": True},
        },
        {"role": "assistant", "content": "21 degrees and sunny.", "interrupted": True},
    ]
    store.writer.save_context("ses_tools", context)
    assert await store.writer.flush()
    assert await store.state.load("ses_tools") == context


async def test_session_resumes_in_a_second_instance(settings: StoreSettings, backend: str) -> None:
    first = await Store.open(settings)
    await first.sessions.create("ses_r", "websocket")
    first.writer.submit(TurnRecord("ses_r", "t1", "user", "My name is Ada."))
    first.writer.submit(
        TurnRecord(
            "ses_r",
            "t1",
            "assistant",
            "Hello Ada, nice to meet you.",
            heard_text="Hello Ada",
            interrupted=True,
        )
    )
    context = [
        {"role": "user", "content": "My name is Ada.", "interrupted": False},
        {"role": "assistant", "content": "Hello Ada", "interrupted": True},
    ]
    first.writer.save_context("ses_r", context)
    assert await first.writer.flush()
    await first.close()
    second = await Store.open(settings)
    try:
        # Redis shares the hot context; without Redis it is rebuilt from SQL turns.
        assert await second.state.load("ses_r") == context
    finally:
        await second.close()


async def test_redis_outage_degrades_to_sql(backend: str, tmp_path: Path) -> None:
    if backend != SERVER_BACKEND:
        pytest.skip("the embedded in-process cache cannot go away")
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    settings = store_settings(backend, tmp_path / "d", redis_port=proxy.port)
    store = await Store.open(settings)
    try:
        assert isinstance(store.hot, RedisCache)
        await store.cache.put("music", "play abba", {"uri": "abba"})
        proxy.cut()
        t0 = time.monotonic()
        assert await store.cache.get("music", "Play ABBA!") == {"uri": "abba"}  # from SQL
        assert time.monotonic() - t0 < 3.0
        assert store.cache.stats.sql_hits == 1 and store.hot.errors > 0
        await store.cache.put("music", "play queen", {"uri": "queen"})  # SQL still takes writes
        proxy.restore()
        assert await store.cache.get("music", "play queen") == {"uri": "queen"}
        assert await store.hot.get(store.cache.key("music", "play queen")) is not None
    finally:
        proxy.restore()
        await store.close()
        await drop_schema(settings)
        await proxy.close()


async def test_database_outage_loses_no_turn(backend: str, tmp_path: Path) -> None:
    if backend != SERVER_BACKEND:
        pytest.skip("an embedded SQLite file cannot go away")
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    settings = store_settings(backend, tmp_path / "d", pg_port=proxy.port)
    store = await Store.open(settings)
    try:
        await store.sessions.create("ses_d", "webrtc")
        proxy.cut()
        for i in range(5):
            assert store.writer.submit(TurnRecord("ses_d", f"t{i}", "user", f"words {i}"))
        assert not await store.writer.flush(1.5)  # the database is away: nothing applied
        assert store.writer.pending == 5 and store.writer.retries > 0
        proxy.restore()
        assert await store.writer.flush(30)
        turns = await store.sessions.turns("ses_d")
        assert [t.text for t in turns] == [f"words {i}" for i in range(5)]
    finally:
        proxy.restore()
        await store.close()
        await drop_schema(settings)
        await proxy.close()


async def test_interaction_log_is_written(store: Store) -> None:
    from sqlalchemy import select

    from store.models import InteractionLog
    from store.writer import InteractionLogged

    await store.sessions.create("ses_i", "text")
    store.writer.submit(InteractionLogged("ses_i", "play abba", "Playing ABBA now.", "reply"))
    assert await store.writer.flush()
    async with store.db() as db:
        rows = list(await db.scalars(select(InteractionLog)))
    assert [(r.user_input, r.raw_llm_output, r.final_action) for r in rows] == [
        ("play abba", "Playing ABBA now.", "reply")
    ]


USAGE = {
    "stt_provider": "groq",
    "stt_model": "whisper-large-v3-turbo",
    "stt_audio_s": 2.5,
    "llm_provider": "groq",
    "llm_model": "llama-3.3-70b-versatile",
    "prompt_tokens": 412,
    "completion_tokens": 23,
    "tts_provider": "local",
    "tts_voice": "piper:en_US-joe-medium",
    "tts_chars": 96,
    "chains": {"llm": "groq,local", "stt": "groq,local"},
    "cost_usd": 0.000279,
    "cost_by_stage": {"stt": 0.000111, "llm": 0.000168, "tts": 0.0},
}


async def test_turn_usage_roundtrip(store: Store) -> None:
    await store.sessions.create("ses_u", "webrtc")
    w = store.writer
    w.submit(TurnRecord("ses_u", "t1", "user", "book a table", stt_confidence=0.9))
    w.submit(TurnRecord("ses_u", "t1", "assistant", "For how many?", usage=USAGE))
    w.submit(TurnRecord("ses_u", "t2", "user", "four"))
    w.submit(TurnRecord("ses_u", "t2", "assistant", "Done.", usage={**USAGE, "cost_usd": None}))
    w.submit(TurnRecord("ses_u", "t3", "assistant", "Anything else?"))  # recorded without usage
    assert await w.flush()
    turns = await store.sessions.turns("ses_u")
    assert [(t.role, t.usage) for t in turns] == [
        ("user", None),
        ("assistant", USAGE),
        ("user", None),
        ("assistant", {**USAGE, "cost_usd": None}),
        ("assistant", None),
    ]
    assert await store.sessions.usages("ses_u") == [USAGE, {**USAGE, "cost_usd": None}]
    assert await store.sessions.usages("ses_none") == []


async def test_turn_usage_migration_upgrades_and_downgrades(backend: str, tmp_path: Path) -> None:
    from sqlalchemy import Connection, inspect, text
    from sqlalchemy.exc import IntegrityError

    settings = store_settings(backend, tmp_path / "m")
    engine = await empty_database(settings)

    def turn_columns(conn: Connection) -> set[str]:
        return {c["name"] for c in inspect(conn).get_columns("turns")}

    insert_turn = text(
        "INSERT INTO turns (session_id, seq, turn_id, role, text, interrupted, started_at)"
        " VALUES ('ses_m', :seq, :turn, 'assistant', 'hello', false, CURRENT_TIMESTAMP)"
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0003")
            assert "usage" not in await conn.run_sync(turn_columns)
            await conn.execute(
                text(
                    "INSERT INTO voice_sessions (id, transport, status, language, started_at,"
                    " turn_count, error_count) VALUES"
                    " ('ses_m', 'sip', 'active', 'en', CURRENT_TIMESTAMP, 0, 0)"
                )
            )
            await conn.execute(insert_turn, {"seq": 1, "turn": "t1"})
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0004")
            assert "usage" in await conn.run_sync(turn_columns)
            assert await conn.scalar(text("SELECT usage FROM turns")) is None  # old rows: none
            await conn.execute(insert_turn, {"seq": 2, "turn": "t2"})
            await conn.execute(
                text("UPDATE turns SET usage = :usage WHERE seq = 2"),
                {"usage": '{"llm_provider": "groq", "cost_usd": 0.5}'},
            )
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0003", True)
            assert "usage" not in await conn.run_sync(turn_columns)
            # the turns (and their constraints) survive the downgrade
            assert (await conn.execute(text("SELECT seq FROM turns ORDER BY seq"))).all() == [
                (1,),
                (2,),
            ]
            with pytest.raises(IntegrityError):
                async with conn.begin_nested():
                    await conn.execute(insert_turn, {"seq": 2, "turn": "t3"})
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "head")
            assert "usage" in await conn.run_sync(turn_columns)
    finally:
        await engine.dispose()
        await drop_schema(settings)
