"""Search through the tiers (hot, SQL, library, platform) on both store backends, and the
music tools end to end: registry -> handler -> resolver -> the real token service (store +
loopback OAuth server) -> the loopback Spotify API."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.llm import ChatMessage, GenerationSettings, ToolCallDelta
from agent.platforms.base import MusicPlatform
from agent.platforms.music_tools import MusicTools, music_registry
from agent.platforms.search import SearchTier
from agent.platforms.soundcloud import SoundCloudPlatform
from agent.platforms.spotify import SpotifyPlatform
from agent.toolloop import TextSpeaker, ToolLoop, ToolSettings, ToolUse
from agent.tools import ToolContext, ToolError, ToolRegistry
from agent.turnclock import TurnClock
from signaling.metrics import ServerMetrics
from signaling.music_search import TieredMusicResolver, namespace
from signaling.oauth import OAuthClient
from signaling.platform_settings import SpotifySettings
from signaling.platform_tokens import PlatformTokens
from store.library import LibraryPlaylistRecord, LibraryTrackRecord, music_key
from store.platform_accounts import TokenGrant
from store.settings import StoreSettings
from store.store import Store
from store.tiered import TieredCache
from tests.fakes import ScriptedLLM, fake_models
from tests.music import MemoryTokens
from tests.server import running_server
from tests.textnorm import normalize
from tests.vendors.loopback import Fault
from tests.vendors.oauth_server import Grant, OAuthServer
from tests.vendors.soundcloud_api import SoundCloudAPI
from tests.vendors.spotify_api import FakePlaylist, SpotifyAPI

USER = "usr_listener"


def test_music_keys_meet_on_near_duplicates() -> None:
    assert music_key("Play ShaPE _oF-You") == music_key("play shape of you song") == "shape of you"
    assert music_key("shape of you by ed sheeran") == music_key("Shape of You - Ed Sheeran")
    assert music_key("put on Shape of You on Spotify") == "shape of you"
    assert music_key("play") == "play"  # a lone word is a title ("Play"), not a command


@dataclass
class Rig:
    store: Store
    api: SpotifyAPI
    spotify: SpotifyPlatform
    resolver: TieredMusicResolver
    metrics: ServerMetrics

    def platform_searches(self) -> int:
        return len(self.api.recorded("GET", "/search"))


@pytest.fixture(name="rig")
async def rig_fixture(store: Store) -> AsyncIterator[Rig]:
    await store.users.ensure(USER)
    async with SpotifyAPI(tokens={"spotify-token-1"}) as api:
        spotify = SpotifyPlatform(MemoryTokens("spotify-token-1"), base_url=api.base_url)
        metrics = ServerMetrics()
        resolver = TieredMusicResolver(
            {"spotify": spotify}, store.cache, store.library, observe=metrics.music_search
        )
        try:
            yield Rig(store, api, spotify, resolver, metrics)
        finally:
            await spotify.aclose()


async def test_repeats_and_near_duplicates_come_from_the_hot_tier(rig: Rig) -> None:
    first = await rig.resolver.tracks(USER, "spotify", "play shape of you")
    assert first.tier is SearchTier.PLATFORM
    assert first.best is not None and first.best.name == "Shape of You"
    assert set(first.timings_ms) == {"hot", "sql", "library", "platform", "total"}
    assert rig.platform_searches() == 1
    for spoken in ("play shape of you", "Play ShaPE _oF-You", "play shape of you song"):
        again = await rig.resolver.tracks(USER, "spotify", spoken)
        assert again.tier is SearchTier.HOT, spoken
        assert again.tracks == first.tracks
        assert set(again.timings_ms) == {"hot", "total"}
    assert rig.platform_searches() == 1  # never asked again
    text = rig.metrics.render().decode()
    assert 'parley_music_searches_total{tier="hot"} 3.0' in text
    assert 'parley_music_searches_total{tier="platform"} 1.0' in text
    assert 'parley_music_search_seconds_count{tier="platform"} 1.0' in text


async def test_a_cleared_hot_tier_falls_back_to_sql_and_is_refilled(rig: Rig) -> None:
    first = await rig.resolver.tracks(USER, "spotify", "blinding lights by the weeknd")
    assert first.tier is SearchTier.PLATFORM
    hot_key = TieredCache.key(namespace("spotify"), music_key("blinding lights by the weeknd"))
    await rig.store.hot.delete(hot_key)
    from_sql = await rig.resolver.tracks(USER, "spotify", "Blinding Lights, The Weeknd")
    assert from_sql.tier is SearchTier.SQL
    assert from_sql.tracks == first.tracks
    assert set(from_sql.timings_ms) == {"hot", "sql", "total"}
    refilled = await rig.resolver.tracks(USER, "spotify", "blinding lights the weeknd")
    assert refilled.tier is SearchTier.HOT
    assert rig.platform_searches() == 1


async def test_the_shared_cache_is_kept_per_market(rig: Rig) -> None:
    """Spotify answers a user's token in the user's country: an answer cached for an
    account in Sweden is never given to one in the United States."""
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    countries = {"usr_se": "SE", "usr_se2": "SE", "usr_us": "US", "usr_unknown": None}
    for user, code in countries.items():
        await rig.store.accounts.save(
            user,
            "spotify",
            TokenGrant("spotify-token-1", "refresh", expires),
            metadata={"country": code} if code else {},
        )
    resolver = TieredMusicResolver(
        {"spotify": rig.spotify}, rig.store.cache, rig.store.library, accounts=rig.store.accounts
    )
    tiers = [
        (await resolver.tracks(user, "spotify", "play shape of you")).tier
        for user in ("usr_se", "usr_us", "usr_se2", "usr_unknown")
    ]
    assert tiers == [
        SearchTier.PLATFORM,
        SearchTier.PLATFORM,  # another market: not the Swedish answer
        SearchTier.HOT,  # the same market shares it
        SearchTier.PLATFORM,  # no known market: not a country's answer either
    ]
    assert rig.platform_searches() == 3
    key = music_key("play shape of you")
    for space in ("spotify:SE", "spotify:US", "spotify"):
        assert await rig.store.hot.get(TieredCache.key("music:" + space, key)) is not None
    # The operator's market applies to accounts whose country is not known.
    rig.spotify.market = "SE"
    fresh = TieredMusicResolver(
        {"spotify": rig.spotify}, rig.store.cache, rig.store.library, accounts=rig.store.accounts
    )
    assert (await fresh.tracks("usr_unknown", "spotify", "shape of you")).tier is SearchTier.HOT
    assert await fresh.market("usr_us", "spotify") == "US"
    assert (await fresh.tracks("usr_unknown", "spotify", "halo")).tier is SearchTier.PLATFORM
    assert rig.api.recorded("GET", "/search")[-1].query["market"] == "SE"


async def test_the_library_answers_before_the_platform_and_is_not_shared(rig: Rig) -> None:
    song = rig.api.song("Bohemian Rhapsody")
    await rig.store.library.replace(
        USER,
        "spotify",
        [
            LibraryTrackRecord(
                song.spotify_id,
                f"spotify:track:{song.spotify_id}",
                song.title,
                song.artists,
                song.album,
                song.duration_ms,
            )
        ],
        [],
    )
    for _ in range(2):
        found = await rig.resolver.tracks(USER, "spotify", "play bohemian rhapsody by queen")
        assert found.tier is SearchTier.LIBRARY
        assert found.best is not None and found.best.uri == f"spotify:track:{song.spotify_id}"
    assert rig.platform_searches() == 0
    # Another user has no such library: the platform answers (nothing was cached from ours).
    await rig.store.users.ensure("usr_other")
    other = await rig.resolver.tracks("usr_other", "spotify", "play bohemian rhapsody by queen")
    assert other.tier is SearchTier.PLATFORM
    assert rig.platform_searches() == 1


async def test_playlists_resolve_from_the_library_then_the_platform(rig: Rig) -> None:
    rig.api.add_playlist(FakePlaylist("Workout Mix"))
    await rig.store.library.replace(
        USER,
        "spotify",
        [],
        [LibraryPlaylistRecord("pl1", "spotify:playlist:pl1", "Chill Evenings")],
    )
    chill = await rig.resolver.playlist(USER, "spotify", "my chill evenings playlist")
    assert chill is not None and chill.id == "pl1"
    assert rig.api.recorded("GET", "/me/playlists") == []
    workout = await rig.resolver.playlist(USER, "spotify", "workout")
    assert workout is not None and workout.name == "Workout Mix"
    assert await rig.resolver.playlist(USER, "spotify", "sleep") is None


async def test_nothing_found_is_not_cached(rig: Rig) -> None:
    for _ in range(2):
        found = await rig.resolver.tracks(USER, "spotify", "zzyzx unknown tune")
        assert found.tracks == () and found.tier is SearchTier.PLATFORM
    assert rig.platform_searches() == 2


# ---------------------------------------------------------------- the tools end to end


@dataclass
class ToolRig:
    store: Store
    oauth: OAuthServer
    api: SpotifyAPI
    registry: ToolRegistry
    tokens: PlatformTokens


@pytest.fixture(name="tools")
async def tools_fixture(store: Store) -> AsyncIterator[ToolRig]:
    async with (
        OAuthServer() as oauth,
        SpotifyAPI(
            token_check=lambda token: oauth.check_bearer(f"Bearer {token}") is not None
        ) as api,
        SoundCloudAPI() as sc,
        httpx.AsyncClient() as http,
    ):
        oauth.grants.append(
            Grant("listener-1", "user-modify-playback-state", "at-1", "rt-1", time.time() + 3600)
        )
        await store.accounts.save(
            USER,
            "spotify",
            TokenGrant("at-1", "rt-1", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)),
        )
        conf = SpotifySettings(
            client_id=oauth.client_id,
            client_secret=oauth.client_secret,
            token_url=oauth.base_url + "/api/token",
            api_url=api.base_url,
        )
        tokens = PlatformTokens(store.accounts, {"spotify": OAuthClient("spotify", conf, http)})
        spotify = SpotifyPlatform(tokens, base_url=conf.api_url)
        soundcloud = SoundCloudPlatform(tokens, base_url=sc.base_url)
        adapters: dict[str, MusicPlatform] = {"spotify": spotify, "soundcloud": soundcloud}
        resolver = TieredMusicResolver(adapters, store.cache, store.library)
        try:
            yield ToolRig(store, oauth, api, music_registry(adapters, resolver), tokens)
        finally:
            await spotify.aclose()
            await soundcloud.aclose()


def ctx(user: str | None = USER, **preferences: str) -> ToolContext:
    return ToolContext(session_id="ses_1", user_id=user, turn_id="t1", preferences=preferences)


async def test_play_the_track_found_by_search_then_from_the_cache(tools: ToolRig) -> None:
    play = tools.registry.get("play_track")
    assert play is not None
    result = await play.handler({"query": "shape of you by ed sheeran"}, ctx())
    song = tools.api.song("Shape of You")
    assert result.action == "play"
    assert result.data["track"]["uri"] == f"spotify:track:{song.spotify_id}"
    assert result.data["tier"] == "platform"
    (played,) = tools.api.recorded("PUT", "/me/player/play")
    assert played.body == {"uris": [f"spotify:track:{song.spotify_id}"]}
    assert played.token == "at-1"
    again = await play.handler({"query": "Play Shape of You by Ed Sheeran"}, ctx())
    assert again.data["tier"] == "hot"
    assert len(tools.api.recorded("GET", "/search")) == 1
    assert len(tools.api.recorded("PUT", "/me/player/play")) == 2


async def test_an_expired_token_is_refreshed_at_the_token_endpoint(tools: ToolRig) -> None:
    tools.oauth.expire("at-1")
    pause = tools.registry.get("pause")
    assert pause is not None
    result = await pause.handler({}, ctx())
    assert result.action == "pause"
    assert tools.tokens.refreshes == 1
    assert len(tools.oauth.grants_of("/api/token", "refresh_token")) == 1
    statuses = [(r.token, r.status) for r in tools.api.recorded("PUT", "/me/player/pause")]
    assert statuses[0] == ("at-1", 401) and statuses[1][1] == 204
    assert statuses[1][0] != "at-1"


async def test_add_this_to_a_playlist_and_like_this_song(tools: ToolRig) -> None:
    workout = tools.api.add_playlist(FakePlaylist("Workout"))
    add = tools.registry.get("add_to_playlist")
    like = tools.registry.get("like_track")
    play = tools.registry.get("play_track")
    assert add is not None and like is not None and play is not None
    await play.handler({"query": "uptown funk"}, ctx())
    added = await add.handler({"playlist": "my workout playlist"}, ctx())  # no query: now playing
    liked = await like.handler({}, ctx())
    song = tools.api.song("Uptown Funk")
    uri = f"spotify:track:{song.spotify_id}"
    assert added.action == "add_to_playlist" and added.data["source"] == "now_playing"
    assert workout.uris == [uri]
    assert liked.action == "like" and tools.api.liked == [uri]


async def test_failures_become_speakable_tool_errors(tools: ToolRig) -> None:
    pause = tools.registry.get("pause")
    play = tools.registry.get("play_track")
    assert pause is not None and play is not None
    tools.api.no_device()
    with pytest.raises(ToolError) as caught:
        await pause.handler({}, ctx())
    assert caught.value.code == "no_device"
    assert "open spotify on a device" in caught.value.message.lower()
    with pytest.raises(ToolError) as caught:
        await pause.handler({}, ctx(platform="soundcloud"))  # the user's preference
    assert caught.value.code == "unsupported"
    assert "soundcloud" in caught.value.message.lower()
    with pytest.raises(ToolError) as caught:
        await play.handler({"query": "yellow", "platform": "soundcloud"}, ctx())
    assert caught.value.code == "not_connected"  # no SoundCloud account linked
    assert "isn't connected" in caught.value.message and "link it" in caught.value.message
    with pytest.raises(ToolError) as caught:
        await pause.handler({}, ctx(user=None))
    assert caught.value.code == "not_connected"
    for garbage in (
        {},
        {"query": 42},
        {"query": " "},
        {"query": "x" * 500},
        {"query": "a", "platform": "tidal"},
    ):
        with pytest.raises(ToolError) as caught:
            await play.handler(garbage, ctx())
        assert caught.value.code == "bad_arguments"
    with pytest.raises(ToolError) as caught:
        await play.handler({"query": "zzyzx no such tune"}, ctx())
    assert caught.value.code == "not_found"


async def test_a_refused_refresh_says_link_it_again(tools: ToolRig) -> None:
    tools.oauth.revoke_all()
    play = tools.registry.get("play_track")
    assert play is not None
    tools.oauth.expire("at-1")
    with pytest.raises(ToolError) as caught:
        await play.handler({"query": "perfect ed sheeran"}, ctx())
    assert caught.value.code == "not_connected"
    info = await tools.store.accounts.info(USER, "spotify")
    assert info is not None and not info.connected


def test_tool_specs_are_function_calls() -> None:
    registry = music_registry({"spotify": _Unused()}, _Unused())  # type: ignore[dict-item, arg-type]
    names = [spec.name for spec in registry.specs()]
    assert names == [
        "play_track",
        "play_playlist",
        "pause",
        "next_track",
        "add_to_playlist",
        "like_track",
        "list_playlists",
    ]
    play = registry.get("play_track")
    assert play is not None
    params = play.spec.parameters
    assert params["required"] == ["query"]
    assert params["properties"]["platform"]["enum"] == ["spotify"]
    assert MusicTools({"spotify": _Unused()}, _Unused()).default_platform == "spotify"  # type: ignore[dict-item, arg-type]


class _Unused:
    """Stands where a platform or resolver is required but never called."""

    name = "spotify"


# ---------------------------------------------------------------- GET /v1/search


async def test_the_search_route(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store_settings = StoreSettings(PARLEY_DATA_DIR=data_dir, DATABASE_URL=None, REDIS_URL=None)
    async with SpotifyAPI(tokens={"spotify-token-1"}) as api:
        spotify = SpotifySettings(client_id="test-client", api_url=api.base_url)
        with running_server(fake_models(), store_settings, spotify=spotify) as url:
            async with httpx.AsyncClient(base_url=url) as http:
                created = (await http.post("/v1/sessions")).json()
                auth = {"Authorization": f"Bearer {created['token']}"}
                # No account yet: the session has no user.
                refused = await http.get("/v1/search", params={"q": "shape of you"}, headers=auth)
                assert refused.status_code == 409
                assert refused.json()["error"] == "not_connected"
                store = await Store.open(store_settings)
                try:
                    user = await store.users.for_session(created["id"])
                    assert user is not None
                    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
                    await store.accounts.save(
                        user, "spotify", TokenGrant("spotify-token-1", "rt", expires)
                    )
                finally:
                    await store.close()
                first = await http.get(
                    "/v1/search", params={"q": "Play ShaPE _oF-You", "limit": 3}, headers=auth
                )
                assert first.status_code == 200, first.text
                body = first.json()
                assert body["tier"] == "platform" and body["platform"] == "spotify"
                assert body["tracks"][0]["name"] == "Shape of You"
                assert len(body["tracks"]) <= 3
                again = await http.get(
                    "/v1/search", params={"q": "play shape of you song"}, headers=auth
                )
                assert again.json()["tier"] == "hot"
                assert len(api.recorded("GET", "/search")) == 1
                cases: list[tuple[dict[str, str | int], int]] = [
                    ({"q": "x", "platform": "tidal"}, 404),
                    ({"q": "x", "platform": "soundcloud"}, 404),  # known, not configured
                    ({"q": "x", "user_id": user}, 400),  # user_id is for admins
                    ({"q": "x", "limit": 0}, 422),
                    ({"q": " "}, 400),
                ]
                for params, status in cases:
                    got = await http.get("/v1/search", params=params, headers=auth)
                    assert got.status_code == status, (params, got.text)
                    assert "error" in got.json() or "detail" in got.json()
                unauthenticated = await http.get("/v1/search", params={"q": "x"})
                assert unauthenticated.status_code == 401
                api.fail(Fault(503, "/v1/search"))
                down = await http.get("/v1/search", params={"q": "toxic"}, headers=auth)
                assert down.status_code == 503 and down.headers["Retry-After"]
                api.fail(Fault(429, "/v1/search", retry_after="40"))
                limited = await http.get("/v1/search", params={"q": "roar"}, headers=auth)
                assert limited.status_code == 429 and limited.headers["Retry-After"] == "40"
                metrics = (await http.get("/metrics")).text
                assert 'parley_music_searches_total{tier="hot"} 1.0' in metrics


async def test_a_refused_refresh_is_said_through_the_reply_loop(tools: ToolRig) -> None:
    """The platform refuses the account: the model reads "link it again", and a model that
    then stays silent still has the agent say it; the next request says it without asking."""
    tools.oauth.revoke_all()  # the user removed the app at Spotify
    tools.oauth.expire("at-1")
    play = ToolCallDelta(0, "c0", "play_track", '{"query": "perfect by ed sheeran"}')
    said: list[str] = []
    for _ in range(2):
        llm = ScriptedLLM([[play], ""])  # a call, then silence
        words = TextSpeaker()
        loop = ToolLoop(
            llm,
            GenerationSettings(),
            TurnClock.now(),
            tools=ToolUse(tools.registry, ToolSettings(), ctx()),
            offer=tools.registry.specs(),
            emit=lambda event: None,
        )
        await loop.run([ChatMessage("user", "play perfect by ed sheeran")], words)
        said.append(normalize(words.text))
        (round_,) = loop.rounds
        (result,) = round_.results.values()
        assert result.code == "not_connected"
        (read,) = [m for m in llm.requests[-1].messages if m.role == "tool"]
        assert "link it again" in read.content  # what the model was told
    for text in said:
        assert "spotify" in text and "link it again" in text
        assert normalize(ToolSettings().clarification) not in text
    info = await tools.store.accounts.info(USER, "spotify")
    assert info is not None and not info.connected
    assert len(tools.oauth.grants_of("/api/token", "refresh_token")) == 1  # not asked again
