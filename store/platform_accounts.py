"""Users' accounts on third-party platforms, with their OAuth tokens encrypted at rest.

Rows hold the access and refresh tokens as Fernet tokens (``store.crypto``);
plaintext exists only in ``AccountCredentials``, which this repository hands
to the token service and which never prints its tokens. ``AccountInfo`` is
the token-free view the API answers with.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.crypto import TokenCipher
from store.models import PlatformAccount, aware, utcnow
from store.users import PLATFORM_NAME_MAX, USER_ID_MAX, UserRepository

REENCRYPT_BATCH = 200
"""Rows re-encrypted per transaction."""


class AccountStatus(StrEnum):
    """Whether the account's tokens may be used."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    """The platform refused a refresh (revoked, expired): the user must link it again."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """Tokens a platform's token endpoint issued (plaintext: never logged or printed)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    """None: the platform issued none (on a refresh: keep the one stored)."""
    expires_at: dt.datetime | None = None
    scopes: tuple[str, ...] | None = None
    """None: the platform did not say (on a refresh: keep the scopes stored)."""


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """An account without its tokens: what the API and the sync job see."""

    user_id: str
    platform: str
    status: AccountStatus
    scopes: tuple[str, ...]
    expires_at: dt.datetime | None
    metadata: Mapping[str, Any]
    last_sync_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    has_refresh_token: bool

    @property
    def connected(self) -> bool:
        """Whether the account's tokens may be used."""
        return self.status is AccountStatus.CONNECTED

    @classmethod
    def of(cls, row: PlatformAccount) -> AccountInfo:
        """From a row (tokens left out)."""
        return cls(
            user_id=row.user_id,
            platform=row.platform,
            status=AccountStatus(row.status),
            scopes=tuple(row.scopes or ()),
            expires_at=aware(row.expires_at),
            metadata=dict(row.metadata_ or {}),
            last_sync_at=aware(row.last_sync_at),
            created_at=aware(row.created_at),
            updated_at=aware(row.updated_at),
            has_refresh_token=row.refresh_token is not None,
        )


@dataclass(frozen=True, slots=True)
class AccountRevision:
    """The stored tokens' ciphertexts as one read saw them: an update made on condition
    of them (``refreshed``) does nothing to an account linked again, or refreshed by
    another worker, since that read. Opaque to callers."""

    access: bytes = field(repr=False)
    refresh: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class AccountCredentials:
    """An account with its tokens decrypted (for the token service only)."""

    info: AccountInfo
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    revision: AccountRevision = field(repr=False, compare=False)
    """What was read (for ``PlatformAccountRepository.refreshed``)."""


def _check(user_id: str, platform: str) -> None:
    if not user_id or len(user_id) > USER_ID_MAX:
        raise ValueError(f"a user id has 1 to {USER_ID_MAX} characters")
    if not platform or len(platform) > PLATFORM_NAME_MAX:
        raise ValueError(f"a platform name has 1 to {PLATFORM_NAME_MAX} characters")


