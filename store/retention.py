"""Retention: what the store forgets, and when (issue 14).

Two rules, applied by ``Retention.apply`` (the app's job runner calls it
through ``Store.purge`` on one worker):

* **anonymous sessions that were never used** expire: a session no API key
  created (``key_id`` is None) that has no turn at all, started and (if it
  ended) ended more than ``anonymous_ttl_s`` ago, is deleted. Sessions with
  turns, and every session of an API key, are kept.
* **retention** (``retention_s``; None keeps everything forever): turns and
  interaction logs older than that are deleted, then every session (of any
  key) that started and ended before the cut-off and has no turn left, then
  generic cache rows created before it. The phrase audio cache applies the
  same age through its own purge (``PhraseAudioCache.max_age_s``).

Sessions of live calls (``keep``) are never deleted, whatever their age. Rows
are deleted in batches of ``batch`` (short transactions, bounded locks), at
most ``max_batches`` batches per rule and run: what remains waits for the
next run. Children (turns, interaction logs) are deleted explicitly before
their session, so no rule depends on the database enforcing cascades.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Exists, Select, delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import CacheEntry, InteractionLog, Turn, VoiceSession, utcnow

log = logging.getLogger(__name__)

DAY_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long the store keeps what (see the module docstring)."""

    anonymous_ttl_s: float = 3600.0
    """Anonymous sessions with no turn are deleted this long after their start (and end)."""
    retention_s: float | None = None
    """Turns, logs, sessions and cache rows older than this are deleted (None: kept)."""

    def __post_init__(self) -> None:
        if self.anonymous_ttl_s <= 0:
            raise ValueError("anonymous_ttl_s must be positive")
        if self.retention_s is not None and self.retention_s <= 0:
            raise ValueError("retention_s must be positive (None keeps everything)")


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """Rows one run deleted, by kind."""

    anonymous_sessions: int = 0
    """Anonymous sessions deleted unused."""
    turns: int = 0
    interaction_logs: int = 0
    sessions: int = 0
    """Sessions deleted because everything in them was past retention."""
    cache_rows: int = 0

    @property
    def total(self) -> int:
        """Rows deleted in all."""
        return (
            self.anonymous_sessions
            + self.turns
            + self.interaction_logs
            + self.sessions
            + self.cache_rows
        )


class Retention:
    """Applies a ``RetentionPolicy`` to the SQL tables."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        batch: int = 500,
        max_batches: int = 200,
    ) -> None:
        if batch < 1 or max_batches < 1:
            raise ValueError("batch and max_batches must be at least 1")
        self._sessions = sessions
        self.batch = batch
        self.max_batches = max_batches

    async def apply(
        self,
        policy: RetentionPolicy,
        *,
        keep: Collection[str] = (),
        now: dt.datetime | None = None,
    ) -> RetentionResult:
        """Delete what the policy says is past keeping; ``keep``: session ids never deleted."""
        now = now or utcnow()
        kept = frozenset(keep)
        unused = select(VoiceSession.id).where(
            VoiceSession.key_id.is_(None),
            ~_has_turns(),
            *_before(now - dt.timedelta(seconds=policy.anonymous_ttl_s)),
        )
        anonymous = await self._delete_sessions(unused, kept)
        if policy.retention_s is None:
            return RetentionResult(anonymous_sessions=anonymous)
        cutoff = now - dt.timedelta(seconds=policy.retention_s)
        old_turns = select(Turn.id).where(Turn.started_at < cutoff)
        old_logs = select(InteractionLog.id).where(InteractionLog.created_at < cutoff)
        if kept:
            old_turns = old_turns.where(Turn.session_id.not_in(kept))
            old_logs = old_logs.where(InteractionLog.session_id.not_in(kept))
        turns = await self._delete_ids(Turn, old_turns)
        logs = await self._delete_ids(InteractionLog, old_logs)
        emptied = select(VoiceSession.id).where(~_has_turns(), *_before(cutoff))
        sessions = await self._delete_sessions(emptied, kept)
        cache = await self._delete_ids(
            CacheEntry, select(CacheEntry.id).where(CacheEntry.created_at < cutoff)
        )
        return RetentionResult(anonymous, turns, logs, sessions, cache)

    async def _delete_sessions(self, query: Select[str], keep: frozenset[str]) -> int:
        """Delete the sessions ``query`` selects (and their interaction logs), batch by batch.

        The selection is checked again in the deleting statement: a session that
        got its first turn meanwhile is kept.
        """
        if keep:
            query = query.where(VoiceSession.id.not_in(keep))
        removed = 0
        for _ in range(self.max_batches):
            async with self._sessions.begin() as db:
                ids = list(await db.scalars(query.limit(self.batch)))
                if not ids:
                    break
                await db.execute(delete(InteractionLog).where(InteractionLog.session_id.in_(ids)))
                result = await db.execute(
                    delete(VoiceSession).where(VoiceSession.id.in_(ids), ~_has_turns())
                )
                removed += int(result.rowcount)  # type: ignore[attr-defined]
            if len(ids) < self.batch:
                break
        return removed

    async def _delete_ids(
        self,
        table: type[Turn] | type[InteractionLog] | type[CacheEntry],
        query: Select[int],
    ) -> int:
        """Delete the rows of ``table`` whose integer ids ``query`` selects, batch by batch."""
        removed = 0
        for _ in range(self.max_batches):
            async with self._sessions.begin() as db:
                ids = list(await db.scalars(query.limit(self.batch)))
                if not ids:
                    break
                result = await db.execute(delete(table).where(table.id.in_(ids)))
                removed += int(result.rowcount)  # type: ignore[attr-defined]
            if len(ids) < self.batch:
                break
        return removed


def _has_turns() -> Exists:
    """Whether the session of the enclosing query has any turn."""
    return exists().where(Turn.session_id == VoiceSession.id)


def _before(cutoff: dt.datetime) -> tuple[ColumnElement[bool], ...]:
    """Conditions: the session started, and ended if it did, before ``cutoff``."""
    return (
        VoiceSession.started_at < cutoff,
        or_(VoiceSession.ended_at.is_(None), VoiceSession.ended_at < cutoff),
    )
