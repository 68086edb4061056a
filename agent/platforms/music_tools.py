"""The music tools the agent calls: play, pause, next, add to a playlist, like, list playlists.

``music_tools(platforms, resolver)`` builds them as ``agent.tools.Tool``s over
the user's platforms (``MusicPlatform`` adapters) and a ``MusicResolver``
(search through the cache tiers). Each tool acts on one platform: the one the
request names (the ``platform`` argument: "on SoundCloud"), else the user's
preference (``ToolContext.preferences["platform"]``), else the default (the
first platform given).

Handlers check their arguments themselves (a model may send anything) and
turn every typed platform failure into a ``ToolError`` whose message the
agent can say as it is:

=============================  =================  ==============================================
failure                        ``code``           said
=============================  =================  ==============================================
no account                     ``not_connected``  your Spotify account isn't connected; link it
                                                  in the app
refused refresh (disconnected) ``not_connected``  Spotify no longer accepts your account; link
                                                  it again in the app
token refused after refresh    ``not_connected``  Spotify refused your account; link it again
no active device               ``no_device``      open Spotify on a device first, then ask again
action not in the API          ``unsupported``    SoundCloud doesn't let me pause from here ...
429                            ``rate_limited``   Spotify is busy right now; try again in a moment
5xx, time-out                  ``unavailable``    Spotify isn't answering right now; ...
nothing found                  ``not_found``      I couldn't find "..." on Spotify
bad arguments                  ``bad_arguments``  which song should I play?
=============================  =================  ==============================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent.llm import ToolSpec
from agent.platforms.base import (
    MusicPlatform,
    NoActiveDeviceError,
    NotConnectedError,
    PlatformAuthError,
    PlatformError,
    PlatformRateLimitedError,
    Playlist,
    Track,
    UnsupportedActionError,
)
from agent.platforms.search import MusicResolver
from agent.tools import Tool, ToolContext, ToolError, ToolHandler, ToolRegistry, ToolResult

Handler = ToolHandler

LABELS: Final = {"spotify": "Spotify", "soundcloud": "SoundCloud"}
"""How each platform is named aloud."""
MAX_QUERY_CHARS: Final = 200
"""Longer queries and playlist names are refused as bad arguments."""
LISTED_PLAYLISTS: Final = 20
"""Playlists named in ``list_playlists``' text for the model (all are in ``data``)."""
TOOL_TIMEOUT_S: Final = 8.0
_UNSUPPORTED_SAID: Final = {
    "play": "start playback",
    "pause": "pause playback",
    "next": "skip tracks",
    "now playing": "see what's playing",
}


def label(platform: str) -> str:
    """The platform's name as said aloud."""
    return LABELS.get(platform, platform.capitalize())


def speakable(tool: str, platform: str, exc: PlatformError) -> ToolError:
    """The ``ToolError`` for a typed platform failure (see the module docstring)."""
    name = label(platform)
    if isinstance(exc, NotConnectedError) and exc.relink:
        return ToolError(
            tool,
            f"{name} no longer accepts your account; link it again in the app",
            code="not_connected",
        )
    if isinstance(exc, NotConnectedError):
        return ToolError(
            tool, f"your {name} account isn't connected; link it in the app", code="not_connected"
        )
    if isinstance(exc, PlatformAuthError):
        return ToolError(
            tool, f"{name} refused your account; link it again in the app", code="not_connected"
        )
    if isinstance(exc, NoActiveDeviceError):
        return ToolError(tool, f"open {name} on a device first, then ask again", code="no_device")
    if isinstance(exc, UnsupportedActionError):
        what = _UNSUPPORTED_SAID.get(exc.action, exc.action)
        return ToolError(
            tool,
            f"{name} doesn't let me {what} from here; I can find songs, like them and add "
            f"them to your playlists there",
            code="unsupported",
        )
    if isinstance(exc, PlatformRateLimitedError):
        return ToolError(
            tool, f"{name} is busy right now; try again in a moment", code="rate_limited"
        )
    if exc.retryable:
        return ToolError(
            tool, f"{name} isn't answering right now; try again in a moment", code="unavailable"
        )
    return ToolError(tool, f"{name} refused that request", code="failed")


def _optional(tool: str, args: Mapping[str, Any], key: str, ask: str) -> str | None:
    """A text argument that may be left out (``bad_arguments`` with ``ask`` if unusable)."""
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_QUERY_CHARS:
        raise ToolError(tool, ask, code="bad_arguments")
    return value.strip()


def _required(tool: str, args: Mapping[str, Any], key: str, ask: str) -> str:
    """A text argument the call needs (``bad_arguments`` with ``ask`` if absent or unusable)."""
    value = _optional(tool, args, key, ask)
    if value is None:
        raise ToolError(tool, ask, code="bad_arguments")
    return value


