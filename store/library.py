"""Users' music libraries (liked tracks, playlists) copied from the platforms, and their search.

The library sync replaces a user's rows of one platform at a time
(``replace``); the search resolver looks a spoken query up in them before it
asks the platform (``find_tracks``, ``find_playlist``). Matching is on whole
words of ``music_key`` forms: a row matches when every word of the query
occurs in its name or artists, found with ``LIKE '% word %'`` inside the
user's rows (the index leads with ``user_id, platform``), then ranked here:
a query naming the whole title first, then the row's library order.

Plain records in and out: the store knows nothing of the agent's types.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.keys import normalize_key
from store.models import LibraryPlaylist, LibraryTrack, aware, utcnow

_COMMAND = re.compile(
    r"^(?:(?:please|now|then|and)\s+)*"
    r"(?:play|put on|listen to|start|queue|find|search for|search|look up)\s+(?:me\s+)?"
)
_PLATFORM_TAIL = re.compile(r"\s+(?:on|from|in)\s+(?:spotify|soundcloud|sound cloud)$")
_QUERY_STOPWORDS = frozenset({"by", "the", "a", "an", "feat", "ft", "featuring", "song", "track"})
MAX_MATCHES = 50
"""Rows read for ranking per library lookup."""
_LIKE_ESCAPE = "\\"


def music_key(text: str) -> str:
    """The canonical form of a spoken music query, the search cache's key.

    ``store.keys.normalize_key`` (case, accents, punctuation, filler words),
    then a leading command ("play", "put on", "listen to"), a trailing
    platform ("on Spotify") and the words that never tell songs apart ("by",
    "the", "a", "feat") are dropped: "Play ShaPE _oF-You", "play shape of you
    song" and "shape of you" share one key, as do "shape of you by ed sheeran"
    and "Shape of You - Ed Sheeran".
    """
    norm = normalize_key(text)
    norm = _PLATFORM_TAIL.sub("", _COMMAND.sub("", norm))
    return " ".join(w for w in norm.split() if w not in _QUERY_STOPWORDS)


def playlist_key(text: str) -> str:
    """``music_key`` of a spoken playlist name without "my" and "playlist" around it
    ("my workout playlist" -> "workout"); the plain key when nothing else is left
    (a playlist called "My Playlist")."""
    key = music_key(text)
    words = key.split()
    if words and words[0] == "my":
        words = words[1:]
    if len(words) > 1 and words[-1] in ("playlist", "playlists", "list"):
        words = words[:-1]
    return " ".join(words) or key


def spoken_query(text: str) -> str:
    """What to send to a platform's search: the query without its command and platform
    (``"play Shape of You by Ed Sheeran on Spotify"`` -> ``"shape of you by ed sheeran"``)."""
    norm = normalize_key(text)
    return _PLATFORM_TAIL.sub("", _COMMAND.sub("", norm)).strip()


def _padded(key: str) -> str:
    return f" {key} "


def _like_word(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"% {escaped} %"


@dataclass(frozen=True, slots=True)
class LibraryTrackRecord:
    """A track of a user's library."""

    id: str
    uri: str
    name: str
    artists: tuple[str, ...] = ()
    album: str | None = None
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class LibraryPlaylistRecord:
    """A playlist of a user."""

    id: str
    uri: str
    name: str
    track_count: int | None = None
    owned: bool = True


@dataclass(frozen=True, slots=True)
class LibraryCounts:
    """What a user's library on one platform holds."""

    tracks: int = 0
    playlists: int = 0
    synced_at: dt.datetime | None = field(default=None)