class PlatformAccountRepository:
    """Link, read, refresh, disconnect and forget platform accounts."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cipher: TokenCipher) -> None:
        self._sessions = sessions
        self._users = UserRepository(sessions)
        self.cipher = cipher

    async def save(
        self,
        user_id: str,
        platform: str,
        grant: TokenGrant,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> AccountInfo:
        """Link (or link again) the user's account with newly issued tokens; creates the
        user if needed. The account is ``connected`` afterwards."""
        _check(user_id, platform)
        await self._users.ensure(user_id)
        for attempt in range(2):
            try:
                return await self._upsert(user_id, platform, grant, metadata)
            except IntegrityError:  # a concurrent first link of the same account
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _upsert(
        self,
        user_id: str,
        platform: str,
        grant: TokenGrant,
        metadata: Mapping[str, Any] | None,
    ) -> AccountInfo:
        now = utcnow()
        async with self._sessions.begin() as db:
            row = await db.scalar(self._select(user_id, platform))
            if row is None:
                row = PlatformAccount(
                    user_id=user_id, platform=platform, created_at=now, last_sync_at=None
                )
                db.add(row)
            row.access_token = self.cipher.encrypt(grant.access_token)
            row.refresh_token = (
                self.cipher.encrypt(grant.refresh_token) if grant.refresh_token else None
            )
            row.expires_at = grant.expires_at
            row.scopes = list(grant.scopes or ())
            if metadata is not None:
                row.metadata_ = dict(metadata)
            row.status = AccountStatus.CONNECTED.value
            row.updated_at = now
            await db.flush()
            return AccountInfo.of(row)

    @staticmethod
    def _select(user_id: str, platform: str) -> Any:
        return select(PlatformAccount).where(
            PlatformAccount.user_id == user_id, PlatformAccount.platform == platform
        )

    async def info(self, user_id: str, platform: str) -> AccountInfo | None:
        """The account without its tokens (None: never linked, or forgotten)."""
        if not user_id or len(user_id) > USER_ID_MAX or len(platform) > PLATFORM_NAME_MAX:
            return None
        async with self._sessions() as db:
            row = await db.scalar(self._select(user_id, platform))
            return AccountInfo.of(row) if row is not None else None

    async def accounts(self, user_id: str) -> list[AccountInfo]:
        """Every account of a user, by platform name."""
        async with self._sessions() as db:
            rows = await db.scalars(
                select(PlatformAccount)
                .where(PlatformAccount.user_id == user_id)
                .order_by(PlatformAccount.platform)
            )
            return [AccountInfo.of(row) for row in rows]

    async def connected(self, platform: str | None = None) -> list[AccountInfo]:
        """Every connected account (of one platform): what a periodic sync walks."""
        query = select(PlatformAccount).where(
            PlatformAccount.status == AccountStatus.CONNECTED.value
        )
        if platform is not None:
            query = query.where(PlatformAccount.platform == platform)
        async with self._sessions() as db:
            rows = await db.scalars(query.order_by(PlatformAccount.id))
            return [AccountInfo.of(row) for row in rows]

    async def credentials(self, user_id: str, platform: str) -> AccountCredentials | None:
        """The account with its tokens decrypted (None: no such account).

        Raises ``store.crypto.TokenDecryptError`` when no configured key opens them.
        """
        if not user_id or len(user_id) > USER_ID_MAX or len(platform) > PLATFORM_NAME_MAX:
            return None
        async with self._sessions() as db:
            row = await db.scalar(self._select(user_id, platform))
            if row is None:
                return None
            return AccountCredentials(
                info=AccountInfo.of(row),
                access_token=self.cipher.decrypt(row.access_token),
                refresh_token=(
                    self.cipher.decrypt(row.refresh_token)
                    if row.refresh_token is not None
                    else None
                ),
                revision=AccountRevision(row.access_token, row.refresh_token),
            )

    async def refreshed(
        self, user_id: str, platform: str, grant: TokenGrant, *, read: AccountRevision
    ) -> bool:
        """Store the tokens of a refresh made with the tokens ``read`` (a refresh token or
        scopes left out by the platform stay as stored).

        Only while the stored tokens are still those read: returns False, writing
        nothing, when the account was forgotten, linked again or refreshed elsewhere
        meanwhile (or merely re-encrypted: the caller reads it again to tell), so a slow
        refresh never overwrites newer tokens.
        """
        refresh_read = (
            PlatformAccount.refresh_token.is_(None)
            if read.refresh is None
            else PlatformAccount.refresh_token == read.refresh
        )
        values: dict[str, Any] = {
            "access_token": self.cipher.encrypt(grant.access_token),
            "expires_at": grant.expires_at,
            "status": AccountStatus.CONNECTED.value,
            "updated_at": utcnow(),
        }
        if grant.refresh_token:
            values["refresh_token"] = self.cipher.encrypt(grant.refresh_token)
        if grant.scopes is not None:
            values["scopes"] = list(grant.scopes)
        return await self._update(
            user_id, platform, values, PlatformAccount.access_token == read.access, refresh_read
        )

    async def mark_disconnected(self, user_id: str, platform: str) -> bool:
        """The platform refused the refresh: the account needs linking again."""
        return await self._update(
            user_id,
            platform,
            {"status": AccountStatus.DISCONNECTED.value, "updated_at": utcnow()},
        )

    async def mark_synced(self, user_id: str, platform: str, at: dt.datetime | None = None) -> bool:
        """Record a finished library sync."""
        return await self._update(user_id, platform, {"last_sync_at": at or utcnow()})

    async def set_metadata(self, user_id: str, platform: str, metadata: Mapping[str, Any]) -> bool:
        """Replace what is known of the account on the platform (never tokens)."""
        return await self._update(
            user_id, platform, {"metadata_": dict(metadata), "updated_at": utcnow()}
        )

    async def _update(
        self,
        user_id: str,
        platform: str,
        values: dict[str, Any],
        *conditions: ColumnElement[bool],
    ) -> bool:
        async with self._sessions.begin() as db:
            result = await db.execute(
                update(PlatformAccount)
                .where(
                    PlatformAccount.user_id == user_id,
                    PlatformAccount.platform == platform,
                    *conditions,
                )
                .values(**values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete(self, user_id: str, platform: str) -> bool:
        """Forget the account and its tokens; returns whether it existed."""
        if not user_id or len(user_id) > USER_ID_MAX or len(platform) > PLATFORM_NAME_MAX:
            return False
        async with self._sessions.begin() as db:
            result = await db.execute(
                delete(PlatformAccount).where(
                    PlatformAccount.user_id == user_id, PlatformAccount.platform == platform
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def reencrypt(self, batch: int = REENCRYPT_BATCH) -> int:
        """Rewrite every token not encrypted with the first key; returns the rows rewritten.

        Run after listing a new key first in ``PARLEY_TOKEN_KEY``; the old keys may be
        dropped once it returns. ``TokenDecryptError`` if a row opens with no key.
        """
        rewritten = 0
        last_id = 0
        while True:
            async with self._sessions.begin() as db:
                rows: Sequence[PlatformAccount] = list(
                    await db.scalars(
                        select(PlatformAccount)
                        .where(PlatformAccount.id > last_id)
                        .order_by(PlatformAccount.id)
                        .limit(batch)
                        .with_for_update()
                    )
                )
                if not rows:
                    return rewritten
                for row in rows:
                    stale = not self.cipher.is_current(row.access_token) or (
                        row.refresh_token is not None
                        and not self.cipher.is_current(row.refresh_token)
                    )
                    if stale:
                        row.access_token = self.cipher.rotate(row.access_token)
                        if row.refresh_token is not None:
                            row.refresh_token = self.cipher.rotate(row.refresh_token)
                        rewritten += 1
                last_id = rows[-1].id
