"""Retention on both backends (issue 14): unused anonymous sessions expire, and with
``PARLEY_RETENTION_DAYS`` old turns, logs, sessions and audio cache rows go, while
recent rows, sessions with turns, API keys' sessions and live calls' sessions stay.

Rows are written with explicit ages (straight through the ORM), the purge runs
once, and the tests read back which rows are still there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from store.models import (
    CacheEntry,
    InteractionLog,
    RoomRow,
    TtsAudio,
    Turn,
    VoiceSession,
    utcnow,
)
from store.retention import Retention, RetentionPolicy
from store.settings import StoreSettings
from store.store import Store

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


async def _session(
    store: Store,
    session_id: str,
    age: dt.timedelta,
    *,
    key_id: str | None = None,
    ended_age: dt.timedelta | None = None,
    turn_ages: tuple[dt.timedelta, ...] = (),
    log_age: dt.timedelta | None = None,
) -> None:
    now = utcnow()
    async with store.db.begin() as db:
        db.add(
            VoiceSession(
                id=session_id,
                transport="text",
                key_id=key_id,
                started_at=now - age,
                ended_at=None if ended_age is None else now - ended_age,
                status="active" if ended_age is None else "ended",
            )
        )
        await db.flush()
        for seq, turn_age in enumerate(turn_ages, start=1):
            db.add(
                Turn(
                    session_id=session_id,
                    seq=seq,
                    turn_id=f"t{seq}",
                    role="user",
                    text="hello",
                    started_at=now - turn_age,
                )
            )
        if log_age is not None:
            db.add(
                InteractionLog(
                    session_id=session_id,
                    user_input="hello",
                    raw_llm_output="hi",
                    final_action="reply",
                    created_at=now - log_age,
                )
            )


async def _sessions(store: Store) -> set[str]:
    async with store.db() as db:
        return set(await db.scalars(select(VoiceSession.id)))


async def _count(store: Store, table: type[Turn] | type[InteractionLog] | type[CacheEntry]) -> int:
    async with store.db() as db:
        return int(await db.scalar(select(func.count()).select_from(table)) or 0)


async def test_unused_anonymous_sessions_expire(store: Store) -> None:
    await _session(store, "ses_old_unused", 2 * HOUR)
    await _session(store, "ses_new_unused", 10 * 60 * dt.timedelta(seconds=1))
    await _session(store, "ses_old_with_turn", 2 * HOUR, turn_ages=(2 * HOUR,))
    await _session(store, "ses_old_keyed", 2 * HOUR, key_id="key_a")
    await _session(store, "ses_old_live", 2 * HOUR)
    await _session(store, "ses_ended_recently", 2 * HOUR, ended_age=5 * dt.timedelta(minutes=1))
    await _session(store, "ses_old_ended_with_log", 3 * HOUR, ended_age=2 * HOUR, log_age=3 * HOUR)

    result = await Retention(store.db).apply(
        RetentionPolicy(anonymous_ttl_s=3600.0), keep={"ses_old_live"}
    )

    assert result.anonymous_sessions == 2
    assert result.turns == result.sessions == result.cache_rows == 0  # no retention set
    assert await _sessions(store) == {
        "ses_new_unused",
        "ses_old_with_turn",
        "ses_old_keyed",
        "ses_old_live",
        "ses_ended_recently",
    }
    assert await _count(store, Turn) == 1
    assert await _count(store, InteractionLog) == 0  # went with its session


async def test_retention_deletes_old_turns_logs_sessions_and_cache_rows(store: Store) -> None:
    old, recent = 40 * DAY, 1 * DAY
    await _session(
        store,
        "ses_all_old",
        old,
        key_id="key_a",
        ended_age=old,
        turn_ages=(old, old),
        log_age=old,
    )
    await _session(store, "ses_mixed", old, key_id="key_a", turn_ages=(old, recent), log_age=recent)
    await _session(store, "ses_recent", recent, turn_ages=(recent,))
    await _session(store, "ses_old_live", old, turn_ages=(old,))
    now = utcnow()
    async with store.db.begin() as db:
        db.add(CacheEntry(namespace="n", key="old", value={}, created_at=now - old))
        db.add(CacheEntry(namespace="n", key="new", value={}, created_at=now - recent))

    result = await Retention(store.db, batch=1).apply(  # batch 1: the loops go round
        RetentionPolicy(anonymous_ttl_s=3600.0, retention_s=30 * DAY.total_seconds()),
        keep={"ses_old_live"},
    )

    assert (result.turns, result.interaction_logs, result.sessions, result.cache_rows) == (
        3,
        1,
        1,
        1,
    )
    assert await _sessions(store) == {"ses_mixed", "ses_recent", "ses_old_live"}
    assert [t.turn_id for t in await store.sessions.turns("ses_mixed")] == ["t2"]
    assert len(await store.sessions.turns("ses_old_live")) == 1  # a live call's: untouched
    assert await _count(store, InteractionLog) == 1
    async with store.db() as db:
        assert list(await db.scalars(select(CacheEntry.key))) == ["new"]


async def test_without_retention_everything_with_turns_stays(store: Store) -> None:
    await _session(store, "ses_ancient", 400 * DAY, ended_age=400 * DAY, turn_ages=(400 * DAY,))
    result = await Retention(store.db).apply(RetentionPolicy())
    assert result.total == 0
    assert await _sessions(store) == {"ses_ancient"}


@pytest.fixture
async def retaining_store(settings: StoreSettings) -> AsyncIterator[Store]:
    """A store whose settings keep 30 days and anonymous unused sessions an hour."""
    retaining = settings.model_copy(
        update={"retention_days": 30.0, "anonymous_session_ttl_s": 3600.0}
    )
    opened = await Store.open(retaining)
    yield opened
    await opened.close()


async def test_store_purge_applies_the_settings_retention(retaining_store: Store) -> None:
    store = retaining_store
    await _session(store, "ses_unused", 2 * HOUR)
    await _session(store, "ses_old", 40 * DAY, ended_age=40 * DAY, turn_ages=(40 * DAY,))
    await _session(store, "ses_kept", 1 * DAY, turn_ages=(1 * DAY,))
    now = utcnow()
    async with store.db.begin() as db:
        for name, used in (("old", now - 40 * DAY), ("new", now - 1 * DAY)):
            db.add(
                TtsAudio(
                    voice="v",
                    text_hash=name,
                    sample_rate=16000,
                    audio=b"\0\0" * 100,
                    size_bytes=200,
                    last_used_at=used,
                )
            )
    old_room = await store.rooms.create("old")
    async with store.db.begin() as db:
        row = await db.get(RoomRow, old_room.id)
        assert row is not None
        row.created_at = now - 3 * HOUR
    new_room = await store.rooms.create("new")

    removed = await store.purge(rooms_created_before=now - 2 * HOUR)

    assert removed == 1 + 1 + 1 + 1 + 1  # unused session, old session and its turn, phrase, room
    assert await _sessions(store) == {"ses_kept"}
    async with store.db() as db:
        assert list(await db.scalars(select(TtsAudio.text_hash))) == ["new"]
    assert await store.rooms.get(old_room.id) is None
    assert await store.rooms.get(new_room.id) is not None


def test_retention_settings_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_RETENTION_DAYS", "")
    assert StoreSettings().retention_policy().retention_s is None  # blank: keep forever
    monkeypatch.setenv("PARLEY_RETENTION_DAYS", "7")
    monkeypatch.setenv("PARLEY_ANONYMOUS_SESSION_TTL_S", "600")
    policy = StoreSettings().retention_policy()
    assert policy == RetentionPolicy(anonymous_ttl_s=600.0, retention_s=7 * 86400.0)
    with pytest.raises(ValueError, match="retention_s must be positive"):
        RetentionPolicy(retention_s=0)
