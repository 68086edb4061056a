"""Users' platform access tokens, refreshed before they expire: ``AccessTokens`` over the store.

An access token expiring within ``REFRESH_MARGIN_S`` is refreshed first at the
platform's token endpoint (refresh token grant) and the new tokens are stored
encrypted. One refresh at a time per account in a process (a lock per account;
every waiter re-reads the row and takes the fresh token). Across workers the
row is re-read before refreshing, and a refused refresh is checked against the
row again: when another worker has meanwhile refreshed (single-use refresh
tokens, as SoundCloud issues, make the second refresh fail) its tokens are
used. A refresh the platform really refuses (400 ``invalid_grant``, 401)
marks the account disconnected and raises ``NotConnectedError``.

The new tokens are stored only if the account still holds the tokens the
refresh was made with (``PlatformAccountRepository.refreshed``): an account
linked again while a slow refresh was under way keeps its new tokens, which
are then handed out. Stored tokens that no configured key opens are a
``PlatformError`` wherever they are read, never a raw decryption error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import weakref
from collections.abc import Mapping

from agent.platforms.base import NotConnectedError, PlatformError
from signaling.oauth import OAuthClient, OAuthRefusedError, OAuthUnavailableError
from store.crypto import TokenDecryptError
from store.platform_accounts import AccountCredentials, PlatformAccountRepository, TokenGrant

log = logging.getLogger(__name__)

REFRESH_MARGIN_S = 60.0
"""An access token expiring sooner than this is refreshed before it is handed out."""
RACE_GRACE_S = 2.0
"""How long a refused refresh waits for another worker's refresh to show in the store."""
RACE_POLL_S = 0.1


class PlatformTokens:
    """Hands out valid access tokens of users' platform accounts (``AccessTokens``)."""

    def __init__(
        self,
        accounts: PlatformAccountRepository,
        clients: Mapping[str, OAuthClient],
        *,
        margin_s: float = REFRESH_MARGIN_S,
        race_grace_s: float = RACE_GRACE_S,
    ) -> None:
        self._accounts = accounts
        self._clients = clients
        self.margin_s = margin_s
        self.race_grace_s = race_grace_s
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self.refreshes = 0
        """Refresh grants sent to platforms by this process (a figure for tests and health)."""

    async def access_token(self, platform: str, user_id: str) -> str:
        """A token valid for at least ``margin_s`` (refreshed first when it is not)."""
        creds = await self._load(platform, user_id)
        if self._fresh(creds):
            return creds.access_token
        async with self._lock(platform, user_id):
            creds = await self._load(platform, user_id)  # another request may have refreshed
            if self._fresh(creds):
                return creds.access_token
            return await self._refresh(platform, user_id, creds)

    async def refreshed(self, platform: str, user_id: str, rejected: str) -> str:
        """A new token after the platform refused ``rejected``: refresh now, unless another
        request already did."""
        async with self._lock(platform, user_id):
            creds = await self._load(platform, user_id)
            if creds.access_token != rejected:
                return creds.access_token
            return await self._refresh(platform, user_id, creds)

    def _lock(self, platform: str, user_id: str) -> asyncio.Lock:
        key = (platform, user_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def _fresh(self, creds: AccountCredentials) -> bool:
        expires = creds.info.expires_at
        if expires is None:
            return True  # the platform gave no expiry: used until it is refused
        return expires - dt.datetime.now(dt.UTC) > dt.timedelta(seconds=self.margin_s)

    async def _read(self, platform: str, user_id: str) -> AccountCredentials | None:
        """The stored account (None: none), its tokens decrypted; ``PlatformError`` when no
        configured key opens them."""
        try:
            return await self._accounts.credentials(user_id, platform)
        except TokenDecryptError:
            log.error(
                "%s: a stored platform token cannot be decrypted: check PARLEY_TOKEN_KEY",
                platform,
            )
            raise PlatformError(
                platform, "the stored account cannot be read (server key configuration)"
            ) from None

    async def _load(self, platform: str, user_id: str) -> AccountCredentials:
        creds = await self._read(platform, user_id)
        if creds is None:
            raise NotConnectedError(platform)
        if not creds.info.connected:
            raise NotConnectedError(platform, "the account must be linked again", relink=True)
        return creds

    async def _refresh(self, platform: str, user_id: str, creds: AccountCredentials) -> str:
        client = self._clients.get(platform)
        if client is None:
            raise PlatformError(platform, "the platform is not configured on this server")
        if creds.refresh_token is None:
            await self._accounts.mark_disconnected(user_id, platform)
            raise NotConnectedError(
                platform, "the access expired and cannot be renewed", relink=True
            )
        self.refreshes += 1
        try:
            grant = await client.refresh(creds.refresh_token)
        except OAuthRefusedError as exc:
            if exc.status == 400 and exc.error not in (None, "invalid_grant"):
                raise PlatformError(
                    platform, "the token refresh was rejected", status=400
                ) from None
            latest = await self._refreshed_elsewhere(platform, user_id, creds)
            if latest is not None:
                return latest.access_token  # another worker refreshed first
            await self._accounts.mark_disconnected(user_id, platform)
            log.info("%s: refresh refused for an account; marked disconnected", platform)
            raise NotConnectedError(
                platform, "the platform refused access: link it again", relink=True
            ) from None
        except OAuthUnavailableError as exc:
            raise PlatformError(
                platform, "the token refresh failed; try again", retryable=True, status=exc.status
            ) from None
        if await self._accounts.refreshed(user_id, platform, grant, read=creds.revision):
            return grant.access_token
        return await self._changed_meanwhile(platform, user_id, creds, grant)

    async def _changed_meanwhile(
        self, platform: str, user_id: str, used: AccountCredentials, grant: TokenGrant
    ) -> str:
        """The token to hand out when the account no longer held the tokens ``used`` once
        the refresh made with them returned: linked again or refreshed by another worker
        (its stored tokens win), removed (``NotConnectedError``), or only re-encrypted
        under a new key (the same tokens: the refresh's are stored after all)."""
        latest = await self._read(platform, user_id)
        same = latest is not None and (latest.access_token, latest.refresh_token) == (
            used.access_token,
            used.refresh_token,
        )
        if latest is not None and same:
            if await self._accounts.refreshed(user_id, platform, grant, read=latest.revision):
                return grant.access_token
            latest = await self._read(platform, user_id)
        if latest is None:
            raise NotConnectedError(platform)  # the account was removed meanwhile
        if not latest.info.connected:
            raise NotConnectedError(platform, "the account must be linked again", relink=True)
        log.info("%s: the account changed during a refresh; its stored tokens are used", platform)
        return latest.access_token

    async def _refreshed_elsewhere(
        self, platform: str, user_id: str, used: AccountCredentials
    ) -> AccountCredentials | None:
        """The account's new tokens if another worker refreshed it with the refresh token
        the platform just refused as used; None if none appears within ``race_grace_s``.

        A single-use refresh token is refused only after the platform answered the other
        worker, whose write of the new tokens follows within moments: wait that long
        before taking the refusal for a revoked account.
        """
        deadline = time.monotonic() + self.race_grace_s
        while True:
            latest = await self._read(platform, user_id)
            if latest is None or not latest.info.connected:
                return None
            if latest.refresh_token != used.refresh_token:
                return latest
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(RACE_POLL_S)
