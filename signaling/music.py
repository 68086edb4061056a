"""The music side of one app: platform adapters, the tiered search, the library sync, tools.

``Music.open`` builds, for each platform this server has an OAuth client for,
its ``agent.platforms`` adapter (on the platform's configured API base URL,
with the users' tokens from ``signaling.platforms.Platforms``), the search
resolver over the store's cache tiers and libraries, and the library sync
with its scheduling: an arq worker when the store has Redis
(``signaling.sync_queue``), else in-process requests that the server's
``JobRunner`` runs (``signaling.library_sync.library_jobs``, added by
``signaling.jobs.maintenance_jobs``). ``connected`` is the ``on_connected``
hook that requests the first sync of a newly linked account, ``disconnected``
the ``on_disconnected`` hook that forgets an unlinked account's library.

``tools()`` are the music tools for the agent's tool registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from agent.platforms.base import AccessTokens, MusicPlatform
from agent.platforms.music_tools import music_tools
from agent.platforms.search import TrackSearch
from agent.platforms.soundcloud import SoundCloudPlatform
from agent.platforms.spotify import SpotifyPlatform
from agent.tools import Tool
from signaling.library_sync import LibrarySync
from signaling.music_search import TieredMusicResolver
from signaling.platform_settings import SpotifySettings
from signaling.platforms import Platforms
from signaling.sync_queue import SyncQueue
from store.platform_accounts import AccountInfo
from store.store import Store

log = logging.getLogger(__name__)


def build_adapter(
    name: str, api_url: str, tokens: AccessTokens, *, market: str | None = None
) -> MusicPlatform | None:
    """The adapter of platform ``name`` on ``api_url`` (None: a platform without one);
    ``market``: the country Spotify's searches ask for."""
    if name == "spotify":
        return SpotifyPlatform(tokens, base_url=api_url, market=market)
    if name == "soundcloud":
        return SoundCloudPlatform(tokens, base_url=api_url)
    return None


@dataclass(slots=True)
class Music:
    """What the search API, the agent's tools and the sync jobs share."""

    platforms: dict[str, MusicPlatform]
    resolver: TieredMusicResolver
    sync: LibrarySync
    queue: SyncQueue | None = None
    """The arq queue (with Redis); None: in-process scheduling."""
    wake: Callable[[], None] | None = field(default=None, repr=False)
    """Makes the in-process sync job due now (set once the job runner exists)."""

    @classmethod
    async def open(
        cls,
        platforms: Platforms,
        store: Store,
        *,
        observe: Callable[[TrackSearch], None] | None = None,
    ) -> Music:
        """Adapters for the configured platforms, the resolver and the sync (started)."""
        adapters: dict[str, MusicPlatform] = {}
        for name in platforms.clients:
            conf = platforms.settings[name]
            market = conf.market if isinstance(conf, SpotifySettings) else None
            adapter = build_adapter(name, conf.api_url, platforms.tokens, market=market)
            if adapter is not None:
                adapters[name] = adapter
        resolver = TieredMusicResolver(
            adapters, store.cache, store.library, accounts=store.accounts, observe=observe
        )
        sync = LibrarySync(adapters, store.library, store.accounts)
        queue: SyncQueue | None = None
        redis_url = store.settings.redis_url
        if redis_url and adapters:
            queue = SyncQueue(sync, redis_url, prefix=store.settings.key_prefix)
            try:
                await queue.start()
            except (RedisError, OSError) as exc:  # Redis down at start-up: sync in process
                log.warning(
                    "library sync: Redis unreachable (%s); scheduling in process",
                    type(exc).__name__,
                )
                await queue.aclose()
                queue = None
        music = cls(adapters, resolver, sync, queue)
        platforms.on_connected.append(music.connected)
        platforms.on_disconnected.append(music.disconnected)
        return music

    def describe(self) -> dict[str, Any]:
        """The library sync's state for ``/health``: how it is scheduled, its counts, and
        the arq queue's health (``SyncQueue.stats``) when it runs there."""
        out: dict[str, Any] = {
            "scheduler": "arq" if self.queue is not None else "in_process",
            "synced": self.sync.synced,
            "failures": self.sync.failures,
            "pending": self.sync.pending,
        }
        if self.queue is not None:
            out["queue"] = self.queue.stats()
        return out

    def tools(self, default_platform: str | None = None) -> list[Tool]:
        """The music tools over the configured platforms (none when no platform is)."""
        if not self.platforms:
            return []
        return music_tools(self.platforms, self.resolver, default_platform=default_platform)

    async def connected(self, account: AccountInfo) -> None:
        """``on_connected`` hook: request the first sync of a newly linked account."""
        if account.platform not in self.platforms:
            return
        if self.queue is not None:
            await self.queue.request(account.user_id, account.platform)
            return
        self.sync.request(account.user_id, account.platform)
        if self.wake is not None:
            self.wake()

    async def disconnected(self, user_id: str, platform: str) -> None:
        """``on_disconnected`` hook: forget the account's synced library and its pending sync
        (a job already queued on arq finds no account and copies nothing)."""
        await self.sync.forget(user_id, platform)

    async def aclose(self) -> None:
        """Stop the sync worker and close the adapters' HTTP clients."""
        if self.queue is not None:
            await self.queue.aclose()
        for adapter in self.platforms.values():
            await adapter.aclose()
