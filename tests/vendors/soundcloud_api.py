"""A loopback SoundCloud public API for tests.

Speaks the documented endpoints and shapes (objects named by URNs,
``soundcloud:tracks:123``; lists cursor-paginated with
``linked_partitioning=true`` -> ``{"collection", "next_href"}``):

* ``GET /tracks?q=&limit=`` -> tracks matching the query;
* ``GET /me`` -> the user;
* ``GET /me/likes/tracks`` and ``GET /me/playlists`` (``limit``, ``cursor``);
* ``POST /likes/tracks/{track_urn}`` -> 200 (the track joins the likes);
* ``GET /playlists/{playlist_urn}`` -> the playlist with its ``tracks``;
* ``PUT /playlists/{playlist_urn}`` ``{"playlist": {"tracks": [{"urn"}]}}``
  -> the updated playlist (the whole track list is replaced, as documented).

Requests need ``Authorization: OAuth <token>``; tokens are checked like the
Spotify fake's (``tokens`` or ``token_check``): 401 otherwise. Faults are
scripted with ``fail(Fault(...))``; ``requests`` records what arrived (the
plumbing is ``tests.vendors.loopback.VendorAPI``'s).

Two behaviours of the real API can be staged: a playlist's ``withheld``
tracks count in its ``track_count`` but are left out of its ``tracks`` (as
the API does with tracks it may not show), and its ``unnamed`` ones are listed
without ``urn`` or ``id``. ``stuck_paging`` makes every ``next_href`` name the
page just answered (a cursor that never moves).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.vendors.loopback import VendorAPI
from tests.vendors.music_catalogue import CATALOGUE, Song, numeric_id, search

USER_URN = "soundcloud:users:4242"


@dataclass(slots=True)
class FakeSet:
    """A playlist ("set") of the fake user."""

    title: str
    owner: str = USER_URN
    track_urns: list[str] = field(default_factory=list)
    withheld: int = 0
    """Tracks counted in ``track_count`` but left out of ``tracks``."""
    unnamed: int = 0
    """Tracks listed in ``tracks`` without ``urn`` or ``id``."""

    @property
    def urn(self) -> str:
        """Its URN."""
        return f"soundcloud:playlists:{numeric_id('playlist:' + self.title)}"


def track_json(song: Song) -> dict[str, Any]:
    """SoundCloud's track object for a song (the first artist is the uploader)."""
    return {
        "kind": "track",
        "id": song.soundcloud_id,
        "urn": f"soundcloud:tracks:{song.soundcloud_id}",
        "title": song.title,
        "duration": song.duration_ms,
        "user": {
            "kind": "user",
            "urn": f"soundcloud:users:{numeric_id('user:' + song.artists[0])}",
            "username": song.artists[0],
        },
        "streamable": True,
    }


def _error(status: int, message: str, reason: str | None = None, **headers: str) -> JSONResponse:
    body = {"code": status, "message": message, "errors": [{"error_message": message}]}
    return JSONResponse(body, status_code=status, headers=headers or None)


