"""The music platform contract: tracks, playlists, the actions tools take, typed errors.

Adapters (``agent.platforms.spotify``, ``agent.platforms.soundcloud``) implement
``MusicPlatform`` for one vendor. They get a valid access token for a user from
``AccessTokens`` before each request and, on a 401, ask it once for a fresh one
(``refreshed``) before giving up with ``PlatformAuthError``. Vendor HTTP errors
are translated here: 429 -> ``PlatformRateLimitedError`` (with Retry-After),
404 on a player call -> ``NoActiveDeviceError``, 5xx/time-outs -> retryable
``PlatformError``. Messages never carry tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent.errors import AgentError


@dataclass(frozen=True, slots=True)
class Track:
    """A playable track on one platform."""

    platform: str
    id: str
    uri: str
    """The vendor's own reference used to play it (``spotify:track:...``, a SoundCloud URN)."""
    name: str
    artists: tuple[str, ...] = ()
    album: str | None = None
    duration_ms: int | None = None

    def describe(self) -> str:
        """``"Shape of You by Ed Sheeran"``: how the agent names it aloud."""
        return f"{self.name} by {', '.join(self.artists)}" if self.artists else self.name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (cache tiers, API responses)."""
        return {
            "platform": self.platform,
            "id": self.id,
            "uri": self.uri,
            "name": self.name,
            "artists": list(self.artists),
            "album": self.album,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Track:
        """The inverse of ``to_dict``; ``KeyError``/``TypeError`` on a malformed dict."""
        return cls(
            platform=str(data["platform"]),
            id=str(data["id"]),
            uri=str(data["uri"]),
            name=str(data["name"]),
            artists=tuple(str(a) for a in data.get("artists") or ()),
            album=data.get("album"),
            duration_ms=data.get("duration_ms"),
        )


@dataclass(frozen=True, slots=True)
class Playlist:
    """A user's playlist on one platform."""

    platform: str
    id: str
    uri: str
    name: str
    track_count: int | None = None
    owned: bool = True
    """Whether the user may add tracks to it."""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (API responses, tool results)."""
        return {
            "platform": self.platform,
            "id": self.id,
            "uri": self.uri,
            "name": self.name,
            "track_count": self.track_count,
            "owned": self.owned,
        }


class PlatformError(AgentError):
    """A platform request failed; ``retryable`` when the same request may succeed later."""

    def __init__(
        self,
        platform: str,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{platform}: {message}")
        self.platform = platform
        self.message = message
        self.retryable = retryable
        self.status = status


class NotConnectedError(PlatformError):
    """The user has no usable account on this platform (never linked, revoked, or its
    refresh was refused: the account is marked disconnected and must be linked again).

    ``relink`` says the user had linked the account and must link it again (the
    platform refused it); False for an account never linked or removed.
    """

    def __init__(
        self, platform: str, message: str = "account not connected", *, relink: bool = False
    ) -> None:
        super().__init__(platform, message, retryable=False, status=401)
        self.relink = relink


class PlatformAuthError(PlatformError):
    """The platform refused the token even after a refresh."""

    def __init__(self, platform: str, message: str = "token refused") -> None:
        super().__init__(platform, message, retryable=False, status=401)


class PlatformRateLimitedError(PlatformError):
    """429 from the platform; ``retry_after_s`` from its Retry-After header."""

    def __init__(self, platform: str, retry_after_s: float | None) -> None:
        super().__init__(platform, "rate limited", retryable=True, status=429)
        self.retry_after_s = retry_after_s


class NoActiveDeviceError(PlatformError):
    """A player action found no device to play on (Spotify's 404 on /me/player)."""

    def __init__(self, platform: str) -> None:
        super().__init__(platform, "no active device", retryable=False, status=404)


class UnsupportedActionError(PlatformError):
    """The platform's API does not offer this action (e.g. remote playback on SoundCloud)."""

    def __init__(self, platform: str, action: str) -> None:
        super().__init__(platform, f"{action} is not supported", retryable=False)
        self.action = action


@runtime_checkable
class AccessTokens(Protocol):
    """Hands out a user's valid access token for a platform (refreshing it when due).

    Implemented over the store's encrypted platform accounts; raises
    ``NotConnectedError`` when the user has no usable account.
    """

    async def access_token(self, platform: str, user_id: str) -> str:
        """A token valid for at least a minute (refreshed first when it is not)."""
        ...

    async def refreshed(self, platform: str, user_id: str, rejected: str) -> str:
        """A new token after the platform refused ``rejected`` (a 401): refresh now,
        unless another request already did. A refused refresh marks the account
        disconnected and raises ``NotConnectedError``."""
        ...


@runtime_checkable
class MusicPlatform(Protocol):
    """What the music tools do on one platform, for one user at a time."""

    name: str
    """``"spotify"``, ``"soundcloud"``."""

    async def search_tracks(self, user_id: str, query: str, limit: int = 5) -> list[Track]:
        """Tracks matching a free-text query, best first."""
        ...

    async def play(
        self, user_id: str, *, track: Track | None = None, playlist: Playlist | None = None
    ) -> None:
        """Start a track or a playlist (neither: resume) on the user's device."""
        ...

    async def pause(self, user_id: str) -> None:
        """Pause playback."""
        ...

    async def next_track(self, user_id: str) -> None:
        """Skip to the next track."""
        ...

    async def add_to_playlist(
        self, user_id: str, playlist: Playlist, tracks: Sequence[Track]
    ) -> None:
        """Append tracks to one of the user's playlists."""
        ...

    async def save_tracks(self, user_id: str, tracks: Sequence[Track]) -> None:
        """Like / save tracks to the user's library."""
        ...

    async def playlists(self, user_id: str) -> list[Playlist]:
        """The user's playlists."""
        ...

    async def liked_tracks(self, user_id: str, limit: int = 500) -> list[Track]:
        """The user's liked / saved tracks, newest first (library sync)."""
        ...

    async def now_playing(self, user_id: str) -> Track | None:
        """The track playing now, if any ("like this song")."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP client; idempotent."""
        ...
