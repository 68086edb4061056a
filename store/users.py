"""Users: the people platform accounts and preferences belong to, and their sessions.

A session (``voice_sessions``) may name a user. A user is created the first
time a session needs one (linking a platform account); later sessions that
name the same user share its accounts and preferences.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import User, VoiceSession, utcnow

USER_ID_MAX = 64
PLATFORM_NAME_MAX = 32


@dataclass(frozen=True, slots=True)
class CallerProfile:
    """Who a session's caller is, as a call or a chat turn needs it: read once, at its start."""

    user_id: str
    preferred_platform: str | None = None

    def preferences(self) -> dict[str, str]:
        """The user's choices as the agent's tools read them (``{"platform": ...}``)."""
        return {"platform": self.preferred_platform} if self.preferred_platform else {}


class UserRepository:
    """Create users, read and set their preferences, and tie sessions to them."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(self, display_name: str | None = None) -> str:
        """A new user with an unguessable id; returns the id."""
        user_id = "usr_" + secrets.token_urlsafe(16)
        async with self._sessions.begin() as db:
            db.add(User(id=user_id, display_name=display_name, created_at=utcnow()))
        return user_id

    async def ensure(self, user_id: str) -> None:
        """Create the user ``user_id`` unless it exists (safe against a concurrent creation)."""
        if not user_id or len(user_id) > USER_ID_MAX:
            raise ValueError(f"a user id has 1 to {USER_ID_MAX} characters")
        try:
            async with self._sessions.begin() as db:
                if await db.get(User, user_id) is None:
                    db.add(User(id=user_id, created_at=utcnow()))
        except IntegrityError:
            async with self._sessions() as db:
                if await db.get(User, user_id) is None:
                    raise

    async def exists(self, user_id: str) -> bool:
        """Whether the user exists."""
        if not user_id or len(user_id) > USER_ID_MAX:
            return False
        async with self._sessions() as db:
            return await db.get(User, user_id) is not None

    async def of_session(self, session_id: str) -> str | None:
        """The user a session names (None: the session is anonymous or does not exist)."""
        async with self._sessions() as db:
            return await db.scalar(
                select(VoiceSession.user_id).where(VoiceSession.id == session_id)
            )

    async def profile(self, session_id: str) -> CallerProfile | None:
        """The user a session names and their preferences, in one query (None: anonymous)."""
        async with self._sessions() as db:
            row = (
                await db.execute(
                    select(User.id, User.preferred_platform)
                    .join(VoiceSession, VoiceSession.user_id == User.id)
                    .where(VoiceSession.id == session_id)
                )
            ).first()
        return CallerProfile(row[0], row[1]) if row is not None else None

    async def attach(self, session_id: str, user_id: str) -> bool:
        """Tie an anonymous session to an existing user; False when the session does not
        exist or already names another user (a session never changes hands)."""
        async with self._sessions.begin() as db:
            result = await db.execute(
                update(VoiceSession)
                .where(
                    VoiceSession.id == session_id,
                    (VoiceSession.user_id.is_(None)) | (VoiceSession.user_id == user_id),
                )
                .values(user_id=user_id)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def for_session(self, session_id: str) -> str | None:
        """The session's user, created and tied to the session if it has none; None when the
        session does not exist. Two concurrent calls agree on one user."""
        existing = await self.of_session(session_id)
        if existing is not None:
            return existing
        async with self._sessions() as db:
            if await db.get(VoiceSession, session_id) is None:
                return None
        user_id = await self.create()
        async with self._sessions.begin() as db:
            await db.execute(
                update(VoiceSession)
                .where(VoiceSession.id == session_id, VoiceSession.user_id.is_(None))
                .values(user_id=user_id)
            )
        # Another request may have tied the session to its own new user first: use that
        # one and drop ours, which nothing refers to.
        winner = await self.of_session(session_id)
        if winner != user_id:
            async with self._sessions.begin() as db:
                await db.execute(delete(User).where(User.id == user_id))
        return winner

    async def preferred_platform(self, user_id: str) -> str | None:
        """The platform the user prefers (None: none chosen, or no such user)."""
        async with self._sessions() as db:
            return await db.scalar(select(User.preferred_platform).where(User.id == user_id))

    async def set_preferred_platform(self, user_id: str, platform: str | None) -> None:
        """Record the platform the agent acts on when a request names none."""
        if platform is not None and not 0 < len(platform) <= PLATFORM_NAME_MAX:
            raise ValueError(f"a platform name has 1 to {PLATFORM_NAME_MAX} characters")
        await self.ensure(user_id)
        async with self._sessions.begin() as db:
            await db.execute(
                update(User).where(User.id == user_id).values(preferred_platform=platform)
            )
