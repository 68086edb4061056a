"""Repositories: the SQL operations the rest of the store uses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import (
    CacheEntry,
    InteractionLog,
    TtsAudio,
    Turn,
    VoiceSession,
    aware,
    utcnow,
)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """A turn as the writer receives it (plain data, no ORM)."""

    session_id: str
    turn_id: str
    role: str
    text: str
    heard_text: str | None = None
    interrupted: bool = False
    stt_confidence: float | None = None
    latencies: dict[str, Any] | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    usage: dict[str, Any] | None = None
    """Providers, models and quantities the turn used, and its cost (agent turns)."""


@dataclass(frozen=True, slots=True)
class SessionCursor:
    """A position in the newest-first list of sessions: the last session already seen."""

    started_at: dt.datetime
    session_id: str


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One page of sessions, newest first, and where the next page starts (None: last)."""

    sessions: list[VoiceSession]
    next: SessionCursor | None


class SessionRepository:
    """Voice sessions and their turns."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(
        self,
        session_id: str,
        transport: str,
        language: str = "en",
        attributes: Mapping[str, Any] | None = None,
        key_id: str | None = None,
    ) -> None:
        """Insert a session (if it exists: merge the new call's ``attributes`` into it).

        ``key_id`` is the API key that created it (None: anonymous); an existing
        session keeps the key it has.
        """
        async with self._sessions.begin() as db:
            row = await db.get(VoiceSession, session_id)
            if row is None:
                db.add(
                    VoiceSession(
                        id=session_id,
                        transport=transport,
                        language=language,
                        attributes=dict(attributes) if attributes else None,
                        key_id=key_id,
                    )
                )
            else:
                if attributes:
                    row.attributes = {**(row.attributes or {}), **attributes}
                if key_id is not None and row.key_id is None:
                    row.key_id = key_id

    async def get(self, session_id: str) -> VoiceSession | None:
        """A session by id."""
        async with self._sessions() as db:
            return await db.get(VoiceSession, session_id)

    async def page(
        self,
        *,
        transport: str | None = None,
        limit: int = 50,
        after: SessionCursor | None = None,
    ) -> SessionPage:
        """Sessions newest first (start time, then id), ``limit`` at a time.

        Keyset pagination: ``after`` is the previous page's ``next``, so pages
        neither skip nor repeat rows when sessions are added meanwhile (new
        ones appear on a fresh first page). ``transport`` keeps only that
        transport's sessions.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = select(VoiceSession)
        if transport is not None:
            query = query.where(VoiceSession.transport == transport)
        if after is not None:
            started = _utc(after.started_at)
            query = query.where(
                or_(
                    VoiceSession.started_at < started,
                    and_(
                        VoiceSession.started_at == started,
                        VoiceSession.id < after.session_id,
                    ),
                )
            )
        query = query.order_by(VoiceSession.started_at.desc(), VoiceSession.id.desc())
        async with self._sessions() as db:
            rows = list(await db.scalars(query.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if more else None
        return SessionPage(
            sessions=rows,
            next=SessionCursor(aware(last.started_at), last.id) if last is not None else None,
        )

    async def set_transport(self, session_id: str, transport: str) -> None:
        """Record the transport of the session's latest call."""
        async with self._sessions.begin() as db:
            await db.execute(
                update(VoiceSession)
                .where(VoiceSession.id == session_id)
                .values(transport=transport, status="active", ended_at=None)
            )

    async def end(self, session_id: str, status: str = "ended", reason: str | None = None) -> None:
        """Mark a session ended (by its latest call, whose ``reason`` is kept)."""
        values: dict[str, Any] = {"status": status, "ended_at": utcnow()}
        if reason is not None:
            values["end_reason"] = reason[:120]
        async with self._sessions.begin() as db:
            await db.execute(
                update(VoiceSession).where(VoiceSession.id == session_id).values(**values)
            )

    async def delete(self, session_id: str) -> bool:
        """Delete a session and its turns; returns whether it existed."""
        async with self._sessions.begin() as db:
            result = await db.execute(delete(VoiceSession).where(VoiceSession.id == session_id))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def add_turn(self, record: TurnRecord) -> None:
        """Append a turn and update the session's statistics, in one transaction.

        Idempotent: a turn already stored (same session, turn id and role) is
        not stored twice, so the writer may safely retry after a failure.
        """
        async with self._sessions.begin() as db:
            exists = await db.scalar(
                select(Turn.id).where(
                    Turn.session_id == record.session_id,
                    Turn.turn_id == record.turn_id,
                    Turn.role == record.role,
                )
            )
            if exists is not None:
                return
            session = await db.get(VoiceSession, record.session_id, with_for_update=True)
            if session is None:
                session = VoiceSession(id=record.session_id, transport="unknown")
                db.add(session)
                await db.flush()
            seq = await db.scalar(
                select(func.coalesce(func.max(Turn.seq), 0)).where(
                    Turn.session_id == record.session_id
                )
            )
            db.add(
                Turn(
                    session_id=record.session_id,
                    seq=int(seq or 0) + 1,
                    turn_id=record.turn_id,
                    role=record.role,
                    text=record.text,
                    heard_text=record.heard_text,
                    interrupted=record.interrupted,
                    stt_confidence=record.stt_confidence,
                    latencies=record.latencies,
                    usage=record.usage,
                    started_at=record.started_at or utcnow(),
                    ended_at=record.ended_at,
                )
            )
            if record.role == "user":
                n = session.turn_count or 0
                if record.stt_confidence is not None:
                    prev = session.avg_stt_confidence
                    session.avg_stt_confidence = (
                        record.stt_confidence
                        if prev is None or n == 0
                        else (prev * n + record.stt_confidence) / (n + 1)
                    )
                session.turn_count = n + 1

    async def add_error(self, session_id: str) -> None:
        """Count a failed stage in the session."""
        async with self._sessions.begin() as db:
            await db.execute(
                update(VoiceSession)
                .where(VoiceSession.id == session_id)
                .values(error_count=VoiceSession.error_count + 1)
            )

    async def turns(self, session_id: str, limit: int = 1000) -> list[Turn]:
        """A session's turns in order."""
        async with self._sessions() as db:
            rows = await db.scalars(
                select(Turn).where(Turn.session_id == session_id).order_by(Turn.seq).limit(limit)
            )
            return list(rows)

    async def usages(self, session_id: str) -> list[dict[str, Any]]:
        """The usage stored with the session's turns, in order (turns without any skipped)."""
        async with self._sessions() as db:
            rows = await db.scalars(
                select(Turn.usage).where(Turn.session_id == session_id).order_by(Turn.seq)
            )
            return [u for u in rows if isinstance(u, dict)]

    async def log_interaction(
        self, session_id: str, user_input: str, raw_llm_output: str, final_action: str
    ) -> None:
        """Record what the agent made of an input."""
        async with self._sessions.begin() as db:
            db.add(
                InteractionLog(
                    session_id=session_id,
                    user_input=user_input,
                    raw_llm_output=raw_llm_output,
                    final_action=final_action,
                )
            )


class CacheRepository:
    """The SQL tier of the generic cache."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        """An unexpired value."""
        async with self._sessions() as db:
            row = await db.scalar(
                select(CacheEntry).where(CacheEntry.namespace == namespace, CacheEntry.key == key)
            )
            if row is None:
                return None
            if row.expires_at is not None and aware(row.expires_at) <= utcnow():
                return None
            return row.value

    async def put(
        self, namespace: str, key: str, value: dict[str, Any], ttl_s: float | None
    ) -> None:
        """Insert or replace a value."""
        expires = utcnow() + dt.timedelta(seconds=ttl_s) if ttl_s is not None else None
        async with self._sessions.begin() as db:
            row = await db.scalar(
                select(CacheEntry).where(CacheEntry.namespace == namespace, CacheEntry.key == key)
            )
            if row is None:
                db.add(CacheEntry(namespace=namespace, key=key, value=value, expires_at=expires))
            else:
                row.value = value
                row.created_at = utcnow()
                row.expires_at = expires

    async def purge_expired(self) -> int:
        """Delete expired entries; returns how many."""
        async with self._sessions.begin() as db:
            result = await db.execute(delete(CacheEntry).where(CacheEntry.expires_at <= utcnow()))
            return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """Rows removed by one purge of the phrase audio."""

    expired: int = 0
    """Not used within the maximum age."""
    over_size: int = 0
    """Least recently used rows removed to bring the total under the byte bound."""

    @property
    def total(self) -> int:
        """Rows removed in all."""
        return self.expired + self.over_size


class TtsAudioRepository:
    """The SQL tier of the TTS phrase cache."""

    _DELETE_BATCH = 500

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def get(self, voice: str, text_hash: str) -> tuple[int, bytes] | None:
        """``(sample_rate, pcm bytes)`` of a cached phrase."""
        async with self._sessions() as db:
            row = (
                await db.execute(
                    select(TtsAudio.sample_rate, TtsAudio.audio).where(
                        TtsAudio.voice == voice, TtsAudio.text_hash == text_hash
                    )
                )
            ).first()
            return None if row is None else (int(row[0]), bytes(row[1]))

    async def put(self, voice: str, text_hash: str, sample_rate: int, audio: bytes) -> None:
        """Store a phrase, or replace its audio and mark it used if it is already stored."""
        async with self._sessions.begin() as db:
            row = await db.scalar(
                select(TtsAudio).where(TtsAudio.voice == voice, TtsAudio.text_hash == text_hash)
            )
            if row is None:
                db.add(
                    TtsAudio(
                        voice=voice,
                        text_hash=text_hash,
                        sample_rate=sample_rate,
                        audio=audio,
                        size_bytes=len(audio),
                    )
                )
            else:
                row.sample_rate = sample_rate
                row.audio = audio
                row.size_bytes = len(audio)
                row.last_used_at = utcnow()

    async def touch(self, text_hashes: list[str], at: dt.datetime | None = None) -> None:
        """Mark phrases used now (or ``at``), so the purge keeps them."""
        if not text_hashes:
            return
        async with self._sessions.begin() as db:
            await db.execute(
                update(TtsAudio)
                .where(TtsAudio.text_hash.in_(text_hashes))
                .values(last_used_at=at or utcnow())
            )

    async def total_bytes(self) -> int:
        """PCM bytes stored."""
        async with self._sessions() as db:
            total = await db.scalar(select(func.coalesce(func.sum(TtsAudio.size_bytes), 0)))
            return int(total or 0)

    async def purge(self, max_age_s: float, max_bytes: int) -> PurgeResult:
        """Delete phrases unused for ``max_age_s``, then the least recently used ones
        until at most ``max_bytes`` of audio remain."""
        cutoff = utcnow() - dt.timedelta(seconds=max_age_s)
        async with self._sessions.begin() as db:
            result = await db.execute(delete(TtsAudio).where(TtsAudio.last_used_at < cutoff))
            expired = int(result.rowcount)  # type: ignore[attr-defined]
            total = int(
                await db.scalar(select(func.coalesce(func.sum(TtsAudio.size_bytes), 0))) or 0
            )
            if total <= max_bytes:
                return PurgeResult(expired=expired)
            excess = total - max_bytes
            victims: list[int] = []
            # Only ids and sizes are read (never the audio), oldest use first.
            rows = await db.execute(
                select(TtsAudio.id, TtsAudio.size_bytes).order_by(
                    TtsAudio.last_used_at, TtsAudio.id
                )
            )
            for row_id, size in rows:
                victims.append(int(row_id))
                excess -= int(size)
                if excess <= 0:
                    break
            for i in range(0, len(victims), self._DELETE_BATCH):
                await db.execute(
                    delete(TtsAudio).where(TtsAudio.id.in_(victims[i : i + self._DELETE_BATCH]))
                )
            return PurgeResult(expired=expired, over_size=len(victims))


def _utc(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC (naive values are taken as UTC, as SQLite returns them)."""
    return aware(value).astimezone(dt.UTC)
