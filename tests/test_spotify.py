"""The Spotify adapter against the loopback Spotify Web API: every action, pagination,
token refresh, rate limits, a missing device, server errors and time-outs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from agent.platforms.base import (
    NoActiveDeviceError,
    NotConnectedError,
    PlatformAuthError,
    PlatformError,
    PlatformRateLimitedError,
    Track,
)
from agent.platforms.http import MAX_PAGES
from agent.platforms.spotify import PAGE, SpotifyPlatform
from tests.music import MemoryTokens, many_songs
from tests.vendors.loopback import Fault
from tests.vendors.spotify_api import FakePlaylist, SpotifyAPI

USER = "usr_test"


@pytest.fixture(name="api")
async def api_fixture() -> AsyncIterator[SpotifyAPI]:
    async with SpotifyAPI(tokens={"spotify-token-1"}) as api:
        yield api


def adapter(api: SpotifyAPI, **kwargs: object) -> tuple[SpotifyPlatform, MemoryTokens]:
    tokens = MemoryTokens("spotify-token-1", issue=api.tokens.add)
    return SpotifyPlatform(tokens, base_url=api.base_url, **kwargs), tokens  # type: ignore[arg-type]


async def test_search_parses_tracks_and_bounds_the_limit(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    try:
        found = await spotify.search_tracks(USER, "shape of you ed sheeran", limit=25)
    finally:
        await spotify.aclose()
    song = api.song("Shape of You")
    assert found[0] == Track(
        "spotify",
        song.spotify_id,
        f"spotify:track:{song.spotify_id}",
        "Shape of You",
        ("Ed Sheeran",),
        "Divide",
        song.duration_ms,
    )
    assert found[0].describe() == "Shape of You by Ed Sheeran"
    (request,) = api.recorded("GET", "/search")
    assert request.query["type"] == "track"
    assert request.query["limit"] == "10"  # Spotify's documented maximum
    assert request.token == "spotify-token-1"


async def test_play_track_playlist_and_resume_on_a_device(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api, device_id="device-kitchen")
    workout = api.add_playlist(
        FakePlaylist("Workout", uris=[f"spotify:track:{api.songs[2].spotify_id}"])
    )
    try:
        (track,) = await spotify.search_tracks(USER, "blinding lights", limit=1)
        await spotify.play(USER, track=track)
        assert api.playing == track.uri and api.is_playing
        await spotify.pause(USER)
        assert not api.is_playing
        await spotify.play(USER)  # resume
        assert api.is_playing
        (playlist,) = [p for p in await spotify.playlists(USER) if p.name == "Workout"]
        await spotify.play(USER, playlist=playlist)
        assert api.context == f"spotify:playlist:{workout.id}"
        await spotify.next_track(USER)
    finally:
        await spotify.aclose()
    plays = api.recorded("PUT", "/me/player/play")
    assert [r.body for r in plays] == [
        {"uris": [track.uri]},
        None,
        {"context_uri": f"spotify:playlist:{workout.id}"},
    ]
    assert all(r.query == {"device_id": "device-kitchen"} for r in plays)
    assert [r.status for r in api.recorded("POST", "/me/player/next")] == [204]


async def test_add_to_playlist_in_batches_of_100_and_save_to_library(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    mine = api.add_playlist(FakePlaylist("Road Trip"))
    try:
        (track,) = await spotify.search_tracks(USER, "africa toto", limit=1)
        (playlist,) = await spotify.playlists(USER)
        await spotify.add_to_playlist(USER, playlist, [track] * 150)
        await spotify.save_tracks(USER, [track])
    finally:
        await spotify.aclose()
    adds = api.recorded("POST", f"/playlists/{mine.id}/items")
    assert [len(r.body["uris"]) for r in adds] == [100, 50]
    assert all(r.status == 201 for r in adds)
    assert len(mine.uris) == 150
    (save,) = api.recorded("PUT", "/me/library")
    assert save.query["uris"] == track.uri
    assert api.liked[0] == track.uri


async def test_playlists_and_liked_tracks_follow_every_page() -> None:
    songs = many_songs(130)
    async with SpotifyAPI(tokens={"spotify-token-1"}, songs=songs) as api:
        for i in range(120):
            api.add_playlist(FakePlaylist(f"List {i}"))
        api.add_playlist(FakePlaylist("Theirs", owner="someone-else"))
        api.add_playlist(FakePlaylist("Shared", owner="someone-else", collaborative=True))
        api.like(*songs)
        spotify, _ = adapter(api)
        try:
            playlists = await spotify.playlists(USER)
            liked = await spotify.liked_tracks(USER, limit=500)
            first_60 = await spotify.liked_tracks(USER, limit=60)
        finally:
            await spotify.aclose()
        assert len(playlists) == 122
        assert len({p.id for p in playlists}) == 122
        owned = {p.name: p.owned for p in playlists}
        assert owned["List 0"] and owned["Shared"] and not owned["Theirs"]
        assert [t.name for t in liked] == [s.title for s in reversed(songs)]  # newest first
        assert len(first_60) == 60
        pages = api.recorded("GET", "/me/playlists")
        assert [r.query["offset"] for r in pages] == ["0", "50", "100"]
        assert len(api.recorded("GET", "/me/tracks")) == 3 + 2  # 130 in 3 pages; 60 in 2


async def test_now_playing_is_none_on_204_and_the_track_while_playing(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    try:
        assert await spotify.now_playing(USER) is None
        (track,) = await spotify.search_tracks(USER, "hotel california", limit=1)
        await spotify.play(USER, track=track)
        assert await spotify.now_playing(USER) == track
    finally:
        await spotify.aclose()


async def test_expired_token_is_refreshed_once_and_the_request_retried(api: SpotifyAPI) -> None:
    spotify, tokens = adapter(api)
    api.tokens.clear()  # the platform no longer accepts spotify-token-1
    try:
        found = await spotify.search_tracks(USER, "yellow coldplay")
    finally:
        await spotify.aclose()
    assert found and found[0].name == "Yellow"
    assert tokens.refreshes == 1
    assert tokens.rejected == ["spotify-token-1"]
    searches = api.recorded("GET", "/search")
    assert [(r.token, r.status) for r in searches] == [
        ("spotify-token-1", 401),
        ("spotify-token-2", 200),
    ]


async def test_a_token_refused_after_refresh_is_an_auth_error(api: SpotifyAPI) -> None:
    tokens = MemoryTokens("spotify-token-1")  # new tokens are never told to the fake
    spotify = SpotifyPlatform(tokens, base_url=api.base_url)
    api.tokens.clear()
    try:
        with pytest.raises(PlatformAuthError) as caught:
            await spotify.pause(USER)
    finally:
        await spotify.aclose()
    assert tokens.refreshes == 1
    assert "token-" not in str(caught.value)
    assert len(api.recorded("PUT", "/me/player/pause")) == 2


async def test_a_refused_refresh_is_not_connected(api: SpotifyAPI) -> None:
    spotify, tokens = adapter(api)
    tokens.refusing = True
    api.tokens.clear()
    try:
        with pytest.raises(NotConnectedError):
            await spotify.playlists(USER)
    finally:
        await spotify.aclose()


async def test_short_retry_after_is_waited_once(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    api.fail(Fault(429, "/v1/search", retry_after="0.3"))
    started = time.monotonic()
    try:
        found = await spotify.search_tracks(USER, "toxic")
    finally:
        await spotify.aclose()
    assert found[0].name == "Toxic"
    assert time.monotonic() - started >= 0.3
    assert api.recorded("GET", "/search")[0].status == 429


async def test_long_retry_after_is_raised(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    api.fail(Fault(429, "/v1/search", retry_after="30"))
    try:
        with pytest.raises(PlatformRateLimitedError) as caught:
            await spotify.search_tracks(USER, "toxic")
    finally:
        await spotify.aclose()
    assert caught.value.retry_after_s == 30
    assert caught.value.retryable
    assert len(api.recorded("GET", "/search")) == 1


async def test_a_second_429_is_raised(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    api.fail(Fault(429, "/v1/me", retry_after="0"), Fault(429, "/v1/me", retry_after="0"))
    try:
        with pytest.raises(PlatformRateLimitedError):
            await spotify.playlists(USER)
    finally:
        await spotify.aclose()


async def test_no_active_device(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    api.no_device()
    try:
        (track,) = await spotify.search_tracks(USER, "roar katy perry", limit=1)
        for action in (
            spotify.play(USER, track=track),
            spotify.pause(USER),
            spotify.next_track(USER),
        ):
            with pytest.raises(NoActiveDeviceError):
                await action
    finally:
        await spotify.aclose()
    assert api.recorded("PUT", "/me/player/play")[0].status == 404


async def test_premium_required_is_a_plain_refusal(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    api.fail(Fault(403, "/v1/me/player", reason="PREMIUM_REQUIRED"))
    try:
        with pytest.raises(PlatformError) as caught:
            await spotify.pause(USER)
    finally:
        await spotify.aclose()
    assert not caught.value.retryable and "Premium" in caught.value.message


async def test_server_errors_are_retryable_and_say_nothing_of_the_request(api: SpotifyAPI) -> None:
    spotify, _ = adapter(api)
    api.fail(Fault(503, "/v1/search"))
    try:
        with pytest.raises(PlatformError) as caught:
            await spotify.search_tracks(USER, "a very private query")
    finally:
        await spotify.aclose()
    assert caught.value.retryable and caught.value.status == 503
    assert "private" not in str(caught.value) and "spotify-token" not in str(caught.value)


async def test_a_platform_that_does_not_answer_in_time_is_retryable() -> None:
    async with SpotifyAPI(tokens={"spotify-token-1"}, latency_s=2.0) as api:
        spotify, _ = adapter(api, timeout_s=0.2)
        started = time.monotonic()
        try:
            with pytest.raises(PlatformError) as caught:
                await spotify.search_tracks(USER, "imagine")
            waited = time.monotonic() - started
        finally:
            await spotify.aclose()
    assert caught.value.retryable
    assert waited < 1.5  # gave up long before the 2 s answer


async def test_the_fake_refuses_unknown_tokens() -> None:
    async with SpotifyAPI(tokens={"good"}) as api:
        spotify = SpotifyPlatform(MemoryTokens("bad"), base_url=api.base_url)
        try:
            with pytest.raises(PlatformAuthError):
                await spotify.now_playing(USER)
        finally:
            await spotify.aclose()
        assert {r.status for r in api.requests} == {401}


async def test_an_answer_that_is_not_json_is_a_retryable_error(api: SpotifyAPI) -> None:
    """A 2xx whose body is not JSON (a proxy's page) is a typed, retryable error on every
    reading route, never a crash of the caller."""
    spotify, _ = adapter(api)
    page = "<html><body>Service temporarily unavailable</body></html>"
    api.fail(
        Fault(200, "/v1/search", body=page),
        Fault(200, "/v1/me/player/currently-playing", body=page),
        Fault(200, "/v1/me", body=page[:20]),
        Fault(200, "/v1/me/tracks", body='{"items": [trunc'),
    )
    try:
        for attempt in (
            spotify.search_tracks(USER, "imagine"),
            spotify.now_playing(USER),
            spotify.playlists(USER),
            spotify.liked_tracks(USER),
        ):
            with pytest.raises(PlatformError) as caught:
                await attempt
            assert caught.value.retryable and "not JSON" in caught.value.message
            assert caught.value.status == 200
        # The fake answers normally again: nothing was left in a bad state.
        assert await spotify.search_tracks(USER, "imagine")
    finally:
        await spotify.aclose()


async def test_paging_stops_at_a_repeated_page_and_at_the_page_bound() -> None:
    songs = many_songs(2100)
    async with SpotifyAPI(tokens={"spotify-token-1"}, songs=songs) as api:
        for i in range(120):
            api.add_playlist(FakePlaylist(f"List {i}"))
        api.like(*songs)
        spotify, _ = adapter(api)
        try:
            # Every 50 at a time is 42 pages: the bound stops it at MAX_PAGES.
            liked = await spotify.liked_tracks(USER, limit=5000)
            assert len(liked) == MAX_PAGES * PAGE
            assert len(api.recorded("GET", "/me/tracks")) == MAX_PAGES
            # A server that ignores the offset (and claims 10,000 more): the repeated
            # page ends the list instead of 200 requests of duplicates.
            api.stuck_paging = True
            playlists = await spotify.playlists(USER)
        finally:
            await spotify.aclose()
    assert len(playlists) == PAGE and len({p.id for p in playlists}) == PAGE
    assert len(api.recorded("GET", "/me/playlists")) == 2
