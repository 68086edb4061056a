"""The music assistant end to end: a linked Spotify account, the agent's play tool, the search
tiers, token refresh and unlinking, by voice over WebRTC and by text chat.

The app runs in process (its lifespan on the test's loop) with Spotify's OAuth on
``tests.vendors.oauth_server`` and its Web API on ``tests.vendors.spotify_api``,
which accepts exactly the tokens the OAuth server has issued and not expired. The
account is linked through the real login (``tests.platform_flow``). The voice call
uses a real aiortc caller peer, synthesized speech, the real VAD, Whisper and Piper;
the LLM is ``ListeningLLM``, a scripted stand-in that asks to play what the caller
said (its words as the query), so the spoken words reach the platform's search.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from agent.config import AgentConfig
from agent.llm import ChatMessage, GenerationSettings, LLMDelta, TextDelta, ToolCallDelta, ToolSpec
from agent.runtime import AgentModels
from media.caller import CallerPeer
from media.frames import PIPELINE_RATE
from store.settings import StoreSettings
from tests.fakes import fake_models
from tests.platform_flow import ADMIN, JWT_SECRET, link, new_session, serving
from tests.server import app_state, asgi_client, bearer
from tests.speech import compose
from tests.textnorm import normalize, phrase_error
from tests.vendors.oauth_server import OAuthServer
from tests.vendors.spotify_api import SpotifyAPI
from tests.webrtc_client import connect, events, speaking, wait_for, wait_freed

REQUEST = "Play Shape of You by Ed Sheeran."


class ListeningLLM:
    """Answers a caller's turn with one ``play_track`` call whose query is the caller's
    words, and a tool's success with the tool's own words; stays silent after a failure
    (the reply loop then says the failure or the clarification). With ``garbage`` set,
    the call's arguments are not JSON."""

    model = "listening-llm"
    supports_tools = True

    def __init__(self) -> None:
        self.garbage = False
        self.requests: list[tuple[ChatMessage, ...]] = []

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncGenerator[LLMDelta, None]:
        """One scripted answer to the last message (see the class docstring)."""
        self.requests.append(tuple(messages))
        last = messages[-1]
        if last.role == "user" and any(t.name == "play_track" for t in tools):
            arguments = '{"query": ' if self.garbage else json.dumps({"query": last.content})
            yield ToolCallDelta(0, "call_" + secrets.token_hex(4), "play_track", arguments)
        elif last.role == "tool" and not last.content.startswith("error"):
            yield TextDelta(last.content)

    async def aclose(self) -> None:
        """Nothing to release."""


@pytest.fixture
async def oauth() -> AsyncIterator[OAuthServer]:
    async with OAuthServer() as server:
        yield server


@pytest.fixture
async def spotify(oauth: OAuthServer) -> AsyncIterator[SpotifyAPI]:
    def issued(token: str) -> bool:
        return oauth.check_bearer(f"Bearer {token}") is not None

    async with SpotifyAPI(token_check=issued) as api:
        yield api


def searches(api: SpotifyAPI) -> int:
    return len(api.recorded("GET", "/search"))


def plays(api: SpotifyAPI) -> list[tuple[Any, str | None, int]]:
    return [(r.body, r.token, r.status) for r in api.recorded("PUT", "/me/player/play")]


async def wait_synced(client: httpx.AsyncClient, token: str, within_s: float = 20.0) -> None:
    """Wait until the account's first library sync is recorded (its requests are over)."""
    for _ in range(int(within_s / 0.1)):
        r = await client.get("/v1/platforms/spotify/status", headers=bearer(token))
        if r.json()["last_sync_at"] is not None:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the library was never synced")


async def say(caller: CallerPeer, text: str) -> dict[str, Any]:
    """Speak ``text``; returns the agent's reply once it has finished saying it."""
    replies = len(events(caller, "reply"))
    caller.track.play(compose(0.3, text), PIPELINE_RATE)

    def answered() -> bool:
        if len(events(caller, "reply")) <= replies:
            return False
        replied_at = caller.of_type("reply")[-1][0]
        return any(e["state"] == "listening" for _, e in caller.of_type("state", replied_at))

    await wait_for(caller, answered, 60)
    reply: dict[str, Any] = events(caller, "reply")[-1]
    return reply


