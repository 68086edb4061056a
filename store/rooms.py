"""Rooms in SQL, so every worker sees every room (calls stay in the worker that answered them).

A room is immutable once created (name, creating key, time); only deletion
changes it, so reads need no cache to be consistent across workers: a room
deleted on one worker refuses calls on every other one at once.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import RoomRow, utcnow

ROOM_ID_MAX = 64
"""Longest room id the table holds (longer ids name no room, without a query)."""


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """A room: the unit a join token grants access to."""

    id: str
    name: str | None
    key_id: str | None
    """The API key that created it (its calls count against that key's quota); None when
    an anonymous caller created it on an open server."""
    created_at: dt.datetime

    @classmethod
    def of(cls, row: RoomRow) -> RoomRecord:
        """From a row (naive SQLite times are UTC)."""
        created = row.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=dt.UTC)
        return cls(row.id, row.name, row.key_id, created)


class RoomRepository:
    """Create, read and delete rooms."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(self, name: str | None = None, *, key_id: str | None = None) -> RoomRecord:
        """A new room with an unguessable id, created by ``key_id`` (None: anonymous)."""
        row = RoomRow(
            id="room_" + secrets.token_urlsafe(12), name=name, key_id=key_id, created_at=utcnow()
        )
        async with self._sessions.begin() as db:
            db.add(row)
        return RoomRecord.of(row)

    async def get(self, room_id: str) -> RoomRecord | None:
        """A room by id."""
        if not room_id or len(room_id) > ROOM_ID_MAX:
            return None
        async with self._sessions() as db:
            row = await db.get(RoomRow, room_id)
            return RoomRecord.of(row) if row is not None else None

    async def delete(self, room_id: str) -> bool:
        """Remove a room; returns whether it existed."""
        if not room_id or len(room_id) > ROOM_ID_MAX:
            return False
        async with self._sessions.begin() as db:
            result = await db.execute(delete(RoomRow).where(RoomRow.id == room_id))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def purge(self, created_before: dt.datetime) -> int:
        """Delete rooms created before ``created_before`` (their join tokens have expired);
        returns how many. For the retention job."""
        async with self._sessions.begin() as db:
            result = await db.execute(delete(RoomRow).where(RoomRow.created_at < created_before))
            return int(result.rowcount)  # type: ignore[attr-defined]

    async def count(self, *, key_id: str | None = None) -> int:
        """Rooms stored (of one key when ``key_id`` is given)."""
        query = select(func.count()).select_from(RoomRow)
        if key_id is not None:
            query = query.where(RoomRow.key_id == key_id)
        async with self._sessions() as db:
            return int(await db.scalar(query) or 0)
