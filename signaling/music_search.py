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
Every answer says which tier served it and how long each tier asked took;
``observe`` (the server's metrics) sees each one. A failing SQL tier or
library is skipped (logged by exception class), never fatal: the platform
still answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError

from agent.platforms.base import MusicPlatform, Playlist, Track
from agent.platforms.search import SearchTier, TrackSearch
from store.library import (
    LibraryPlaylistRecord,
    LibraryRepository,
    music_key,
    playlist_key,
    spoken_query,
)
from store.tiered import TieredCache

log = logging.getLogger(__name__)

NAMESPACE_PREFIX: Final = "music:"
MAX_KEY_CHARS: Final = 500
"""Longer keys are not cached (the SQL tier's key column holds 512)."""


def namespace(platform: str) -> str:
    """The cache namespace of a platform's search answers."""
    return NAMESPACE_PREFIX + platform


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
        observe: Callable[[TrackSearch], None] | None = None,
    ) -> None:
        self.platforms = platforms
        self.cache = cache
        self.library = library
        self._observe = observe

    async def tracks(self, user_id: str, platform: str, query: str, limit: int = 5) -> TrackSearch:
        """See ``MusicResolver.tracks``; ``KeyError`` for a platform not configured."""
        adapter = self.platforms[platform]
        started = time.perf_counter()
        timings: dict[str, float] = {}
        key = music_key(query)
        cacheable = 0 < len(key) <= MAX_KEY_CHARS
        result: TrackSearch | None = None
        if cacheable:
            result = await self._from_cache(query, platform, key, timings)
        if result is None and key:
            result = await self._from_library(user_id, query, platform, limit, timings)
        if result is None:
            result = await self._from_platform(
                adapter, user_id, query, platform, key if cacheable else None, limit, timings
            )
        timings["total"] = _ms(time.perf_counter() - started)
        final = TrackSearch(
            result.query, result.platform, result.tracks[:limit], result.tier, timings
        )
        if self._observe is not None:
            self._observe(final)
        return final

    async def _from_cache(
        self, query: str, platform: str, key: str, timings: dict[str, float]
    ) -> TrackSearch | None:
        found = await self.cache.lookup(namespace(platform), key, normalized=True)
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
        platform: str,
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
            await self.cache.put(namespace(platform), key, value, normalized=True)
        return TrackSearch(query, platform, tuple(tracks), SearchTier.PLATFORM)

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