def turn_events(caller: CallerPeer, reply: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The events of one kind that belong to the reply's turn."""
    return [e for e in events(caller, kind) if e.get("turn_id") == reply["turn_id"]]


@pytest.mark.slow
async def test_play_by_voice_over_webrtc(
    models: AgentModels,
    settings: StoreSettings,
    tmp_path: Path,
    oauth: OAuthServer,
    spotify: SpotifyAPI,
) -> None:
    llm = ListeningLLM()
    spotify.like(spotify.song("Perfect"))  # the library sync has something to copy
    shape = spotify.song("Shape of You")
    uri = f"spotify:track:{shape.spotify_id}"
    clarification = AgentConfig.load().tools.clarification
    async with (
        serving(
            tmp_path,
            oauth,
            models=dataclasses.replace(models, llm=llm),
            store=settings,
            spotify_api_url=spotify.base_url,
        ) as app,
        asgi_client(app) as client,
    ):
        session_id, token = await new_session(client)
        assert (await link(client, token)).status_code == 200
        user_id = await app_state(app).store.users.of_session(session_id)
        assert user_id is not None
        await wait_synced(client, token)
        library = app_state(app).store.library
        assert (await library.counts(user_id, "spotify")).tracks == 1
        room = (await client.post("/v1/rooms")).json()
        caller = speaking()
        try:
            await connect(caller, client, room, session=(session_id, token))
            await wait_for(caller, lambda: caller.connected, 30)

            # 1. Spoken: the query goes to the platform's search, the track found is played.
            first = await say(caller, REQUEST)
            (heard,) = [e for e in turn_events(caller, first, "transcript") if e["final"]]
            assert phrase_error(heard["text"], "play shape of you by ed sheeran") <= 0.25
            (called,) = turn_events(caller, first, "tool_call")
            assert called["name"] == "play_track"
            assert json.loads(called["arguments"]) == {"query": heard["text"]}
            (result,) = turn_events(caller, first, "tool_result")
            assert result["ok"] and result["action"] == "play"
            assert result["data"]["tier"] == "platform" and result["data"]["track"]["uri"] == uri
            assert searches(spotify) == 1
            assert [(body, status) for body, _, status in plays(spotify)] == [
                ({"uris": [uri]}, 204)
            ]
            assert "playing shape of you by ed sheeran" in normalize(first["text"])
            assert not first["interrupted"]

            # 2. The same request again, its access token expired meanwhile: the cache
            # answers (no search), the play is refused once (401), refreshed, and played.
            used = plays(spotify)[0][1]
            assert used is not None
            oauth.expire(used)
            second = await say(caller, REQUEST)
            (result,) = turn_events(caller, second, "tool_result")
            assert result["ok"] and result["data"]["tier"] == "hot"
            assert searches(spotify) == 1
            statuses = [(token_, status) for _, token_, status in plays(spotify)]
            assert statuses[1] == (used, 401) and statuses[2][1] == 204
            assert statuses[2][0] != used
            assert len(oauth.grants_of("/api/token", "refresh_token")) == 1
            assert "playing shape of you" in normalize(second["text"])

            # 3. The model's arguments are garbage: the caller hears the clarification.
            llm.garbage = True
            third = await say(caller, REQUEST)
            (result,) = turn_events(caller, third, "tool_result")
            assert not result["ok"] and result["code"] == "bad_arguments"
            assert normalize(third["text"]) == normalize(clarification)
            assert len(plays(spotify)) == 3
            llm.garbage = False

            # 4. Unlinking revokes the tokens and forgets the library; the agent says so.
            r = await client.delete("/v1/platforms/spotify", headers=bearer(token))
            assert r.status_code == 200 and r.json()["revoked"] is True
            assert len(oauth.grants_of("/oauth/revoke")) == 1
            assert (await library.counts(user_id, "spotify")).tracks == 0
            fourth = await say(caller, REQUEST)
            (result,) = turn_events(caller, fourth, "tool_result")
            assert not result["ok"] and result["code"] == "not_connected"
            said = normalize(fourth["text"])
            assert "not connected" in said and "link it" in said
            assert len(plays(spotify)) == 3
            assert len(caller.loud_times()) > 100  # every reply was spoken
        finally:
            await caller.close()
        assert await wait_freed(client)


async def test_text_chat_acts_for_the_session_user(
    tmp_path: Path, oauth: OAuthServer, spotify: SpotifyAPI
) -> None:
    uri = f"spotify:track:{spotify.song('Shape of You').spotify_id}"
    async with (
        serving(
            tmp_path,
            oauth,
            models=dataclasses.replace(fake_models(), llm=ListeningLLM()),
            spotify_api_url=spotify.base_url,
        ) as app,
        asgi_client(app) as client,
    ):
        # The agent offers its tools in the API.
        listed = (await client.get("/v1/tools")).json()["tools"]
        assert "play_track" in [t["name"] for t in listed]
        play = next(t for t in listed if t["name"] == "play_track")
        assert play["parameters"]["required"] == ["query"] and play["description"]

        # An anonymous chat: the tool says the account isn't connected.
        r = await client.post("/v1/chat/text", json={"text": REQUEST})
        assert r.status_code == 200, r.text
        assert r.json()["action_result"] is None
        assert "link it" in normalize(r.json()["reply"])

        # The session's user, once linked: the chat plays on their account.
        session_id, token = await new_session(client)
        assert (await link(client, token)).status_code == 200
        body = {"text": REQUEST, "session_id": session_id}
        r = await client.post("/v1/chat/text", json=body, headers=bearer(token))
        answer = r.json()
        assert answer["action_result"]["tool"] == "play_track"
        assert answer["action_result"]["action"] == "play"
        assert answer["action_result"]["data"]["track"]["uri"] == uri
        assert [p[0] for p in plays(spotify)] == [{"uris": [uri]}]

        # A returning user's new session, found by the earlier session's token.
        r = await client.post("/v1/sessions", headers={"X-Session-Token": token})
        assert r.status_code == 201, r.text
        user_id = await app_state(app).store.users.of_session(session_id)
        assert r.json()["user_id"] == user_id
        later = {"text": REQUEST, "session_id": r.json()["id"]}
        again = await client.post("/v1/chat/text", json=later, headers=bearer(r.json()["token"]))
        assert again.json()["action_result"]["data"]["tier"] == "hot"
        assert len(plays(spotify)) == 2

        # The user's preferred platform is followed (SoundCloud: not linked).
        assert user_id is not None
        await app_state(app).store.users.set_preferred_platform(user_id, "soundcloud")
        r = await client.post("/v1/chat/text", json=body, headers=bearer(token))
        assert r.json()["action_result"] is None
        assert "soundcloud" in normalize(r.json()["reply"])
        assert len(plays(spotify)) == 2


async def test_who_may_name_a_sessions_user(tmp_path: Path, oauth: OAuthServer) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        _, token = await new_session(client)
        # An admin names any user; the user is created if new.
        r = await client.post("/v1/sessions", json={"user_id": "usr_known"}, headers=bearer(ADMIN))
        assert r.status_code == 201 and r.json()["user_id"] == "usr_known"
        assert await app_state(app).store.users.of_session(r.json()["id"]) == "usr_known"
        # Nobody else may: a session can never be handed another user's accounts.
        refused = await client.post("/v1/sessions", json={"user_id": "usr_known"})
        assert refused.status_code == 403
        both = await client.post(
            "/v1/sessions",
            json={"user_id": "usr_known"},
            headers={**bearer(ADMIN), "X-Session-Token": token},
        )
        assert both.status_code == 400
        forged = await client.post("/v1/sessions", headers={"X-Session-Token": "not-a-token"})
        assert forged.status_code == 401
        too_long = await client.post(
            "/v1/sessions", json={"user_id": "u" * 65}, headers=bearer(ADMIN)
        )
        assert too_long.status_code in (400, 422)
        # A session without a user hands on none.
        anonymous = await client.post("/v1/sessions", headers={"X-Session-Token": token})
        assert anonymous.status_code == 201 and anonymous.json()["user_id"] is None


async def test_a_session_chain_has_an_absolute_lifetime(tmp_path: Path, oauth: OAuthServer) -> None:
    """A session's token finds its user again for a new session, but the chain keeps its
    first ``auth_time``: a leaked token cannot renew itself past the chain's maximum."""
    chain_max_s = 7200
    async with (
        serving(tmp_path, oauth, session_chain_max_s=chain_max_s) as app,
        asgi_client(app) as client,
    ):
        first_id, first = await new_session(client)
        assert (await link(client, first)).status_code == 200
        user_id = await app_state(app).store.users.of_session(first_id)
        began = claims(first)["auth_time"]
        token = first
        for _ in range(3):  # each renewal copies the chain's start forward
            r = await client.post("/v1/sessions", headers={"X-Session-Token": token})
            assert r.status_code == 201 and r.json()["user_id"] == user_id
            token = r.json()["token"]
            assert claims(token)["auth_time"] == began
            assert claims(token)["exp"] <= began + chain_max_s
        # The same token, issued in a chain that began longer ago than the maximum.
        now = int(time.time())
        old = {**claims(token), "iat": now - 60, "exp": now + 3000, "auth_time": now - 7300}
        r = await client.post(
            "/v1/sessions", headers={"X-Session-Token": jwt.encode(old, JWT_SECRET)}
        )
        assert r.status_code == 401 and "sign in again" in r.json()["detail"]
        # Near its end, a renewal's token expires with the chain, not an hour later.
        late = {**old, "auth_time": now - 7000}
        r = await client.post(
            "/v1/sessions", headers={"X-Session-Token": jwt.encode(late, JWT_SECRET)}
        )
        assert r.status_code == 201
        assert r.json()["token_expires_at"] == now - 7000 + chain_max_s
        # An admin names the user: a new chain, begun now.
        r = await client.post("/v1/sessions", json={"user_id": user_id}, headers=bearer(ADMIN))
        assert claims(r.json()["token"])["auth_time"] >= now


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(
        token, JWT_SECRET, algorithms=["HS256"], options={"verify_exp": False}, issuer="parley"
    )
    return decoded


async def test_a_call_acts_for_its_sessions_user(tmp_path: Path, oauth: OAuthServer) -> None:
    """The user is read once at a call's start; one who links an account during the call
    (the session's first user) is known to it from then on."""
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        st = app_state(app)
        session_id, token = await new_session(client)
        call = await st.calls.open(
            "websocket", room_id=None, output_rate=PIPELINE_RATE, session_id=session_id
        )
        try:
            assert call.session.user_id is None
            r = await client.get("/v1/platforms/spotify/login", headers=bearer(token))
            assert r.status_code == 302
            user_id = await st.store.users.of_session(session_id)
            assert user_id is not None and call.session.user_id == user_id
        finally:
            await st.calls.end(call, "test over")
        await st.store.users.set_preferred_platform(user_id, "soundcloud")
        call = await st.calls.open(
            "websocket", room_id=None, output_rate=PIPELINE_RATE, session_id=session_id
        )
        try:
            assert call.session.user_id == user_id
            assert call.session.preferences == {"platform": "soundcloud"}
        finally:
            await st.calls.end(call, "test over")
        other = await st.calls.open("websocket", room_id=None, output_rate=PIPELINE_RATE)
        try:
            assert other.session.user_id is None  # a new session is anonymous
        finally:
            await st.calls.end(other, "test over")