class MusicTools:
    """The tools' shared state: the platforms, the resolver, the default platform."""

    def __init__(
        self,
        platforms: Mapping[str, MusicPlatform],
        resolver: MusicResolver,
        *,
        default_platform: str | None = None,
    ) -> None:
        if not platforms:
            raise ValueError("music tools need at least one platform")
        if default_platform is not None and default_platform not in platforms:
            raise ValueError(f"default platform {default_platform!r} is not configured")
        self.platforms = dict(platforms)
        self.resolver = resolver
        self.default_platform = default_platform or next(iter(platforms))

    # -- choosing the platform and the user

    def choose(self, tool: str, args: Mapping[str, Any], ctx: ToolContext) -> MusicPlatform:
        """The platform a call acts on: named in the call, else preferred, else the default."""
        named = args.get("platform")
        if named is not None:
            if not isinstance(named, str) or named.strip().lower() not in self.platforms:
                names = " or ".join(label(p) for p in self.platforms)
                raise ToolError(tool, f"I can use {names}", code="bad_arguments")
            return self.platforms[named.strip().lower()]
        preferred = ctx.preferences.get("platform")
        if isinstance(preferred, str) and preferred in self.platforms:
            return self.platforms[preferred]
        return self.platforms[self.default_platform]

    @staticmethod
    def user(tool: str, platform: MusicPlatform, ctx: ToolContext) -> str:
        """The caller's user id (``not_connected`` for an anonymous session)."""
        if not ctx.user_id:
            raise speakable(tool, platform.name, NotConnectedError(platform.name))
        return ctx.user_id

    async def _track(
        self, tool: str, platform: MusicPlatform, user_id: str, query: str | None
    ) -> tuple[Track, dict[str, Any]]:
        """The track a call means: the best search result, or (no query) what plays now."""
        if query is None:
            playing = await platform.now_playing(user_id)
            if playing is None:
                raise ToolError(
                    tool, "nothing is playing right now; which song do you mean?", code="not_found"
                )
            return playing, {"source": "now_playing"}
        found = await self.resolver.tracks(user_id, platform.name, query)
        if found.best is None:
            raise ToolError(
                tool, f'I couldn\'t find "{query}" on {label(platform.name)}', code="not_found"
            )
        return found.best, {
            "source": "search",
            "tier": found.tier.value,
            "timings_ms": dict(found.timings_ms),
        }

    async def _playlist(
        self, tool: str, platform: MusicPlatform, user_id: str, name: str
    ) -> Playlist:
        playlist = await self.resolver.playlist(user_id, platform.name, name)
        if playlist is None:
            raise ToolError(
                tool,
                f'you have no playlist called "{name}" on {label(platform.name)}',
                code="not_found",
            )
        return playlist

    # -- handlers

    async def play_track(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Find a song and play it."""
        query = _required("play_track", args, "query", "which song should I play?")
        platform = self.choose("play_track", args, ctx)
        user_id = self.user("play_track", platform, ctx)
        track, found = await self._track("play_track", platform, user_id, query)
        await platform.play(user_id, track=track)
        return ToolResult(
            content=f"Playing {track.describe()} on {label(platform.name)}.",
            action="play",
            data={"platform": platform.name, "track": track.to_dict(), **found},
        )

    async def play_playlist(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Play one of the user's playlists."""
        name = _required("play_playlist", args, "name", "which playlist should I play?")
        platform = self.choose("play_playlist", args, ctx)
        user_id = self.user("play_playlist", platform, ctx)
        playlist = await self._playlist("play_playlist", platform, user_id, name)
        await platform.play(user_id, playlist=playlist)
        return ToolResult(
            content=f"Playing your playlist {playlist.name}.",
            action="play_playlist",
            data={"platform": platform.name, "playlist": playlist.to_dict()},
        )

    async def pause(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Pause playback."""
        platform = self.choose("pause", args, ctx)
        await platform.pause(self.user("pause", platform, ctx))
        return ToolResult(content="Paused.", action="pause", data={"platform": platform.name})

    async def next_track(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Skip to the next track."""
        platform = self.choose("next_track", args, ctx)
        await platform.next_track(self.user("next_track", platform, ctx))
        return ToolResult(
            content="Skipped to the next track.", action="next", data={"platform": platform.name}
        )

    async def add_to_playlist(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Add a song (named, or the one playing) to one of the user's playlists."""
        tool = "add_to_playlist"
        name = _required(tool, args, "playlist", "which playlist should I add it to?")
        query = _optional(tool, args, "query", "which song should I add?")
        platform = self.choose(tool, args, ctx)
        user_id = self.user(tool, platform, ctx)
        playlist = await self._playlist(tool, platform, user_id, name)
        if not playlist.owned:
            raise ToolError(
                tool, f"the playlist {playlist.name} isn't yours to change", code="forbidden"
            )
        track, found = await self._track(tool, platform, user_id, query)
        await platform.add_to_playlist(user_id, playlist, [track])
        return ToolResult(
            content=f"Added {track.describe()} to {playlist.name}.",
            action="add_to_playlist",
            data={
                "platform": platform.name,
                "track": track.to_dict(),
                "playlist": playlist.to_dict(),
                **found,
            },
        )

    async def like_track(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Save a song (named, or the one playing) to the user's liked songs."""
        tool = "like_track"
        query = _optional(tool, args, "query", "which song should I like?")
        platform = self.choose(tool, args, ctx)
        user_id = self.user(tool, platform, ctx)
        track, found = await self._track(tool, platform, user_id, query)
        await platform.save_tracks(user_id, [track])
        return ToolResult(
            content=f"Added {track.describe()} to your liked songs.",
            action="like",
            data={"platform": platform.name, "track": track.to_dict(), **found},
        )

    async def list_playlists(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Name the user's playlists."""
        platform = self.choose("list_playlists", args, ctx)
        playlists = await platform.playlists(self.user("list_playlists", platform, ctx))
        names = [p.name for p in playlists]
        shown = ", ".join(names[:LISTED_PLAYLISTS])
        more = f" and {len(names) - LISTED_PLAYLISTS} more" if len(names) > LISTED_PLAYLISTS else ""
        text = (
            f"Your playlists on {label(platform.name)}: {shown}{more}."
            if names
            else f"You have no playlists on {label(platform.name)}."
        )
        return ToolResult(
            content=text,
            action=None,
            data={"platform": platform.name, "playlists": [p.to_dict() for p in playlists]},
        )

    # -- building the tools

    def _guarded(self, name: str, handler: Handler) -> Handler:
        """``handler`` with typed platform failures turned into speakable ``ToolError``s."""

        async def run(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
            if not isinstance(args, dict):
                raise ToolError(name, "I didn't understand that request", code="bad_arguments")
            try:
                return await handler(args, ctx)
            except PlatformError as exc:
                raise speakable(name, exc.platform, exc) from None

        return run

    def tools(self) -> list[Tool]:
        """Every music tool, in the order the model is offered them."""
        choice = {
            "platform": {
                "type": "string",
                "enum": sorted(self.platforms),
                "description": 'Only when the user names a platform ("on SoundCloud").',
            }
        }

        def spec(
            name: str, description: str, props: dict[str, Any], required: Sequence[str]
        ) -> ToolSpec:
            params: dict[str, Any] = {
                "type": "object",
                "properties": {**props, **choice},
                "additionalProperties": False,
            }
            if required:
                params["required"] = list(required)
            return ToolSpec(name, description, params)

        query = {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}
        entries: list[tuple[ToolSpec, Handler, bool, str | None]] = [
            (
                spec(
                    "play_track",
                    "Play a song. query: the song and artist as the user said them.",
                    {"query": {**query, "description": 'e.g. "shape of you by ed sheeran"'}},
                    ["query"],
                ),
                self.play_track,
                True,
                "Let me find that.",
            ),
            (
                spec(
                    "play_playlist",
                    "Play one of the user's playlists by name.",
                    {"name": {**query, "description": 'the playlist\'s name, e.g. "workout"'}},
                    ["name"],
                ),
                self.play_playlist,
                True,
                None,
            ),
            (spec("pause", "Pause the music.", {}, []), self.pause, True, None),
            (spec("next_track", "Skip to the next song.", {}, []), self.next_track, True, None),
            (
                spec(
                    "add_to_playlist",
                    "Add a song to one of the user's playlists. Leave out query for the song "
                    'playing now ("add this to my workout playlist").',
                    {
                        "playlist": {**query, "description": "the playlist's name"},
                        "query": {**query, "description": "the song, when the user names one"},
                    },
                    ["playlist"],
                ),
                self.add_to_playlist,
                False,
                None,
            ),
            (
                spec(
                    "like_track",
                    "Save a song to the user's liked songs. Leave out query for the song "
                    'playing now ("like this song").',
                    {"query": {**query, "description": "the song, when the user names one"}},
                    [],
                ),
                self.like_track,
                False,
                None,
            ),
            (
                spec("list_playlists", "Name the user's playlists.", {}, []),
                self.list_playlists,
                True,
                None,
            ),
        ]
        return [
            Tool(
                spec=s,
                handler=self._guarded(s.name, handler),
                timeout_s=TOOL_TIMEOUT_S,
                cancellable=cancellable,
                filler=filler,
            )
            for s, handler, cancellable, filler in entries
        ]


def music_tools(
    platforms: Mapping[str, MusicPlatform],
    resolver: MusicResolver,
    *,
    default_platform: str | None = None,
) -> list[Tool]:
    """The music tools over ``platforms`` (see the module docstring)."""
    return MusicTools(platforms, resolver, default_platform=default_platform).tools()


def music_registry(
    platforms: Mapping[str, MusicPlatform],
    resolver: MusicResolver,
    *,
    default_platform: str | None = None,
) -> ToolRegistry:
    """A registry holding the music tools alone (a caller with other tools registers these
    into its own with ``music_tools``)."""
    return ToolRegistry(music_tools(platforms, resolver, default_platform=default_platform))
