"""Linking music platform accounts through the real app: OAuth 2.0 with PKCE and a signed,
browser-bound state against a loopback authorization server; the token service's refresh
before expiry, once for concurrent callers, and a refused refresh; revocation on removal;
authentication of every account route, none of which ever answers a token.

The API runs in process over ASGI (fake models, embedded store); the platform is
``tests.vendors.oauth_server`` on a loopback port, reached by the app's real HTTP client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from fastapi import FastAPI

from agent.platforms.base import AccessTokens, NotConnectedError, PlatformError
from agent.platforms.spotify import SpotifyPlatform
from signaling.app import create_app
from signaling.platform_settings import SoundCloudSettings, SpotifySettings
from signaling.platform_tokens import PlatformTokens
from signaling.settings import ServerSettings
from store.crypto import TokenCipher, generate_key
from store.library import LibraryTrackRecord
from store.platform_accounts import AccountInfo, TokenGrant
from store.settings import StoreSettings
from tests.fakes import fake_models
from tests.platform_flow import (
    ADMIN,
    JWT_SECRET,
    consent,
    link,
    new_session,
    platforms_of,
    serving,
)
from tests.server import app_state, asgi_client, bearer
from tests.vendors.oauth_server import OAuthServer, s256


@pytest.fixture
async def oauth() -> AsyncIterator[OAuthServer]:
    async with OAuthServer() as server:
        yield server


def assert_no_token(oauth: OAuthServer, *texts: str) -> None:
    for grant in oauth.grants:
        for text in texts:
            assert grant.access_token not in text and grant.refresh_token not in text


async def test_login_callback_status_flow(tmp_path: Path, oauth: OAuthServer) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        connected: list[AccountInfo] = []

        async def hook(account: AccountInfo) -> None:
            connected.append(account)

        platforms_of(app).on_connected.append(hook)
        session_id, token = await new_session(client)

        r = await client.get("/v1/platforms/spotify/login", headers=bearer(token))
        assert r.status_code == 302
        target = urlsplit(r.headers["location"])
        assert f"{target.scheme}://{target.netloc}{target.path}" == f"{oauth.base_url}/authorize"
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert query["client_id"] == oauth.client_id
        assert query["response_type"] == "code"
        assert query["redirect_uri"] == "http://parley.test/v1/platforms/spotify/callback"
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        assert "user-modify-playback-state" in query["scope"].split()
        assert query["state"]
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie

        back = await client.get(await consent(r.headers["location"]))
        assert back.status_code == 200, back.text
        body = back.json()
        assert body["connected"] is True and body["status"] == "connected"
        assert "user-library-read" in body["scopes"] and body["renewable"] is True

        # The code went to the token endpoint with the verifier of the challenge sent.
        (exchange,) = oauth.grants_of("/api/token", "authorization_code")
        assert s256(exchange.form["code_verifier"]) == query["code_challenge"]
        assert exchange.basic_client == oauth.client_id  # Spotify: HTTP Basic
        assert "client_secret" not in exchange.form

        status = await client.get("/v1/platforms/spotify/status", headers=bearer(token))
        assert status.status_code == 200
        assert status.json()["connected"] is True and status.json()["expires_at"]
        other = await client.get("/v1/platforms/soundcloud/status", headers=bearer(token))
        assert other.json()["status"] == "not_linked" and other.json()["configured"] is True
        assert_no_token(oauth, back.text, status.text, other.text)

        user_id = await app_state(app).store.users.of_session(session_id)
        assert user_id is not None
        assert [(a.user_id, a.platform) for a in connected] == [(user_id, "spotify")]
        tokens = platforms_of(app).tokens
        assert isinstance(tokens, AccessTokens)
        assert await tokens.access_token("spotify", user_id) == oauth.grants[0].access_token

        # A page's fetch gets the URL in JSON (it cannot read a redirect).
        r = await client.get(
            "/v1/platforms/spotify/login",
            headers={**bearer(token), "Accept": "application/json"},
        )
        assert r.status_code == 200 and r.json()["authorize_url"].startswith(oauth.base_url)


async def test_account_routes_need_a_session_token_or_admin(
    tmp_path: Path, oauth: OAuthServer
) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        session_id, token = await new_session(client)
        assert (await link(client, token)).status_code == 200
        user_id = await app_state(app).store.users.of_session(session_id)
        room = (await client.post("/v1/rooms")).json()
        key = (await client.post("/v1/keys", json={"name": "app"}, headers=bearer(ADMIN))).json()[
            "key"
        ]
        texts: list[str] = []
        for method, path in (
            ("GET", "/v1/platforms/spotify/login"),
            ("GET", "/v1/platforms/spotify/status"),
            ("DELETE", "/v1/platforms/spotify"),
        ):
            none = await client.request(method, path)
            assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
            garbage = await client.request(method, path, headers=bearer("eyJ.not.a.token"))
            assert garbage.status_code == 401
            joined = await client.request(method, path, headers=bearer(room["token"]))
            assert joined.status_code == 403  # a room's join token is not a session's
            calls_key = await client.request(method, path, headers=bearer(key))
            assert calls_key.status_code == 403
            admin_nobody = await client.request(method, path, headers=bearer(ADMIN))
            assert admin_nobody.status_code == 400
            texts += [none.text, garbage.text, joined.text, calls_key.text, admin_nobody.text]
        admin = await client.get(
            "/v1/platforms/spotify/status", params={"user_id": user_id}, headers=bearer(ADMIN)
        )
        assert admin.status_code == 200 and admin.json()["connected"] is True
        unknown = await client.get("/v1/platforms/napster/status", headers=bearer(token))
        assert unknown.status_code == 404 and unknown.json()["error"] == "platform_not_found"
        texts += [admin.text, unknown.text, (await client.get("/openapi.json")).text]
        assert_no_token(oauth, *texts)


async def test_unconfigured_platform_is_refused_clearly(tmp_path: Path) -> None:
    application = create_app(
        ServerSettings(jwt_secret=JWT_SECRET, soundcloud=SoundCloudSettings(client_id=None)),
        models=fake_models(),
        store_settings=StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with application.router.lifespan_context(application), asgi_client(application) as c:
        _, token = await new_session(c)
        r = await c.get("/v1/platforms/soundcloud/login", headers=bearer(token))
        assert r.status_code == 409 and r.json()["error"] == "platform_not_configured"
        assert "PARLEY_SOUNDCLOUD_CLIENT_ID" in r.json()["detail"]
        r = await c.get("/v1/platforms/soundcloud/callback", params={"code": "c", "state": "s"})
        assert r.status_code == 409
        r = await c.get("/v1/platforms/soundcloud/status", headers=bearer(token))
        assert r.status_code == 200 and r.json()["configured"] is False


async def test_bad_states_and_declines_are_refused(tmp_path: Path, oauth: OAuthServer) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        _, token = await new_session(client)
        r = await client.get("/v1/platforms/spotify/login", headers=bearer(token))
        back = await consent(r.headers["location"])
        parts = urlsplit(back)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        callback = f"{parts.path}"

        head, payload, sig = query["state"].split(".")
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        tampered = await client.get(
            callback, params={"code": query["code"], "state": f"{head}.{flipped}.{sig}"}
        )
        assert tampered.status_code == 400 and tampered.json()["error"] == "bad_state"

        key = app_state(app).tokens.subkey("oauth-state")
        now = int(time.time())
        claims = jwt.decode(query["state"], key, algorithms=["HS256"], issuer="parley")
        expired_state = jwt.encode(
            {**claims, "iat": now - 3600, "exp": now - 1800}, key, algorithm="HS256"
        )
        expired = await client.get(callback, params={"code": query["code"], "state": expired_state})
        assert expired.status_code == 400 and expired.json()["error"] == "state_expired"

        forged = jwt.encode(claims, "y" * 32, algorithm="HS256")  # another key
        r = await client.get(callback, params={"code": query["code"], "state": forged})
        assert r.status_code == 400 and r.json()["error"] == "bad_state"

        # A spotify state does not finish a soundcloud login.
        r = await client.get(
            "/v1/platforms/soundcloud/callback",
            params={"code": query["code"], "state": query["state"]},
        )
        assert r.status_code == 400 and r.json()["error"] == "bad_state"

        # The link, opened in another browser (no binding cookie), attaches nothing.
        async with asgi_client(app) as stranger:
            r = await stranger.get(back)
        assert r.status_code == 403 and r.json()["error"] == "state_not_bound"

        for params in ({}, {"code": query["code"]}, {"state": query["state"]}):
            r = await client.get(callback, params=params)
            assert r.status_code == 400
        assert not oauth.grants_of("/api/token")  # no code was ever exchanged

        oauth.deny_next()
        r = await client.get("/v1/platforms/spotify/login", headers=bearer(token))
        declined = await client.get(await consent(r.headers["location"]))
        assert declined.status_code == 403 and declined.json()["error"] == "access_denied"
        r = await client.get(callback, params={"error": "server_error<script>", "state": "s"})
        assert r.status_code == 400 and "<script>" not in r.text

        status = await client.get("/v1/platforms/spotify/status", headers=bearer(token))
        assert status.json()["status"] == "not_linked"


async def test_pkce_mismatch_is_rejected(tmp_path: Path, oauth: OAuthServer) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        _, token = await new_session(client)
        r = await client.get("/v1/platforms/spotify/login", headers=bearer(token))
        target = urlsplit(r.headers["location"])
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        # The code is issued for another challenge (an attacker's injected code).
        query["code_challenge"] = s256("another-verifier-" + "v" * 40)
        async with httpx.AsyncClient() as browser:
            swapped = await browser.get(f"{oauth.base_url}/authorize", params=query)
        r = await client.get(swapped.headers["location"])
        assert r.status_code == 400 and r.json()["error"] == "code_rejected"
        assert "invalid_grant" in r.json()["detail"]
        (exchange,) = oauth.grants_of("/api/token", "authorization_code")
        assert s256(exchange.form["code_verifier"]) != query["code_challenge"]
        assert not oauth.grants


async def linked_user(app: FastAPI, client: httpx.AsyncClient, name: str = "spotify") -> str:
    session_id, token = await new_session(client)
    r = await link(client, token, name)
    assert r.status_code == 200, r.text
    user_id = await app_state(app).store.users.of_session(session_id)
    assert user_id is not None
    return user_id


async def test_refresh_before_expiry_once_for_concurrent_callers(
    tmp_path: Path, oauth: OAuthServer
) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        oauth.expires_in = 30  # inside the 60 s margin: due for refresh at once
        user_id = await linked_user(app, client)
        first = oauth.grants[0].access_token
        oauth.expires_in = 3600
        oauth.token_delay_s = 0.2  # concurrent callers overlap the refresh
        tokens = platforms_of(app).tokens
        results = await asyncio.gather(*(tokens.access_token("spotify", user_id) for _ in range(8)))
        assert len(oauth.grants_of("/api/token", "refresh_token")) == 1
        assert set(results) == {oauth.grants[0].access_token} and first not in results
        # Spotify's refresh answer has no refresh token: the stored one is kept.
        assert await tokens.access_token("spotify", user_id) == results[0]
        assert len(oauth.grants_of("/api/token", "refresh_token")) == 1  # fresh now

        # A 401 from the Web API: one refresh, however many requests saw it.
        oauth.token_delay_s = 0.1
        again = await asyncio.gather(
            *(tokens.refreshed("spotify", user_id, rejected=results[0]) for _ in range(5))
        )
        assert len(set(again)) == 1 and again[0] != results[0]
        assert len(oauth.grants_of("/api/token", "refresh_token")) == 2


async def test_two_workers_refresh_a_single_use_token(tmp_path: Path, oauth: OAuthServer) -> None:
    """Two processes (own locks) refresh at once with a rotating refresh token: the loser's
    refusal is recognised as the winner's refresh, not as a revoked account."""
    oauth.rotate_refresh = True
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        oauth.expires_in = 30
        user_id = await linked_user(app, client, "soundcloud")
        oauth.expires_in = 3600
        oauth.token_delay_s = 0.1
        platforms = platforms_of(app)
        workers = [PlatformTokens(platforms.accounts, platforms.clients) for _ in range(2)]
        tokens = await asyncio.gather(*(w.access_token("soundcloud", user_id) for w in workers))
        refreshes = oauth.grants_of("/api/token", "refresh_token")
        assert [w.refreshes for w in workers] == [1, 1]  # both asked with the same token
        assert len({r.form["refresh_token"] for r in refreshes}) == 1
        assert set(tokens) == {oauth.grants[0].access_token}
        assert "client_secret" in refreshes[0].form  # SoundCloud: client secret in the body
        info = await platforms.accounts.info(user_id, "soundcloud")
        assert info is not None and info.connected
        creds = await platforms.accounts.credentials(user_id, "soundcloud")
        assert creds is not None and creds.refresh_token == oauth.grants[0].refresh_token


