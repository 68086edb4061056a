"""Search through the cache tiers: hot cache, SQL search cache, the user's library, the API.

``TieredMusicResolver`` is the server's ``agent.platforms.search.MusicResolver``.
A track query is reduced to its ``store.library.music_key`` ("Play ShaPE
_oF-You" and "play shape of you song" are both "shape of you") and asked, in
order, of:

1. the hot tier (Redis, or the process's LRU) and 2. the SQL search cache:
   ``store.tiered.TieredCache`` under the namespace ``music:<platform>``;
3. the user's synced library (``store.library``: liked songs);
4. the platform's search API, whose answer is written back to both cache tiers.

The cache tiers are shared by every user of a platform: they hold what the
platform's catalogue answered for a query, nothing of anyone's library. A
library hit is therefore not written back (another user would otherwise be
answered from it); it is an indexed query of its own and fast enough.
A platform whose answers depend on a market (``RegionalSearch``: Spotify
applies the country of the user's account) is cached per market, in the
namespace ``music:<platform>:<market>``: the account's country when its
metadata records one (``country``), else the adapter's configured market
(``PARLEY_SPOTIFY_MARKET``), else the platform's plain namespace. An
account's market is remembered for ``MARKET_TTL_S`` (bounded), so a search
does not read the account each time.
Every answer says which tier served it and how long each tier asked took;
``observe`` (the server's metrics) sees each one. A failing SQL tier or
library is skipped (logged by exception class), never fatal: the platform
still answers.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError

from agent.platforms.base import MusicPlatform, Playlist, Track
from agent.platforms.search import RegionalSearch, SearchTier, TrackSearch
from store.library import (
    LibraryPlaylistRecord,
    LibraryRepository,
    music_key,
    playlist_key,
    spoken_query,
)
from store.platform_accounts import PlatformAccountRepository
from store.tiered import TieredCache

log = logging.getLogger(__name__)

NAMESPACE_PREFIX: Final = "music:"
MAX_KEY_CHARS: Final = 500
"""Longer keys are not cached (the SQL tier's key column holds 512)."""
MARKET_TTL_S: Final = 300.0
"""How long an account's market is remembered."""
MAX_MARKETS: Final = 4096
"""Accounts whose market is remembered at once (the oldest are forgotten first)."""
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def namespace(platform: str, market: str | None = None) -> str:
    """The cache namespace of a platform's search answers (in one market)."""
    return NAMESPACE_PREFIX + platform + (f":{market}" if market else "")


def country(value: object) -> str | None:
    """An ISO 3166-1 alpha-2 code as given (``"SE"``), or None when ``value`` is not one."""
    return value if isinstance(value, str) and _COUNTRY.match(value) else None


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _tracks_of(value: Mapping[str, Any]) -> tuple[Track, ...] | None:
    """The tracks of a cached answer; None when it is not one this module wrote."""
    raw = value.get("tracks")
    if not isinstance(raw, list):
        return None
    try:
        return tuple(Track.from_dict(item) for item in raw)
    except (KeyError, TypeError, ValueError):
        return None


def _playlist_of(platform: str, record: LibraryPlaylistRecord) -> Playlist:
    return Playlist(
        platform=platform,
        id=record.id,
        uri=record.uri,
        name=record.name,
        track_count=record.track_count,
        owned=record.owned,
    )


class TieredMusicResolver:
    """Finds tracks and playlists through the tiers (see the module docstring)."""

    def __init__(
        self,
        platforms: Mapping[str, MusicPlatform],
        cache: TieredCache,
        library: LibraryRepository,
        *,
        accounts: PlatformAccountRepository | None = None,
        observe: Callable[[TrackSearch], None] | None = None,
    ) -> None:
        self.platforms = platforms
        self.cache = cache
        self.library = library
        self.accounts = accounts
        """Where an account's country is read (None: the configured market only)."""
        self._observe = observe
        self._markets: OrderedDict[tuple[str, str], tuple[float, str | None]] = OrderedDict()

    async def tracks(self, user_id: str, platform: str, query: str, limit: int = 5) -> TrackSearch:
        """See ``MusicResolver.tracks``; ``KeyError`` for a platform not configured."""
        adapter = self.platforms[platform]
        started = time.perf_counter()
        timings: dict[str, float] = {}
        key = music_key(query)
        cacheable = 0 < len(key) <= MAX_KEY_CHARS
        result: TrackSearch | None = None
        space = namespace(platform, await self.market(user_id, platform))
        if cacheable:
            result = await self._from_cache(query, platform, space, key, timings)
        if result is None and key:
            result = await self._from_library(user_id, query, platform, limit, timings)
        if result is None:
            result = await self._from_platform(
                adapter, user_id, query, space, key if cacheable else None, limit, timings
            )
        timings["total"] = _ms(time.perf_counter() - started)
        final = TrackSearch(
            result.query, result.platform, result.tracks[:limit], result.tier, timings
        )
        if self._observe is not None:
            self._observe(final)
        return final

    async def market(self, user_id: str, platform: str) -> str | None:
        """The market ``platform``'s search answers ``user_id`` in (see the module
        docstring); None for a platform whose answers do not depend on one."""
        adapter = self.platforms[platform]
        if not isinstance(adapter, RegionalSearch):
            return None
        configured = country(adapter.market)
        if self.accounts is None:
            return configured
        now = time.monotonic()
        remembered = self._markets.get((user_id, platform))
        if remembered is not None and remembered[0] > now:
            return remembered[1] or configured
        try:
            info = await self.accounts.info(user_id, platform)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("music search: account unavailable (%s)", type(exc).__name__)
            return configured
        own = country(info.metadata.get("country")) if info is not None else None
        self._markets[(user_id, platform)] = (now + MARKET_TTL_S, own)
        self._markets.move_to_end((user_id, platform))
        while len(self._markets) > MAX_MARKETS:
            self._markets.popitem(last=False)
        return own or configured

    async def _from_cache(
        self, query: str, platform: str, space: str, key: str, timings: dict[str, float]
    ) -> TrackSearch | None:
        found = await self.cache.lookup(space, key, normalized=True)
        timings[SearchTier.HOT.value] = _ms(found.hot_s)
        if found.sql_s is not None:
            timings[SearchTier.SQL.value] = _ms(found.sql_s)
        if found.value is None:
            return None
        tracks = _tracks_of(found.value)
        if tracks is None:
            log.warning("music search: a cached answer of %s is malformed; ignored", platform)
            return None
        tier = SearchTier.HOT if found.tier == "hot" else SearchTier.SQL
        return TrackSearch(query, platform, tracks, tier)

    async def _from_library(
        self, user_id: str, query: str, platform: str, limit: int, timings: dict[str, float]
    ) -> TrackSearch | None:
        started = time.perf_counter()
        try:
            records = await self.library.find_tracks(user_id, platform, query, limit)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("music search: library unavailable (%s)", type(exc).__name__)
            records = []
        timings[SearchTier.LIBRARY.value] = _ms(time.perf_counter() - started)
        if not records:
            return None
        tracks = tuple(
            Track(platform, r.id, r.uri, r.name, r.artists, r.album, r.duration_ms) for r in records
        )
        return TrackSearch(query, platform, tracks, SearchTier.LIBRARY)

    async def _from_platform(
        self,
        adapter: MusicPlatform,
        user_id: str,
        query: str,
        space: str,
        key: str | None,
        limit: int,
        timings: dict[str, float],
    ) -> TrackSearch:
        started = time.perf_counter()
        try:
            tracks = await adapter.search_tracks(user_id, spoken_query(query) or query, limit)
        finally:
            timings[SearchTier.PLATFORM.value] = _ms(time.perf_counter() - started)
        if tracks and key is not None:
            value = {"tracks": [t.to_dict() for t in tracks]}
            await self.cache.put(space, key, value, normalized=True)
        return TrackSearch(query, adapter.name, tuple(tracks), SearchTier.PLATFORM)

    async def playlist(self, user_id: str, platform: str, name: str) -> Playlist | None:
        """See ``MusicResolver.playlist``: the synced library first, then the platform's list."""
        adapter = self.platforms[platform]
        try:
            record = await self.library.find_playlist(user_id, platform, name)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("music search: library unavailable (%s)", type(exc).__name__)
            record = None
        if record is not None:
            return _playlist_of(platform, record)
        key = playlist_key(name)
        words = set(key.split())
        if not words:
            return None
        candidates = await adapter.playlists(user_id)
        exact = [p for p in candidates if music_key(p.name) == key]
        if exact:
            return exact[0]
        partial = [p for p in candidates if words <= set(music_key(p.name).split())]
        return min(partial, key=lambda p: len(p.name)) if partial else None