class LibraryRepository:
    """Replace, count, search and forget users' libraries."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def replace(
        self,
        user_id: str,
        platform: str,
        tracks: Sequence[LibraryTrackRecord],
        playlists: Sequence[LibraryPlaylistRecord],
    ) -> LibraryCounts:
        """Make the user's library on ``platform`` exactly ``tracks`` and ``playlists``
        (in that order; a repeated id keeps its first place), in one transaction."""
        now = utcnow()
        track_rows: dict[str, LibraryTrack] = {}
        for position, track in enumerate(tracks):
            if track.id in track_rows:
                continue
            name_key = music_key(track.name)
            track_rows[track.id] = LibraryTrack(
                user_id=user_id,
                platform=platform,
                id=track.id[:128],
                uri=track.uri[:256],
                name=track.name[:512],
                artists=list(track.artists),
                album=track.album[:512] if track.album else None,
                duration_ms=track.duration_ms,
                name_key=_padded(name_key)[:512],
                search_text=_padded(music_key(f"{track.name} {' '.join(track.artists)}"))[:1024],
                position=position,
                synced_at=now,
            )
        playlist_rows: dict[str, LibraryPlaylist] = {}
        for position, playlist in enumerate(playlists):
            if playlist.id in playlist_rows:
                continue
            playlist_rows[playlist.id] = LibraryPlaylist(
                user_id=user_id,
                platform=platform,
                id=playlist.id[:128],
                uri=playlist.uri[:256],
                name=playlist.name[:512],
                name_key=_padded(music_key(playlist.name))[:512],
                track_count=playlist.track_count,
                owned=playlist.owned,
                position=position,
                synced_at=now,
            )
        async with self._sessions.begin() as db:
            for model in (LibraryTrack, LibraryPlaylist):
                await db.execute(
                    delete(model).where(model.user_id == user_id, model.platform == platform)
                )
            db.add_all([*track_rows.values(), *playlist_rows.values()])
        return LibraryCounts(len(track_rows), len(playlist_rows), now)

    async def counts(self, user_id: str, platform: str) -> LibraryCounts:
        """How many tracks and playlists the user's library holds, and when it was synced."""
        async with self._sessions() as db:
            tracks, synced = (
                await db.execute(
                    select(func.count(), func.max(LibraryTrack.synced_at)).where(
                        LibraryTrack.user_id == user_id, LibraryTrack.platform == platform
                    )
                )
            ).one()
            playlists = await db.scalar(
                select(func.count()).where(
                    LibraryPlaylist.user_id == user_id, LibraryPlaylist.platform == platform
                )
            )
        return LibraryCounts(int(tracks or 0), int(playlists or 0), aware(synced))

    async def find_tracks(
        self, user_id: str, platform: str, query: str, limit: int = 5
    ) -> list[LibraryTrackRecord]:
        """Tracks of the user's library matching ``query`` (every word), best first."""
        key = music_key(query)
        words = key.split()
        if not words or limit < 1:
            return []
        conditions = [
            LibraryTrack.search_text.like(_like_word(w), escape=_LIKE_ESCAPE) for w in words
        ]
        async with self._sessions() as db:
            rows = list(
                await db.scalars(
                    select(LibraryTrack)
                    .where(
                        LibraryTrack.user_id == user_id,
                        LibraryTrack.platform == platform,
                        and_(*conditions),
                    )
                    .order_by(LibraryTrack.position)
                    .limit(MAX_MATCHES)
                )
            )
        padded = _padded(key)
        # A query that holds the whole title ("shape of you ed sheeran" -> "shape of you")
        # names that song; among those the longest title is the most specific.
        rows.sort(key=lambda r: (r.name_key not in padded, -len(r.name_key), r.position))
        return [
            LibraryTrackRecord(r.id, r.uri, r.name, tuple(r.artists or ()), r.album, r.duration_ms)
            for r in rows[:limit]
        ]

    async def find_playlist(
        self, user_id: str, platform: str, name: str
    ) -> LibraryPlaylistRecord | None:
        """The user's playlist called ``name``: the same normalized name, else the first
        whose name holds every word of it ("my workout playlist" finds "Workout Mix")."""
        key = playlist_key(name)
        words = key.split()
        if not words:
            return None
        conditions = [
            LibraryPlaylist.name_key.like(_like_word(w), escape=_LIKE_ESCAPE) for w in words
        ]
        async with self._sessions() as db:
            rows = list(
                await db.scalars(
                    select(LibraryPlaylist)
                    .where(
                        LibraryPlaylist.user_id == user_id,
                        LibraryPlaylist.platform == platform,
                        and_(*conditions),
                    )
                    .order_by(LibraryPlaylist.position)
                    .limit(MAX_MATCHES)
                )
            )
        if not rows:
            return None
        rows.sort(key=lambda r: (r.name_key != _padded(key), len(r.name_key), r.position))
        best = rows[0]
        return LibraryPlaylistRecord(best.id, best.uri, best.name, best.track_count, best.owned)

    async def playlists(self, user_id: str, platform: str) -> list[LibraryPlaylistRecord]:
        """The user's playlists on ``platform``, in the platform's order."""
        async with self._sessions() as db:
            rows = await db.scalars(
                select(LibraryPlaylist)
                .where(LibraryPlaylist.user_id == user_id, LibraryPlaylist.platform == platform)
                .order_by(LibraryPlaylist.position)
            )
            return [
                LibraryPlaylistRecord(r.id, r.uri, r.name, r.track_count, r.owned) for r in rows
            ]

    async def forget(self, user_id: str, platform: str) -> int:
        """Delete the user's library on ``platform`` (the account was unlinked); rows removed."""
        removed = 0
        async with self._sessions.begin() as db:
            for model in (LibraryTrack, LibraryPlaylist):
                result = await db.execute(
                    delete(model).where(model.user_id == user_id, model.platform == platform)
                )
                removed += int(result.rowcount)  # type: ignore[attr-defined]
        return removed
