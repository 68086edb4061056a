"""A loopback Spotify Web API for tests and benchmarks.

Speaks the documented endpoints under ``/v1`` with the documented shapes:

* ``GET /v1/search?q=&type=track&limit=&offset=`` (limit 1-10, as Spotify
  documents since February 2026) -> ``{"tracks": {items, total, limit, offset,
  next, previous, href}}``;
* ``GET /v1/me`` -> the user object;
* ``PUT /v1/me/player/play`` (``uris`` or ``context_uri`` or nothing: resume;
  ``?device_id=``), ``PUT /v1/me/player/pause``, ``POST /v1/me/player/next``
  -> 204; 404 ``NO_ACTIVE_DEVICE`` while the user has no device;
* ``GET /v1/me/player/currently-playing`` -> the playing context, or 204;
* ``POST /v1/playlists/{id}/items`` ``{"uris"}`` -> 201 ``{"snapshot_id"}``
  (403 on a playlist the user neither owns nor collaborates on, 404 unknown);
* ``PUT /v1/me/library?uris=`` -> 200 (the tracks join the liked songs);
* ``GET /v1/me/playlists`` and ``GET /v1/me/tracks`` (``limit`` 1-50,
  ``offset``) -> paging objects; playlists report their size under
  ``items.total`` (the current field).

Every request needs ``Authorization: Bearer <token>``; a token is valid when
``token_check`` says so (default: it is in ``tokens``), so a test can wire
the fake to a loopback OAuth server's issued tokens. Others get 401 with
Spotify's error object. ``fail(Fault(...))`` scripts the next answers of a
route (e.g. 429 with ``Retry-After``, 500); ``latency_s`` delays every answer
(a realistic round trip for benchmarks). ``requests`` records what arrived
(the plumbing is ``tests.vendors.loopback.VendorAPI``'s). ``stuck_paging``
makes the library lists ignore ``offset`` (every page is the first), a
misbehaving server the adapter must not follow for ever.
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
from tests.vendors.music_catalogue import CATALOGUE, Song, base62_id, search

USER_ID = "parley-listener"


@dataclass(slots=True)
class FakePlaylist:
    """A playlist of the fake user (or of another user, when ``owner`` differs)."""

    name: str
    owner: str = USER_ID
    collaborative: bool = False
    uris: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """Its Spotify id."""
        return base62_id("playlist:" + self.name)


def track_json(song: Song) -> dict[str, Any]:
    """Spotify's track object for a song."""
    artists = [
        {"id": base62_id("artist:" + a), "name": a, "type": "artist", "uri": f"spotify:artist:{a}"}
        for a in song.artists
    ]
    return {
        "id": song.spotify_id,
        "uri": f"spotify:track:{song.spotify_id}",
        "name": song.title,
        "type": "track",
        "artists": artists,
        "album": {"id": base62_id("album:" + song.album), "name": song.album, "type": "album"},
        "duration_ms": song.duration_ms,
        "is_local": False,
    }


def _error(status: int, message: str, reason: str | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "message": message}
    if reason:
        body["reason"] = reason
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)


