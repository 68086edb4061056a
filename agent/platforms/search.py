"""How the music tools find what a spoken request names: the resolver contract.

A ``MusicResolver`` turns a query ("shape of you by ed sheeran") into tracks
on one platform, and a playlist name ("my workout playlist") into one of the
user's playlists, as fast as it can: the implementation wired by the server
(``signaling.music_search``) asks a hot cache, then the SQL search cache, then
the user's synced library, and only then the platform's API. Each answer says
which tier served it and how long each tier it asked took.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from agent.platforms.base import Playlist, Track


class SearchTier(StrEnum):
    """Where a search was answered, fastest first."""

    HOT = "hot"
    """The hot cache (Redis, or the process's own LRU)."""
    SQL = "sql"
    """The SQL search cache."""
    LIBRARY = "library"
    """The user's synced library."""
    PLATFORM = "platform"
    """The platform's search API."""


@dataclass(frozen=True, slots=True)
class TrackSearch:
    """Tracks found for a query, where, and how long each tier asked took (ms)."""

    query: str
    platform: str
    tracks: tuple[Track, ...]
    tier: SearchTier
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    """Per tier asked (``SearchTier`` values) plus ``"total"``."""

    @property
    def best(self) -> Track | None:
        """The first track, if any."""
        return self.tracks[0] if self.tracks else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the search API, tool results)."""
        return {
            "query": self.query,
            "platform": self.platform,
            "tier": self.tier.value,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "tracks": [t.to_dict() for t in self.tracks],
        }


@runtime_checkable
class RegionalSearch(Protocol):
    """A platform whose search answers depend on a market (a country): Spotify answers a
    user's token with the tracks playable in the user's country, or in ``market`` when
    the request names one. Shared caches of its answers are kept per market."""

    market: str | None
    """The ISO 3166-1 country searches ask for (None: the account's own)."""


@runtime_checkable
class MusicResolver(Protocol):
    """Finds tracks and playlists for one user on one platform (see the module docstring).

    Raises the platform's typed errors (``agent.platforms.base``) when it has to ask
    the platform and the platform fails; ``KeyError`` for a platform it does not serve.
    """

    async def tracks(self, user_id: str, platform: str, query: str, limit: int = 5) -> TrackSearch:
        """Tracks matching ``query``, best first (possibly none)."""
        ...

    async def playlist(self, user_id: str, platform: str, name: str) -> Playlist | None:
        """The user's playlist called ``name`` (None: no such playlist)."""
        ...
