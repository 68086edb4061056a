"""Spotify, over its documented Web API (``https://api.spotify.com/v1``).

=====================================  ===========================================
action                                 endpoint
=====================================  ===========================================
search tracks                          ``GET /search?type=track&q=&limit=`` (limit <= 10)
play a track / a playlist / resume     ``PUT /me/player/play`` with ``uris`` /
                                       ``context_uri`` / no body; ``?device_id=``
pause                                  ``PUT /me/player/pause``
next                                   ``POST /me/player/next``
add to a playlist                      ``POST /playlists/{id}/items`` ``{"uris"}``
                                       (at most 100 a request)
save to liked songs                    ``PUT /me/library?uris=`` (at most 40 a request)
playlists                              ``GET /me/playlists?limit=50&offset=`` (pages)
liked tracks                           ``GET /me/tracks?limit=50&offset=`` (pages)
now playing                            ``GET /me/player/currently-playing`` (204: nothing)
the user's id (playlist ownership)     ``GET /me``
=====================================  ===========================================

The playlist and library endpoints are the ones Spotify documents since its
February 2026 Web API changes (``/playlists/{id}/items`` replaced
``/playlists/{id}/tracks``; ``PUT /me/library`` with URIs replaced the
type-specific ``PUT /me/tracks``; playlists report their size under
``items.total``, older answers under ``tracks.total``: both are read).

A player call answered 404 with the reason ``NO_ACTIVE_DEVICE`` (or any 404
on ``/me/player``) is ``NoActiveDeviceError``; the rest of the error mapping
is ``agent.platforms.http``'s. Pages are followed by ``offset`` up to the
answer's ``total``, never by the ``next`` link (a token never goes to a host
the answer names), for at most ``MAX_PAGES`` pages and never past a page that
repeats one already read (an answer that ignores ``offset``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import httpx

from agent.platforms.base import (
    AccessTokens,
    NoActiveDeviceError,
    PlatformError,
    Playlist,
    Track,
)
from agent.platforms.http import (
    DEFAULT_MAX_RETRY_AFTER_S,
    DEFAULT_TIMEOUT_S,
    PageGuard,
    PlatformHttp,
)

NAME: Final = "spotify"
DEFAULT_BASE_URL: Final = "https://api.spotify.com/v1"
SEARCH_LIMIT_MAX: Final = 10
"""Spotify's documented maximum of ``limit`` for ``/search``."""
PAGE: Final = 50
"""Items per page of the library endpoints (Spotify's maximum)."""
ADD_BATCH: Final = 100
SAVE_BATCH: Final = 40


def _player_error(response: httpx.Response, reason: str | None) -> PlatformError | None:
    if response.status_code == 404:
        return NoActiveDeviceError(NAME)
    if response.status_code == 403 and reason == "PREMIUM_REQUIRED":
        return PlatformError(NAME, "playback control needs Spotify Premium", status=403)
    return None


def track_of(item: Mapping[str, Any]) -> Track | None:
    """A ``Track`` from a Spotify track object (None: not a playable track, e.g. an
    episode, or a local file without an id)."""
    track_id, uri, name = item.get("id"), item.get("uri"), item.get("name")
    if not isinstance(track_id, str) or not isinstance(uri, str) or not isinstance(name, str):
        return None
    if item.get("type", "track") != "track":
        return None
    artists = tuple(
        str(a["name"])
        for a in item.get("artists") or ()
        if isinstance(a, Mapping) and isinstance(a.get("name"), str)
    )
    album = item.get("album")
    duration = item.get("duration_ms")
    return Track(
        platform=NAME,
        id=track_id,
        uri=uri,
        name=name,
        artists=artists,
        album=str(album["name"]) if isinstance(album, Mapping) and album.get("name") else None,
        duration_ms=int(duration) if isinstance(duration, int | float) else None,
    )


def _playlist_of(item: Mapping[str, Any], me: str | None) -> Playlist | None:
    playlist_id, uri, name = item.get("id"), item.get("uri"), item.get("name")
    if not isinstance(playlist_id, str) or not isinstance(uri, str) or not isinstance(name, str):
        return None
    count: int | None = None
    for key in ("items", "tracks"):
        summary = item.get(key)
        if isinstance(summary, Mapping) and isinstance(summary.get("total"), int):
            count = int(summary["total"])
            break
    owner = item.get("owner")
    owner_id = owner.get("id") if isinstance(owner, Mapping) else None
    owned = bool(item.get("collaborative")) or (me is not None and owner_id == me)
    return Playlist(
        platform=NAME,
        id=playlist_id,
        uri=uri,
        name=name,
        track_count=count,
        owned=owned,
        metadata={"owner": owner_id} if isinstance(owner_id, str) else {},
    )