class SpotifyAPI(VendorAPI):
    """The loopback Spotify Web API (see the module docstring)."""

    path_prefix = "/v1"

    def __init__(
        self,
        *,
        tokens: Iterable[str] = ("spotify-token",),
        token_check: Callable[[str], bool] | None = None,
        songs: tuple[Song, ...] = CATALOGUE,
        latency_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.songs = songs
        self.by_uri = {f"spotify:track:{s.spotify_id}": s for s in songs}
        self.devices: list[dict[str, Any]] = [
            {"id": "device-kitchen", "name": "Kitchen speaker", "is_active": True}
        ]
        self.playing: str | None = None
        """URI of the current track."""
        self.context: str | None = None
        self.is_playing = False
        self.playlists: list[FakePlaylist] = []
        self.liked: list[str] = []
        """Liked track URIs, newest first."""
        self.stuck_paging = False
        """When True, the library lists answer their first page whatever the ``offset``,
        with a ``total`` of over 10,000."""
        super().__init__(
            Starlette(
                routes=[
                    Route("/v1/search", self._search, methods=["GET"]),
                    Route("/v1/me", self._me, methods=["GET"]),
                    Route("/v1/me/player/play", self._play, methods=["PUT"]),
                    Route("/v1/me/player/pause", self._pause, methods=["PUT"]),
                    Route("/v1/me/player/next", self._next, methods=["POST"]),
                    Route(
                        "/v1/me/player/currently-playing", self._currently_playing, methods=["GET"]
                    ),
                    Route("/v1/playlists/{playlist_id}/items", self._add_items, methods=["POST"]),
                    Route("/v1/me/library", self._save, methods=["PUT"]),
                    Route("/v1/me/playlists", self._my_playlists, methods=["GET"]),
                    Route("/v1/me/tracks", self._my_tracks, methods=["GET"]),
                ]
            ),
            tokens=tokens,
            token_check=token_check,
            latency_s=latency_s,
            port=port,
        )

    # -- control

    @property
    def base_url(self) -> str:
        """The API's base URL (``.../v1``), as the adapter is configured with it."""
        return self.url + "/v1"

    def no_device(self) -> None:
        """The user closes Spotify everywhere: player calls answer 404 NO_ACTIVE_DEVICE."""
        self.devices.clear()

    def add_playlist(self, playlist: FakePlaylist) -> FakePlaylist:
        """Give the user a playlist; returns it."""
        self.playlists.append(playlist)
        return playlist

    def like(self, *songs: Song) -> None:
        """Add songs to the user's liked songs (newest first)."""
        for song in songs:
            self.liked.insert(0, f"spotify:track:{song.spotify_id}")

    def song(self, title: str) -> Song:
        """A catalogue song by title."""
        return next(s for s in self.songs if s.title == title)

    # -- plumbing

    def error(
        self, status: int, message: str, reason: str | None = None, **headers: str
    ) -> Response:
        """Spotify's error object."""
        return _error(status, message, reason, **headers)

    def unauthorized(self, token: str) -> Response:
        """Spotify's 401s: no token, or one it does not accept."""
        return _error(401, "The access token expired" if token else "No token provided")

    def _page(
        self, request: Request, items: list[Any], limit_max: int
    ) -> JSONResponse | dict[str, Any]:
        try:
            limit = int(request.query_params.get("limit", "20"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return _error(400, "Invalid limit or offset")
        if not 1 <= limit <= limit_max or offset < 0:
            return _error(400, "Invalid limit")
        total = len(items)
        if self.stuck_paging:  # the first page whatever was asked, and a total that lies
            offset, total = 0, total + 10_000
        base = str(request.url.replace(query=""))
        nxt = (
            f"{base}?offset={offset + limit}&limit={limit}" if offset + limit < len(items) else None
        )
        prev = f"{base}?offset={max(0, offset - limit)}&limit={limit}" if offset > 0 else None
        return {
            "href": str(request.url),
            "items": items[offset : offset + limit],
            "limit": limit,
            "offset": offset,
            "total": total,
            "next": nxt,
            "previous": prev,
        }

    def _device_error(self, request: Request) -> Response | None:
        if not self.devices:
            return _error(404, "Player command failed: No active device found", "NO_ACTIVE_DEVICE")
        wanted = request.query_params.get("device_id")
        if wanted is not None and all(d["id"] != wanted for d in self.devices):
            return _error(404, "Device not found")
        return None

    async def _player_refusal(self, request: Request) -> Response | None:
        """The answer refusing a player command (token, scripted fault, no device), if any."""
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        no_device = self._device_error(request)
        return None if no_device is None else self.answer(no_device)

    # -- endpoints

    async def _search(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        q = request.query_params.get("q", "")
        if not q.strip():
            return self.answer(_error(400, "No search query"))
        if request.query_params.get("type") != "track":
            return self.answer(_error(400, "Bad search type field"))
        found = [track_json(s) for s in search(self.songs, q, len(self.songs))]
        page = self._page(request, found, 10)
        if isinstance(page, Response):
            return self.answer(page)
        return self.answer(JSONResponse({"tracks": page}))

    async def _me(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        return self.answer(
            JSONResponse(
                {
                    "id": USER_ID,
                    "display_name": "Parley Listener",
                    "type": "user",
                    "uri": f"spotify:user:{USER_ID}",
                }
            )
        )

    async def _play(self, request: Request) -> Response:
        refusal, body = await self.admit(request)
        if refusal is not None:
            return refusal
        no_device = self._device_error(request)
        if no_device is not None:
            return self.answer(no_device)
        if body is not None and not isinstance(body, dict):
            return self.answer(_error(400, "Malformed json"))
        body = body or {}
        if "uris" in body:
            uris = body["uris"]
            if not isinstance(uris, list) or not uris or any(u not in self.by_uri for u in uris):
                return self.answer(_error(400, "Invalid track uri"))
            self.playing, self.context = uris[0], None
        elif "context_uri" in body:
            playlist = next(
                (p for p in self.playlists if f"spotify:playlist:{p.id}" == body["context_uri"]),
                None,
            )
            if playlist is None:
                return self.answer(_error(404, "Context not found"))
            self.context = body["context_uri"]
            self.playing = playlist.uris[0] if playlist.uris else None
        elif self.playing is None:
            return self.answer(_error(404, "Nothing to resume"))
        self.is_playing = True
        return self.answer(Response(status_code=204))

    async def _pause(self, request: Request) -> Response:
        refusal = await self._player_refusal(request)
        if refusal is not None:
            return refusal
        self.is_playing = False
        return self.answer(Response(status_code=204))

    async def _next(self, request: Request) -> Response:
        refusal = await self._player_refusal(request)
        if refusal is not None:
            return refusal
        order = [f"spotify:track:{s.spotify_id}" for s in self.songs]
        if self.context is not None:
            playlist = next(p for p in self.playlists if f"spotify:playlist:{p.id}" == self.context)
            order = playlist.uris or order
        at = order.index(self.playing) if self.playing in order else -1
        self.playing = order[(at + 1) % len(order)]
        self.is_playing = True
        return self.answer(Response(status_code=204))

    async def _currently_playing(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        if self.playing is None or not self.devices:
            return self.answer(Response(status_code=204))
        context = {"type": "playlist", "uri": self.context} if self.context else None
        return self.answer(
            JSONResponse(
                {
                    "is_playing": self.is_playing,
                    "progress_ms": 1000,
                    "currently_playing_type": "track",
                    "context": context,
                    "item": track_json(self.by_uri[self.playing]),
                }
            )
        )

    async def _add_items(self, request: Request) -> Response:
        refusal, body = await self.admit(request)
        if refusal is not None:
            return refusal
        playlist = next(
            (p for p in self.playlists if p.id == request.path_params["playlist_id"]), None
        )
        if playlist is None:
            return self.answer(_error(404, "Not found."))
        if playlist.owner != USER_ID and not playlist.collaborative:
            return self.answer(_error(403, "You cannot add tracks to a playlist you don't own."))
        uris = body.get("uris") if isinstance(body, dict) else None
        if not isinstance(uris, list) or not 1 <= len(uris) <= 100:
            return self.answer(_error(400, "You can add a maximum of 100 tracks per request."))
        if any(u not in self.by_uri for u in uris):
            return self.answer(_error(400, "Invalid track uri"))
        playlist.uris.extend(uris)
        snapshot = base62_id(f"{playlist.id}:{len(playlist.uris)}")
        return self.answer(JSONResponse({"snapshot_id": snapshot}, status_code=201))

    async def _save(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        uris = [u for u in request.query_params.get("uris", "").split(",") if u]
        if not 1 <= len(uris) <= 40:
            return self.answer(_error(400, "uris must hold 1 to 40 Spotify URIs"))
        if any(u not in self.by_uri for u in uris):
            return self.answer(_error(400, "Invalid uri"))
        for uri in uris:
            if uri not in self.liked:
                self.liked.insert(0, uri)
        return self.answer(Response(status_code=200))

    async def _my_playlists(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        items = [
            {
                "id": p.id,
                "uri": f"spotify:playlist:{p.id}",
                "name": p.name,
                "type": "playlist",
                "collaborative": p.collaborative,
                "owner": {"id": p.owner, "type": "user"},
                "items": {"href": f"/v1/playlists/{p.id}/items", "total": len(p.uris)},
                "tracks": None,
            }
            for p in self.playlists
        ]
        page = self._page(request, items, 50)
        return self.answer(page if isinstance(page, Response) else JSONResponse(page))

    async def _my_tracks(self, request: Request) -> Response:
        refusal, _ = await self.admit(request)
        if refusal is not None:
            return refusal
        items = [
            {"added_at": "2026-11-01T12:00:00Z", "track": track_json(self.by_uri[uri])}
            for uri in self.liked
        ]
        page = self._page(request, items, 50)
        return self.answer(page if isinstance(page, Response) else JSONResponse(page))