async def test_a_refused_refresh_disconnects(tmp_path: Path, oauth: OAuthServer) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        session_id, token = await new_session(client)
        assert (await link(client, token)).status_code == 200
        user_id = await app_state(app).store.users.of_session(session_id)
        assert user_id is not None
        tokens = platforms_of(app).tokens
        current = await tokens.access_token("spotify", user_id)
        oauth.revoke_all()  # the user removed the app at the platform
        with pytest.raises(NotConnectedError) as caught:
            await tokens.refreshed("spotify", user_id, rejected=current)
        assert current not in str(caught.value)
        status = (await client.get("/v1/platforms/spotify/status", headers=bearer(token))).json()
        assert status["connected"] is False and status["status"] == "disconnected"
        asked = len(oauth.grants_of("/api/token"))
        with pytest.raises(NotConnectedError):
            await tokens.access_token("spotify", user_id)
        assert len(oauth.grants_of("/api/token")) == asked  # no more refreshes
        with pytest.raises(NotConnectedError):
            await tokens.access_token("soundcloud", user_id)  # never linked

        # Linking again reconnects.
        assert (await link(client, token)).status_code == 200
        assert await tokens.access_token("spotify", user_id) == oauth.grants[-1].access_token


async def test_delete_revokes_and_forgets(tmp_path: Path, oauth: OAuthServer) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        session_id, token = await new_session(client)
        assert (await link(client, token, "spotify")).status_code == 200
        assert (await link(client, token, "soundcloud")).status_code == 200
        spotify, soundcloud = oauth.grants
        user_id = await app_state(app).store.users.of_session(session_id)
        assert user_id is not None
        library = app_state(app).store.library
        track = LibraryTrackRecord("t1", "spotify:track:t1", "Yellow", ("Coldplay",))
        await library.replace(user_id, "spotify", [track], [])
        await library.replace(user_id, "soundcloud", [track], [])

        r = await client.delete("/v1/platforms/spotify", headers=bearer(token))
        assert r.status_code == 200 and r.json() == {
            "platform": "spotify",
            "deleted": True,
            "revoked": True,
        }
        (revocation,) = oauth.grants_of("/oauth/revoke")  # RFC 7009, the refresh token
        assert revocation.form["token"] == spotify.refresh_token
        assert revocation.form["token_type_hint"] == "refresh_token"
        assert spotify.revoked
        # The library synced from the account goes with it; the other platform's stays.
        assert (await library.counts(user_id, "spotify")).tracks == 0
        assert (await library.counts(user_id, "soundcloud")).tracks == 1

        r = await client.delete("/v1/platforms/soundcloud", headers=bearer(token))
        assert r.status_code == 200 and r.json()["revoked"] is True
        (sign_out,) = oauth.grants_of("/sign-out")
        assert sign_out.form["access_token"] == soundcloud.access_token and soundcloud.revoked

        assert (await library.counts(user_id, "soundcloud")).tracks == 0
        assert await app_state(app).store.accounts.accounts(user_id) == []
        status = await client.get("/v1/platforms/spotify/status", headers=bearer(token))
        assert status.json()["status"] == "not_linked"
        again = await client.delete("/v1/platforms/spotify", headers=bearer(token))
        assert again.status_code == 404 and again.json()["error"] == "account_not_found"
        with pytest.raises(NotConnectedError):
            await platforms_of(app).tokens.access_token("spotify", user_id)