class SpotifyPlatform:
    """``MusicPlatform`` on Spotify's Web API (see the module docstring)."""

    name: str = NAME

    def __init__(
        self,
        tokens: AccessTokens,
        *,
        base_url: str = DEFAULT_BASE_URL,
        device_id: str | None = None,
        market: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
    ) -> None:
        self.http = PlatformHttp(
            NAME, base_url, tokens, timeout_s=timeout_s, max_retry_after_s=max_retry_after_s
        )
        self.device_id = device_id
        """Play on this device (None: the user's active device)."""
        self.market = market
        """ISO country for search results (None: the account's own market)."""

    async def search_tracks(self, user_id: str, query: str, limit: int = 5) -> list[Track]:
        """See ``MusicPlatform.search_tracks``; at most ``SEARCH_LIMIT_MAX`` results."""
        if not query.strip():
            return []
        params: dict[str, Any] = {
            "q": query,
            "type": "track",
            "limit": max(1, min(limit, SEARCH_LIMIT_MAX)),
        }
        if self.market:
            params["market"] = self.market
        body = await self.http.request_json("GET", "/search", user_id, params=params)
        page = body.get("tracks") if isinstance(body, Mapping) else None
        items = page.get("items") if isinstance(page, Mapping) else None
        found = [track_of(item) for item in items or () if isinstance(item, Mapping)]
        return [t for t in found if t is not None]

    async def play(
        self, user_id: str, *, track: Track | None = None, playlist: Playlist | None = None
    ) -> None:
        """See ``MusicPlatform.play``."""
        body: dict[str, Any] | None = None
        if track is not None:
            body = {"uris": [track.uri]}
        elif playlist is not None:
            body = {"context_uri": playlist.uri}
        await self.http.request(
            "PUT",
            "/me/player/play",
            user_id,
            params=self._device(),
            json=body,
            on_error=_player_error,
        )

    async def pause(self, user_id: str) -> None:
        """See ``MusicPlatform.pause``."""
        await self.http.request(
            "PUT", "/me/player/pause", user_id, params=self._device(), on_error=_player_error
        )

    async def next_track(self, user_id: str) -> None:
        """See ``MusicPlatform.next_track``."""
        await self.http.request(
            "POST", "/me/player/next", user_id, params=self._device(), on_error=_player_error
        )

    async def add_to_playlist(
        self, user_id: str, playlist: Playlist, tracks: Sequence[Track]
    ) -> None:
        """See ``MusicPlatform.add_to_playlist`` (in requests of at most 100)."""
        uris = [t.uri for t in tracks]
        for start in range(0, len(uris), ADD_BATCH):
            await self.http.request(
                "POST",
                f"/playlists/{_segment(playlist.id)}/items",
                user_id,
                json={"uris": uris[start : start + ADD_BATCH]},
            )

    async def save_tracks(self, user_id: str, tracks: Sequence[Track]) -> None:
        """See ``MusicPlatform.save_tracks`` (in requests of at most 40)."""
        uris = [t.uri for t in tracks]
        for start in range(0, len(uris), SAVE_BATCH):
            batch = ",".join(uris[start : start + SAVE_BATCH])
            await self.http.request("PUT", "/me/library", user_id, params={"uris": batch})

    async def playlists(self, user_id: str) -> list[Playlist]:
        """See ``MusicPlatform.playlists`` (every page)."""
        me = await self._me(user_id)
        out: list[Playlist] = []
        async for item in self._pages(user_id, "/me/playlists", limit=None):
            playlist = _playlist_of(item, me)
            if playlist is not None:
                out.append(playlist)
        return out

    async def liked_tracks(self, user_id: str, limit: int = 500) -> list[Track]:
        """See ``MusicPlatform.liked_tracks``."""
        out: list[Track] = []
        async for item in self._pages(user_id, "/me/tracks", limit=limit):
            inner = item.get("track")
            track = track_of(inner) if isinstance(inner, Mapping) else None
            if track is not None:
                out.append(track)
        return out[:limit]

    async def now_playing(self, user_id: str) -> Track | None:
        """See ``MusicPlatform.now_playing`` (204, or an episode or ad playing: None)."""
        body = await self.http.request_json("GET", "/me/player/currently-playing", user_id)
        item = body.get("item") if isinstance(body, Mapping) else None
        return track_of(item) if isinstance(item, Mapping) else None

    async def aclose(self) -> None:
        """See ``MusicPlatform.aclose``."""
        await self.http.aclose()

    def _device(self) -> dict[str, str] | None:
        return {"device_id": self.device_id} if self.device_id else None

    async def _me(self, user_id: str) -> str | None:
        body = await self.http.request_json("GET", "/me", user_id)
        me = body.get("id") if isinstance(body, Mapping) else None
        return me if isinstance(me, str) else None

    async def _pages(
        self, user_id: str, path: str, *, limit: int | None
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Items of an offset-paginated list, page after page, up to ``limit`` items (and
        ``MAX_PAGES`` pages, none repeated: see ``PageGuard``)."""
        guard = PageGuard(NAME, path)
        offset = yielded = 0
        while True:
            params = {"limit": PAGE, "offset": offset}
            body = await self.http.request_json("GET", path, user_id, params=params)
            raw = body.get("items") if isinstance(body, Mapping) else None
            items = raw if isinstance(raw, list) else []
            total = body.get("total") if isinstance(body, Mapping) else None
            if not items or not guard.admit(items):
                return
            for item in items:
                if isinstance(item, Mapping):
                    yield item
                    yielded += 1
                    if limit is not None and yielded >= limit:
                        return
            offset += len(items)
            if (isinstance(total, int) and offset >= total) or not guard.more():
                return


def _segment(value: str) -> str:
    """An id safe to put in a URL path (Spotify ids are base-62; anything else is refused)."""
    if not value or not value.isalnum():
        raise PlatformError(NAME, "not a Spotify id")
    return value
