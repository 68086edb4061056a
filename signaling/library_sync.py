"""The library sync: users' liked songs and playlists copied into the store.

``LibrarySync.sync(user_id, platform)`` reads one account's liked tracks and
playlists through the platform's adapter and replaces the user's rows in
``store.library`` in one transaction, then records ``last_sync_at`` on the
account. ``sync_due()`` walks the connected accounts and syncs those whose
last sync is older than ``interval_s`` (6 h by default) or that never synced.

It never runs on a call's path: an account is synced when it is linked (the
``on_connected`` hook only *requests* a sync) and periodically, by a job
library: arq on Redis when ``REDIS_URL`` is set (``signaling.sync_queue``,
one job per due account), else the server's in-process ``JobRunner``
(``signaling.jobs.library_jobs``). A sync that fails, for whatever reason, is
logged by exception class, counted (``failures``) and retried at the next
scan, and never stops the other accounts' syncs; an account the platform no
longer accepts is left to the token service, which marks it disconnected (so
it drops out of the scan).

An account unlinked while its library is being copied keeps nothing: the
account is checked before the copy is written and again after (an unlink
whose own clean-up ran before the write landed), and a copy found orphaned
is forgotten.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Final

from agent.platforms.base import MusicPlatform, NotConnectedError, PlatformError
from store.library import (
    LibraryCounts,
    LibraryPlaylistRecord,
    LibraryRepository,
    LibraryTrackRecord,
)
from store.models import aware, utcnow
from store.platform_accounts import PlatformAccountRepository

log = logging.getLogger(__name__)

SYNC_INTERVAL_S: Final = 6 * 3600.0
"""How old an account's last sync may grow before the next one."""
SCAN_INTERVAL_S: Final = 600.0
"""How often the accounts due for a sync are looked for."""
MAX_LIKED_TRACKS: Final = 2000
"""Liked tracks copied per account (newest first)."""
MAX_PENDING: Final = 10_000
"""Sync requests held in process (in-process mode); past it the oldest are dropped: the
periodic scan still syncs those accounts (they never synced, so they are due)."""
JOB_NAME: Final = "library-sync"


class LibrarySync:
    """Copies accounts' libraries into the store (see the module docstring)."""

    def __init__(
        self,
        platforms: Mapping[str, MusicPlatform],
        library: LibraryRepository,
        accounts: PlatformAccountRepository,
        *,
        interval_s: float = SYNC_INTERVAL_S,
        max_tracks: int = MAX_LIKED_TRACKS,
    ) -> None:
        if interval_s <= 0 or max_tracks < 1:
            raise ValueError("the sync interval and the track bound must be positive")
        self.platforms = platforms
        self.library = library
        self.accounts = accounts
        self.interval_s = interval_s
        self.max_tracks = max_tracks
        self.synced = 0
        self.failures = 0
        self._pending: dict[tuple[str, str], None] = {}
        """Requested syncs, oldest first (a dict as an ordered set)."""

    async def sync(self, user_id: str, platform: str) -> LibraryCounts:
        """Copy one account's library now; raises the platform's typed errors."""
        adapter = self.platforms[platform]
        tracks = await adapter.liked_tracks(user_id, limit=self.max_tracks)
        playlists = await adapter.playlists(user_id)
        account = await self.accounts.info(user_id, platform)
        if account is None or not account.connected:
            # Unlinked while its library was read: what was read is not kept.
            raise NotConnectedError(platform, "the account was removed during its sync")
        counts = await self.library.replace(
            user_id,
            platform,
            [
                LibraryTrackRecord(t.id, t.uri, t.name, t.artists, t.album, t.duration_ms)
                for t in tracks
            ],
            [LibraryPlaylistRecord(p.id, p.uri, p.name, p.track_count, p.owned) for p in playlists],
        )
        if not await self.accounts.mark_synced(user_id, platform, counts.synced_at):
            # Unlinked between the check and the write: the unlink may have forgotten the
            # library before this copy landed, so it is forgotten again.
            await self.library.forget(user_id, platform)
            raise NotConnectedError(platform, "the account was removed during its sync")
        self.synced += 1
        log.info(
            "library sync: %s account synced (%d tracks, %d playlists)",
            platform,
            counts.tracks,
            counts.playlists,
        )
        return counts

    async def try_sync(self, user_id: str, platform: str) -> bool:
        """``sync``, with any failure logged (by class) and counted instead of raised: a
        failing account never stops the others'. ``CancelledError`` propagates."""
        try:
            await self.sync(user_id, platform)
        except NotConnectedError:
            log.info("library sync: %s account is not connected; skipped", platform)
            return False
        except PlatformError as exc:
            self.failures += 1
            log.warning("library sync: %s failed (%s)", platform, type(exc).__name__)
            return False
        except Exception as exc:  # the store, a bug: this account only; CancelledError passes
            self.failures += 1
            log.error("library sync: %s failed unexpectedly (%s)", platform, type(exc).__name__)
            return False
        return True

    def request(self, user_id: str, platform: str) -> None:
        """Ask for a sync of one account at the next run (in-process mode)."""
        if platform not in self.platforms:
            return
        self._pending.pop((user_id, platform), None)
        self._pending[(user_id, platform)] = None
        while len(self._pending) > MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))

    async def forget(self, user_id: str, platform: str) -> int:
        """The account was unlinked: drop its requested sync and delete the library copied
        from it; returns the rows removed."""
        self._pending.pop((user_id, platform), None)
        removed = await self.library.forget(user_id, platform)
        log.info("library sync: an unlinked %s account's library forgotten", platform)
        return removed

    @property
    def pending(self) -> int:
        """Requested syncs not yet run."""
        return len(self._pending)

    async def run_pending(self) -> int:
        """Sync the requested accounts; returns how many synced."""
        done = 0
        while self._pending:
            user_id, platform = next(iter(self._pending))
            del self._pending[(user_id, platform)]
            done += await self.try_sync(user_id, platform)
        return done

    async def due(self, now: dt.datetime | None = None) -> list[tuple[str, str]]:
        """``(user_id, platform)`` of every connected account of a platform synced here
        whose last sync is older than ``interval_s`` (or that never synced)."""
        cutoff = (now or utcnow()) - dt.timedelta(seconds=self.interval_s)
        out: list[tuple[str, str]] = []
        for account in await self.accounts.connected():
            if account.platform not in self.platforms:
                continue
            last = aware(account.last_sync_at)
            if last is None or last <= cutoff:
                out.append((account.user_id, account.platform))
        return out

    async def sync_due(self, now: dt.datetime | None = None) -> int:
        """Sync every account ``due`` for it, one after another (in-process mode; arq
        enqueues a job each instead); returns how many synced."""
        done = 0
        for user_id, platform in await self.due(now):
            done += await self.try_sync(user_id, platform)
        return done