async def test_the_login_cookie_follows_the_redirect_uri_behind_a_proxy(
    tmp_path: Path, oauth: OAuthServer
) -> None:
    """Behind a reverse proxy that adds a path prefix and ends TLS, the server is reached
    at ``http://.../v1/...`` but the browser comes back to the configured redirect URI:
    the cookie must be scoped to that URI's path, and Secure."""
    public = "https://voice.example.org/parley/v1/platforms/soundcloud/callback"
    base = oauth.base_url
    application = create_app(
        ServerSettings(
            jwt_secret=JWT_SECRET,
            soundcloud=SoundCloudSettings(
                client_id=oauth.client_id,
                client_secret=oauth.client_secret,
                authorize_url=f"{base}/authorize",
                token_url=f"{base}/api/token",
                api_url=base,
                redirect_uri=public,
            ),
        ),
        models=fake_models(),
        store_settings=StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with application.router.lifespan_context(application), asgi_client(application) as c:
        _, token = await new_session(c)
        r = await c.get("/v1/platforms/soundcloud/login", headers=bearer(token))
        assert r.status_code == 302
        cookie = r.headers["set-cookie"]
        attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")}
        assert attributes["path"].strip() == "Path=/parley/v1/platforms/soundcloud/callback"
        assert "secure" in attributes and "httponly" in attributes
        name, _, nonce = cookie.split(";")[0].partition("=")

        # The platform sends the browser to the public URI; the proxy strips its prefix.
        back = urlsplit(await consent(r.headers["location"]))
        assert f"{back.scheme}://{back.netloc}{back.path}" == public
        done = await c.get(
            f"/v1/platforms/soundcloud/callback?{back.query}", headers={"Cookie": f"{name}={nonce}"}
        )
        assert done.status_code == 200, done.text
        cleared = done.headers["set-cookie"]
        assert "Path=/parley/v1/platforms/soundcloud/callback" in cleared
        assert "Max-Age=0" in cleared and "Secure" in cleared


async def test_the_login_cookie_without_a_redirect_uri(tmp_path: Path, oauth: OAuthServer) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        _, token = await new_session(client)
        r = await client.get("/v1/platforms/spotify/login", headers=bearer(token))
        cookie = r.headers["set-cookie"]
        assert "Path=/v1/platforms/spotify/callback" in cookie
        assert "secure" not in cookie.lower()  # the callback is plain http:// here


async def test_a_failed_start_releases_what_it_opened(tmp_path: Path, oauth: OAuthServer) -> None:
    """A step of the start-up that fails late (SIP's port is taken) closes what the steps
    before it opened: the platforms' and adapters' HTTP clients, the store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        application = create_app(
            ServerSettings(
                jwt_secret=JWT_SECRET,
                sip_listen=f"127.0.0.1:{port}",
                spotify=SpotifySettings(
                    client_id=oauth.client_id,
                    client_secret=oauth.client_secret,
                    token_url=f"{oauth.base_url}/api/token",
                    api_url=oauth.base_url,
                ),
            ),
            models=fake_models(),
            store_settings=StoreSettings(
                PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None
            ),
        )
        with pytest.raises(OSError, match="in use"):
            async with application.router.lifespan_context(application):
                pytest.fail("the server started on a taken SIP port")
    st = app_state(application)
    assert platforms_of(application).http.is_closed
    assert st.music is not None
    spotify = st.music.platforms["spotify"]
    assert isinstance(spotify, SpotifyPlatform) and spotify.http.is_closed


async def test_a_slow_refresh_does_not_overwrite_a_relinked_account(
    tmp_path: Path, oauth: OAuthServer
) -> None:
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        oauth.expires_in = 30  # due for refresh at once
        session_id, token = await new_session(client)
        assert (await link(client, token)).status_code == 200
        user_id = await app_state(app).store.users.of_session(session_id)
        assert user_id is not None
        oauth.expires_in = 3600
        oauth.token_delay_s = 0.5  # the refresh is slow ...
        tokens = platforms_of(app).tokens
        refreshing = asyncio.create_task(tokens.access_token("spotify", user_id))
        await asyncio.sleep(0.2)
        # ... and meanwhile the user links the account again (the callback stores a grant).
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        relinked = TokenGrant("relinked-access", "relinked-refresh", expires, ("user-read-email",))
        await platforms_of(app).accounts.save(user_id, "spotify", relinked)
        handed = await refreshing
        assert len(oauth.grants_of("/api/token", "refresh_token")) == 1
        creds = await platforms_of(app).accounts.credentials(user_id, "spotify")
        assert creds is not None
        assert (creds.access_token, creds.refresh_token) == ("relinked-access", "relinked-refresh")
        assert handed == "relinked-access"


async def test_unreadable_tokens_after_a_refused_refresh_are_a_platform_error(
    tmp_path: Path, oauth: OAuthServer
) -> None:
    """The check for another worker's refresh reads the account again: tokens no key opens
    by then (a key removed from PARLEY_TOKEN_KEY) are the typed error, not a crash."""
    async with serving(tmp_path, oauth) as app, asgi_client(app) as client:
        user_id = await linked_user(app, client)
        platforms = platforms_of(app)
        current = await platforms.tokens.access_token("spotify", user_id)
        oauth.revoke_all()
        oauth.token_delay_s = 0.3
        refreshing = asyncio.create_task(
            platforms.tokens.refreshed("spotify", user_id, rejected=current)
        )
        await asyncio.sleep(0.1)
        cipher = platforms.accounts.cipher
        platforms.accounts.cipher = TokenCipher([generate_key()])  # the row's key is gone
        try:
            with pytest.raises(PlatformError) as caught:
                await refreshing
        finally:
            platforms.accounts.cipher = cipher
        assert not isinstance(caught.value, NotConnectedError)
        assert "cannot be read" in caught.value.message
        info = await platforms.accounts.info(user_id, "spotify")
        assert info is not None and info.connected  # not taken for a revoked account
