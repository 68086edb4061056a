"""The SoundCloud adapter against the loopback SoundCloud API: search, likes, playlists
(cursor pages), like, add to a playlist, the actions its API lacks, and its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent.platforms.base import (
    PlatformError,
    PlatformRateLimitedError,
    Playlist,
    UnsupportedActionError,
)
from agent.platforms.soundcloud import SoundCloudPlatform
from tests.music import MemoryTokens, many_songs
from tests.vendors.loopback import Fault
from tests.vendors.soundcloud_api import FakeSet, SoundCloudAPI

USER = "usr_test"


@pytest.fixture(name="api")
async def api_fixture() -> AsyncIterator[SoundCloudAPI]:
    async with SoundCloudAPI(tokens={"soundcloud-token-1"}) as api:
        yield api


def adapter(api: SoundCloudAPI) -> tuple[SoundCloudPlatform, MemoryTokens]:
    tokens = MemoryTokens("soundcloud-token-1", issue=api.tokens.add)
    return SoundCloudPlatform(tokens, base_url=api.base_url), tokens


async def test_search_uses_urns_and_the_oauth_scheme(api: SoundCloudAPI) -> None:
    soundcloud, _ = adapter(api)
    try:
        found = await soundcloud.search_tracks(USER, "someone like you adele", limit=3)
    finally:
        await soundcloud.aclose()
    assert found[0].name == "Someone Like You"
    assert found[0].artists == ("Adele",)
    assert found[0].uri.startswith("soundcloud:tracks:")
    assert found[0].uri in api.by_urn
    (request,) = api.recorded("GET", "/tracks")
    assert request.token == "soundcloud-token-1"
    assert request.query["q"] == "someone like you adele"


async def test_likes_and_playlists_follow_next_href() -> None:
    songs = many_songs(120)
    async with SoundCloudAPI(tokens={"soundcloud-token-1"}, songs=songs) as api:
        api.like(*songs)
        for i in range(60):
            api.add_set(FakeSet(f"Set {i}"))
        api.add_set(FakeSet("Not mine", owner="soundcloud:users:1"))
        soundcloud, _ = adapter(api)
        try:
            liked = await soundcloud.liked_tracks(USER, limit=1000)
            playlists = await soundcloud.playlists(USER)
        finally:
            await soundcloud.aclose()
    assert [t.name for t in liked] == [s.title for s in reversed(songs)]
    assert len(api.recorded("GET", "/me/likes/tracks")) == 3  # 50 + 50 + 20
    assert len(playlists) == 61
    assert {p.name: p.owned for p in playlists}["Not mine"] is False
    assert all(p.owned for p in playlists if p.name != "Not mine")
    cursors = [r.query.get("cursor") for r in api.recorded("GET", "/me/playlists")]
    assert cursors == [None, "50"]


async def test_like_and_add_to_playlist_keep_the_existing_tracks(api: SoundCloudAPI) -> None:
    first, second = api.songs[0], api.songs[1]
    mix = api.add_set(FakeSet("Mix", track_urns=[f"soundcloud:tracks:{first.soundcloud_id}"]))
    soundcloud, _ = adapter(api)
    try:
        (track,) = await soundcloud.search_tracks(USER, second.title, limit=1)
        await soundcloud.save_tracks(USER, [track])
        (playlist,) = await soundcloud.playlists(USER)
        await soundcloud.add_to_playlist(USER, playlist, [track])
    finally:
        await soundcloud.aclose()
    assert api.likes == [track.uri]
    assert api.recorded("POST", f"/likes/tracks/{track.uri}")
    (put,) = api.recorded("PUT", f"/playlists/{mix.urn}")
    assert put.body == {
        "playlist": {
            "tracks": [{"urn": f"soundcloud:tracks:{first.soundcloud_id}"}, {"urn": track.uri}]
        }
    }
    assert mix.track_urns[-1] == track.uri and len(mix.track_urns) == 2


async def test_remote_playback_is_unsupported(api: SoundCloudAPI) -> None:
    soundcloud, _ = adapter(api)
    try:
        for action, name in (
            (soundcloud.play(USER), "play"),
            (soundcloud.pause(USER), "pause"),
            (soundcloud.next_track(USER), "next"),
            (soundcloud.now_playing(USER), "now playing"),
        ):
            with pytest.raises(UnsupportedActionError) as caught:
                await action
            assert caught.value.action == name and not caught.value.retryable
    finally:
        await soundcloud.aclose()
    assert api.requests == []  # nothing was asked of the platform


async def test_refresh_on_401_and_errors(api: SoundCloudAPI) -> None:
    soundcloud, tokens = adapter(api)
    api.tokens.clear()
    try:
        assert await soundcloud.search_tracks(USER, "believer")
        assert tokens.refreshes == 1
        api.fail(Fault(429, "/tracks", retry_after="60"))
        with pytest.raises(PlatformRateLimitedError):
            await soundcloud.search_tracks(USER, "believer")
        api.fail(Fault(500, "/me"))
        with pytest.raises(PlatformError) as caught:
            await soundcloud.playlists(USER)
        assert caught.value.retryable
    finally:
        await soundcloud.aclose()


async def test_a_playlist_that_is_not_a_urn_is_refused_before_any_request(
    api: SoundCloudAPI,
) -> None:
    soundcloud, _ = adapter(api)
    bogus = Playlist("soundcloud", "1", "../../me", "Bogus")
    try:
        with pytest.raises(PlatformError):
            await soundcloud.add_to_playlist(USER, bogus, [])
    finally:
        await soundcloud.aclose()
    assert api.requests == []


@pytest.mark.parametrize("hidden", ["withheld", "unnamed"])
async def test_adding_to_a_playlist_read_in_part_changes_nothing(
    api: SoundCloudAPI, hidden: str
) -> None:
    """The write replaces the whole list: a list read without some of its tracks (left out
    by the API, or listed without a URN) is never written back."""
    first, second = api.songs[0], api.songs[1]
    kept = [f"soundcloud:tracks:{first.soundcloud_id}"]
    mix = api.add_set(
        FakeSet(
            "Mix",
            track_urns=list(kept),
            withheld=2 if hidden == "withheld" else 0,
            unnamed=2 if hidden == "unnamed" else 0,
        )
    )
    soundcloud, _ = adapter(api)
    try:
        (track,) = await soundcloud.search_tracks(USER, second.title, limit=1)
        (playlist,) = await soundcloud.playlists(USER)
        with pytest.raises(PlatformError) as caught:
            await soundcloud.add_to_playlist(USER, playlist, [track])
    finally:
        await soundcloud.aclose()
    assert caught.value.retryable and "nothing was changed" in caught.value.message
    assert api.recorded("PUT", f"/playlists/{mix.urn}") == []
    assert mix.track_urns == kept


async def test_a_cursor_that_never_moves_ends_the_list() -> None:
    songs = many_songs(120)
    async with SoundCloudAPI(tokens={"soundcloud-token-1"}, songs=songs) as api:
        api.like(*songs)
        api.stuck_paging = True
        soundcloud, _ = adapter(api)
        try:
            liked = await soundcloud.liked_tracks(USER, limit=1000)
        finally:
            await soundcloud.aclose()
    assert len(liked) == 50 and len({t.uri for t in liked}) == 50
    assert len(api.recorded("GET", "/me/likes/tracks")) == 2


async def test_an_answer_that_is_not_json_is_a_retryable_error(api: SoundCloudAPI) -> None:
    api.fail(Fault(200, "/tracks", body="<html>maintenance</html>"))
    soundcloud, _ = adapter(api)
    try:
        with pytest.raises(PlatformError) as caught:
            await soundcloud.search_tracks(USER, "believer")
        assert caught.value.retryable and "not JSON" in caught.value.message
        assert await soundcloud.search_tracks(USER, "believer")
    finally:
        await soundcloud.aclose()