class SoundCloudAPI(VendorAPI):
    """The loopback SoundCloud API (see the module docstring)."""

    auth_scheme = "OAuth"

    def __init__(
        self,
        *,
        tokens: Iterable[str] = ("soundcloud-token",),
        token_check: Callable[[str], bool] | None = None,
        songs: tuple[Song, ...] = CATALOGUE,
        latency_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.songs = songs
        self.by_urn = {f"soundcloud:tracks:{s.soundcloud_id}": s for s in songs}
        self.sets: list[FakeSet] = []
        self.likes: list[str] = []
        """Liked track URNs, newest first."""
        self.stuck_paging = False
        """When True, every ``next_href`` names the page just answered."""
        super().__init__(
            Starlette(
                routes=[
                    Route("/tracks", self._tracks, methods=["GET"]),
                    Route("/me", self._me, methods=["GET"]),
                    Route("/me/likes/tracks", self._my_likes, methods=["GET"]),
                    Route("/me/playlists", self._my_playlists, methods=["GET"]),
                    Route("/likes/tracks/{urn}", self._like, methods=["POST"]),
                    Route("/playlists/{urn}", self._playlist, methods=["GET", "PUT"]),
                ]
            ),
            tokens=tokens,
            token_check=token_check,
            latency_s=latency_s,
            port=port,
        )

    @property
    def base_url(self) -> str:
        """The API's base URL, as the adapter is configured with it."""
        return self.url

    def add_set(self, playlist: FakeSet) -> FakeSet:
        """Give the user a playlist; returns it."""
        self.sets.append(playlist)
        return playlist

    def like(self, *songs: Song) -> None:
        """Add songs to the user's likes (newest first)."""
        for song in songs:
            self.likes.insert(0, f"soundcloud:tracks:{song.soundcloud_id}")

    def error(
        self, status: int, message: str, reason: str | None = None, **headers: str
    ) -> Response:
        """SoundCloud's error object."""
        return _error(status, message, **headers)

    def unauthorized(self, token: str) -> Response:
        """SoundCloud's 401."""
        return _error(401, "401 - Unauthorized")

    def _partition(self, request: Request, items: list[dict[str, Any]]) -> Response:
        try:
            limit = int(request.query_params.get("limit", "50"))
            start = int(request.query_params.get("cursor", "0"))
        except ValueError:
            return _error(400, "bad limit or cursor")
        if not 1 <= limit <= 200 or start < 0:
            return _error(400, "bad limit")
        page = items[start : start + limit]
        body: dict[str, Any] = {"collection": page, "next_href": None}
        if start + limit < len(items):
            query = {k: v for k, v in request.query_params.items() if k != "cursor"}
            query["cursor"] = str(start if self.stuck_paging else start + limit)
            body["next_href"] = str(request.url.replace_query_params(**query))
        if request.query_params.get("linked_partitioning") != "true":
            return JSONResponse(page)
        return JSONResponse(body)

    async def _tracks(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        q = request.query_params.get("q", "")
        found = [track_json(s) for s in search(self.songs, q, len(self.songs))] if q else []
        return self.answer(self._partition(request, found))

    async def _me(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        return self.answer(
            JSONResponse({"kind": "user", "urn": USER_URN, "username": "parley-listener"})
        )

    async def _my_likes(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        return self.answer(
            self._partition(request, [track_json(self.by_urn[u]) for u in self.likes])
        )

    def _set_json(self, playlist: FakeSet, *, tracks: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "playlist",
            "urn": playlist.urn,
            "id": int(playlist.urn.rsplit(":", 1)[1]),
            "title": playlist.title,
            "track_count": len(playlist.track_urns) + playlist.withheld + playlist.unnamed,
            "user": {"kind": "user", "urn": playlist.owner},
        }
        if tracks:
            unnamed = [{"kind": "track", "title": "(not available)"}] * playlist.unnamed
            out["tracks"] = [track_json(self.by_urn[u]) for u in playlist.track_urns] + unnamed
        return out

    async def _my_playlists(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        show = request.query_params.get("show_tracks", "true") == "true"
        return self.answer(
            self._partition(request, [self._set_json(p, tracks=show) for p in self.sets])
        )

    async def _like(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        urn = request.path_params["urn"]
        if urn not in self.by_urn:
            return self.answer(_error(404, "404 - Not Found"))
        if urn not in self.likes:
            self.likes.insert(0, urn)
        return self.answer(JSONResponse({"status": "200 - OK"}))

    async def _playlist(self, request: Request) -> Response:
        refusal, body = await self.admit(request)
        if refusal is not None:
            return refusal
        playlist = next((p for p in self.sets if p.urn == request.path_params["urn"]), None)
        if playlist is None:
            return self.answer(_error(404, "404 - Not Found"))
        if request.method == "GET":
            return self.answer(JSONResponse(self._set_json(playlist, tracks=True)))
        if playlist.owner != USER_URN:
            return self.answer(_error(403, "403 - Forbidden"))
        inner = body.get("playlist") if isinstance(body, dict) else None
        tracks = inner.get("tracks") if isinstance(inner, dict) else None
        if not isinstance(tracks, list):
            return self.answer(_error(400, "playlist.tracks is required"))
        urns = [t.get("urn") if isinstance(t, dict) else None for t in tracks]
        if any(u not in self.by_urn for u in urns):
            return self.answer(_error(422, "unknown track"))
        playlist.track_urns = [str(u) for u in urns]
        return self.answer(JSONResponse(self._set_json(playlist, tracks=True)))
