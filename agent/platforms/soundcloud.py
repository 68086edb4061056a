"""SoundCloud, over its documented public API (``https://api.soundcloud.com``).

=====================================  ===========================================
action                                 endpoint
=====================================  ===========================================
search tracks                          ``GET /tracks?q=&limit=``
liked tracks                           ``GET /me/likes/tracks?linked_partitioning=true``
playlists                              ``GET /me/playlists?linked_partitioning=true``
like a track                           ``POST /likes/tracks/{track_urn}``
add to a playlist                      ``GET /playlists/{playlist_urn}`` for its tracks,
                                       then ``PUT /playlists/{playlist_urn}`` with
                                       ``{"playlist": {"tracks": [{"urn"}, ...]}}``
=====================================  ===========================================

Requests authenticate with ``Authorization: OAuth <token>``, as SoundCloud
documents. Objects are named by URNs (``soundcloud:tracks:123``); a
``Track``'s ``uri`` is its URN. Lists are cursor-paginated
(``linked_partitioning``): ``next_href`` is followed only while it stays under
the configured base URL, for at most ``MAX_PAGES`` pages and never past a page
that repeats one already read (a stuck cursor).

Adding to a playlist rewrites its whole track list, so it is done only from a
list read in full: when an entry of the list read cannot be named (no URN), or
the list is shorter than the playlist's ``track_count`` (tracks the API leaves
out), the write is refused with a retryable ``PlatformError`` rather than
dropping those tracks from the user's playlist.

SoundCloud's public API has no remote player: ``play``, ``pause``,
``next_track`` and ``now_playing`` raise ``UnsupportedActionError``, which
the music tools turn into a spoken explanation.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

from agent.platforms.base import (
    AccessTokens,
    PlatformError,
    Playlist,
    Track,
    UnsupportedActionError,
)
from agent.platforms.http import (
    DEFAULT_MAX_RETRY_AFTER_S,
    DEFAULT_TIMEOUT_S,
    PageGuard,
    PlatformHttp,
)

NAME: Final = "soundcloud"
DEFAULT_BASE_URL: Final = "https://api.soundcloud.com"
PAGE: Final = 50
SEARCH_LIMIT_MAX: Final = 50
_URN = re.compile(r"soundcloud:(tracks|playlists|users):[A-Za-z0-9_-]{1,64}")


def _urn(kind: str, item: Mapping[str, Any]) -> str | None:
    urn = item.get("urn")
    if isinstance(urn, str) and _URN.fullmatch(urn):
        return urn
    raw = item.get("id")
    if isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
        return f"soundcloud:{kind}:{raw}"
    return None


def track_of(item: Mapping[str, Any]) -> Track | None:
    """A ``Track`` from a SoundCloud track object (None: not one)."""
    urn, title = _urn("tracks", item), item.get("title")
    if urn is None or not isinstance(title, str):
        return None
    user = item.get("user")
    artist = user.get("username") if isinstance(user, Mapping) else None
    duration = item.get("duration")
    return Track(
        platform=NAME,
        id=urn.rsplit(":", 1)[1],
        uri=urn,
        name=title,
        artists=(artist,) if isinstance(artist, str) and artist else (),
        album=None,
        duration_ms=int(duration) if isinstance(duration, int | float) else None,
    )


def _playlist_of(item: Mapping[str, Any], me: str | None) -> Playlist | None:
    urn, title = _urn("playlists", item), item.get("title")
    if urn is None or not isinstance(title, str):
        return None
    user = item.get("user")
    owner = _urn("users", user) if isinstance(user, Mapping) else None
    count = item.get("track_count")
    return Playlist(
        platform=NAME,
        id=urn.rsplit(":", 1)[1],
        uri=urn,
        name=title,
        track_count=count if isinstance(count, int) else None,
        owned=me is None or owner is None or owner == me,
        metadata={"owner": owner} if owner else {},
    )


def _path_urn(urn: str) -> str:
    if not _URN.fullmatch(urn):
        raise PlatformError(NAME, "not a SoundCloud URN")
    return urn


class SoundCloudPlatform:
    """``MusicPlatform`` on SoundCloud's public API (see the module docstring)."""

    name: str = NAME

    def __init__(
        self,
        tokens: AccessTokens,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
    ) -> None:
        self.http = PlatformHttp(
            NAME,
            base_url,
            tokens,
            timeout_s=timeout_s,
            max_retry_after_s=max_retry_after_s,
            auth_scheme="OAuth",
        )

    async def search_tracks(self, user_id: str, query: str, limit: int = 5) -> list[Track]:
        """See ``MusicPlatform.search_tracks``."""
        if not query.strip():
            return []
        params = {
            "q": query,
            "limit": max(1, min(limit, SEARCH_LIMIT_MAX)),
            "linked_partitioning": "true",
        }
        body = await self.http.request_json("GET", "/tracks", user_id, params=params)
        items = body.get("collection") if isinstance(body, Mapping) else body
        found = [track_of(item) for item in items or () if isinstance(item, Mapping)]
        return [t for t in found if t is not None][:limit]

    async def play(
        self, user_id: str, *, track: Track | None = None, playlist: Playlist | None = None
    ) -> None:
        """Not in SoundCloud's public API: ``UnsupportedActionError``."""
        raise UnsupportedActionError(NAME, "play")

    async def pause(self, user_id: str) -> None:
        """Not in SoundCloud's public API: ``UnsupportedActionError``."""
        raise UnsupportedActionError(NAME, "pause")

    async def next_track(self, user_id: str) -> None:
        """Not in SoundCloud's public API: ``UnsupportedActionError``."""
        raise UnsupportedActionError(NAME, "next")

    async def now_playing(self, user_id: str) -> Track | None:
        """Not in SoundCloud's public API: ``UnsupportedActionError``."""
        raise UnsupportedActionError(NAME, "now playing")

    async def add_to_playlist(
        self, user_id: str, playlist: Playlist, tracks: Sequence[Track]
    ) -> None:
        """See ``MusicPlatform.add_to_playlist``: the playlist's track list is read and
        written back whole with the new tracks appended (SoundCloud has no append).

        Refused with a retryable ``PlatformError`` (nothing written) when the list read
        is not the whole playlist (see the module docstring).
        """
        path = f"/playlists/{_path_urn(playlist.uri)}"
        additions = [_path_urn(t.uri) for t in tracks]
        body = await self.http.request_json("GET", path, user_id, params={"show_tracks": "true"})
        if not isinstance(body, Mapping) or not isinstance(body.get("tracks"), list):
            raise PlatformError(NAME, "the playlist answer has no track list", retryable=True)
        current: list[Any] = body["tracks"]
        known = [
            urn
            for entry in current
            if isinstance(entry, Mapping) and (urn := _urn("tracks", entry)) is not None
        ]
        count = body.get("track_count")
        if len(known) != len(current) or (isinstance(count, int) and count != len(known)):
            raise PlatformError(
                NAME,
                f"the playlist could not be read whole ({len(known)} of "
                f"{count if isinstance(count, int) else len(current)} tracks named); "
                "nothing was changed",
                retryable=True,
            )
        payload = {"playlist": {"tracks": [{"urn": urn} for urn in known + additions]}}
        await self.http.request("PUT", path, user_id, json=payload)

    async def save_tracks(self, user_id: str, tracks: Sequence[Track]) -> None:
        """See ``MusicPlatform.save_tracks``: one like per track."""
        for track in tracks:
            await self.http.request("POST", f"/likes/tracks/{_path_urn(track.uri)}", user_id)

    async def playlists(self, user_id: str) -> list[Playlist]:
        """See ``MusicPlatform.playlists`` (every page)."""
        me = await self._me(user_id)
        out: list[Playlist] = []
        params = {"show_tracks": "false"}
        async for item in self._pages(user_id, "/me/playlists", params, limit=None):
            playlist = _playlist_of(item, me)
            if playlist is not None:
                out.append(playlist)
        return out

    async def liked_tracks(self, user_id: str, limit: int = 500) -> list[Track]:
        """See ``MusicPlatform.liked_tracks``."""
        out: list[Track] = []
        async for item in self._pages(user_id, "/me/likes/tracks", {}, limit=limit):
            track = track_of(item)
            if track is not None:
                out.append(track)
        return out

    async def aclose(self) -> None:
        """See ``MusicPlatform.aclose``."""
        await self.http.aclose()

    async def _me(self, user_id: str) -> str | None:
        body = await self.http.request_json("GET", "/me", user_id)
        return _urn("users", body) if isinstance(body, Mapping) else None

    async def _pages(
        self, user_id: str, path: str, params: Mapping[str, str], *, limit: int | None
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Items of a cursor-paginated list, following ``next_href`` up to ``limit`` items
        (and ``MAX_PAGES`` pages, none repeated: see ``PageGuard``)."""
        first: dict[str, Any] = {**params, "limit": PAGE, "linked_partitioning": "true"}
        guard = PageGuard(NAME, path)
        url: str | None = path
        yielded = 0
        while url is not None:
            body = await self.http.request_json(
                "GET", url, user_id, params=first if url == path else None
            )
            raw = body.get("collection") if isinstance(body, Mapping) else None
            items = raw if isinstance(raw, list) else []
            if not items or not guard.admit(items):
                return
            for item in items:
                if isinstance(item, Mapping):
                    yield item
                    yielded += 1
                    if limit is not None and yielded >= limit:
                        return
            nxt = body.get("next_href") if isinstance(body, Mapping) else None
            url = nxt if isinstance(nxt, str) and nxt and guard.more() else None
