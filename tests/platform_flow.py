"""Linking platform accounts in tests: the app pointed at the loopback OAuth server, and a
user's way through the login (a session, the consent page, the callback).

``serving`` runs the app in process (its lifespan on the caller's event loop;
call it over ASGI with ``tests.server.asgi_client``) with Spotify (RFC 7009
revocation, HTTP Basic client authentication) and SoundCloud (sign-out, the
client secret in the body) on ``tests.vendors.oauth_server``; their Web APIs
are the OAuth server's own ``/me`` unless a loopback API is given. Used by the
OAuth tests and the music call end to end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from agent.runtime import AgentModels
from signaling.app import create_app
from signaling.platform_settings import SoundCloudSettings, SpotifySettings
from signaling.platforms import Platforms
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from tests.fakes import fake_models
from tests.server import app_state, bearer
from tests.vendors.oauth_server import OAuthServer

ADMIN = "operator-" + "k" * 32
"""The bootstrap admin token of the app ``serving`` runs."""
JWT_SECRET = "x" * 32


@asynccontextmanager
async def serving(
    tmp_path: Path,
    oauth: OAuthServer,
    *,
    models: AgentModels | None = None,
    store: StoreSettings | None = None,
    spotify_api_url: str | None = None,
    **settings: Any,
) -> AsyncIterator[FastAPI]:
    """The app with both platforms on ``oauth`` (see the module docstring); fake models
    and an embedded store in ``tmp_path`` unless others are given."""
    base = oauth.base_url
    endpoints: dict[str, Any] = {
        "client_id": oauth.client_id,
        "client_secret": oauth.client_secret,
        "authorize_url": f"{base}/authorize",
        "token_url": f"{base}/api/token",
        "api_url": base,
    }
    spotify = {**endpoints, "api_url": spotify_api_url or base}
    application = create_app(
        ServerSettings(
            jwt_secret=JWT_SECRET,
            admin_token=ADMIN,
            spotify=SpotifySettings(**spotify, revoke_url=f"{base}/oauth/revoke"),
            soundcloud=SoundCloudSettings(**endpoints, revoke_url=f"{base}/sign-out"),
            **settings,
        ),
        models=models or fake_models(),
        store_settings=store
        or StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with application.router.lifespan_context(application):
        yield application


def platforms_of(app: FastAPI) -> Platforms:
    """The running app's platforms."""
    platforms = app_state(app).platforms
    assert platforms is not None
    return platforms


async def new_session(client: httpx.AsyncClient, **headers: str) -> tuple[str, str]:
    """``POST /v1/sessions``: the new session's id and token."""
    r = await client.post("/v1/sessions", headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["token"]


async def consent(location: str) -> str:
    """The user approves on the platform's page; returns where it sends the browser back."""
    async with httpx.AsyncClient() as browser:
        r = await browser.get(location)
    assert r.status_code == 302, r.text
    return r.headers["location"]


async def link(client: httpx.AsyncClient, token: str, name: str = "spotify") -> httpx.Response:
    """The whole login of the session ``token``'s user: login, consent, callback."""
    r = await client.get(f"/v1/platforms/{name}/login", headers=bearer(token))
    assert r.status_code == 302, r.text
    return await client.get(await consent(r.headers["location"]))
