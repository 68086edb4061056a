"""Who may create rooms and sessions: open on loopback only, API keys elsewhere; the
room's key in the call grant; reading a room needs its token; CORS closed by default.

The API runs in process over ASGI with fake models on the embedded store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from signaling.access import access_summary, is_loopback, keys_required
from signaling.admission import AdmissionError, authorize
from signaling.app import create_app
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from tests.fakes import fake_models
from tests.server import app_state, asgi_client, bearer

ADMIN = "operator-" + "k" * 32


@asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[FastAPI]:
    """An app (not listening: ``host`` only decides the access mode) with its lifespan."""
    application = create_app(
        ServerSettings(jwt_secret="x" * 32, admin_token=ADMIN, **settings),
        models=fake_models(),
        store_settings=StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with application.router.lifespan_context(application):
        yield application


async def new_key(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/keys", json={"name": "app", **body}, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    key: dict[str, Any] = r.json()
    return key


def test_keys_are_required_off_loopback_unless_configured() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
        assert not keys_required(ServerSettings(host=host))
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        assert not is_loopback(host), host
        assert keys_required(ServerSettings(host=host))
    assert keys_required(ServerSettings(host="127.0.0.1", require_keys="true"))
    assert not keys_required(ServerSettings(host="0.0.0.0", require_keys="false"))

    line = access_summary(ServerSettings(host="0.0.0.0", admin_token=ADMIN))
    assert "API keys required" in line and "0.0.0.0" in line and ADMIN not in line
    line = access_summary(ServerSettings(host="127.0.0.1"))
    assert "open to anonymous callers on loopback" in line and "another address" in line
    line = access_summary(ServerSettings(host="0.0.0.0", require_keys="false"))
    assert "WARNING" in line and "\n" not in line


async def test_public_server_refuses_anonymous_creation(tmp_path: Path) -> None:
    async with serving(tmp_path, host="0.0.0.0") as app, asgi_client(app) as client:
        for path in ("/v1/rooms", "/v1/sessions"):
            r = await client.post(path)
            assert r.status_code == 401, r.text
            assert r.json()["error"] == "unauthorized" and "calls" in r.json()["detail"]
            assert r.headers["WWW-Authenticate"] == "Bearer"
        assert (await client.post("/v1/chat/text", json={"text": "hi"})).status_code == 401
        assert (await client.post("/v1/voice/tts", json={"text": "hi"})).status_code == 401
        r = await client.post("/v1/voice/stt", content=b"RIFF")
        assert r.status_code == 401

        key = await new_key(client)
        room = await client.post("/v1/rooms", json={"name": "desk"}, headers=bearer(key["key"]))
        assert room.status_code == 201, room.text
        stored = await app_state(app).rooms.get(room.json()["id"])
        assert stored is not None and stored.key_id == key["id"] and stored.name == "desk"
        session = await client.post("/v1/sessions", headers=bearer(key["key"]))
        assert session.status_code == 201
        row = await app_state(app).store.sessions.get(session.json()["id"])
        assert row is not None and row.key_id == key["id"]
        chat = await client.post("/v1/chat/text", json={"text": "hi"}, headers=bearer(key["key"]))
        assert chat.status_code == 200
        # the chat continues with its session token, no key needed
        follow = {"text": "and?", "session_id": chat.json()["session_id"]}
        r = await client.post(
            "/v1/chat/text", json=follow, headers=bearer(chat.json()["session_token"])
        )
        assert r.status_code == 200
        tts = await client.post("/v1/voice/tts", json={"text": "hi"}, headers=bearer(key["key"]))
        assert tts.status_code == 200

        # a join token, a session token or the wrong kind of key is no API key
        for token in (room.json()["token"], session.json()["token"], "eyJhbGciOi.x.y"):
            assert (await client.post("/v1/rooms", headers=bearer(token))).status_code == 401
        # the bootstrap admin token may do everything an admin key does
        assert (await client.post("/v1/rooms", headers=bearer(ADMIN))).status_code == 201


async def test_loopback_server_is_open_and_still_checks_keys(tmp_path: Path) -> None:
    async with serving(tmp_path, host="127.0.0.1") as app, asgi_client(app) as client:
        room = await client.post("/v1/rooms")
        assert room.status_code == 201
        assert (await app_state(app).rooms.get(room.json()["id"])).key_id is None  # type: ignore[union-attr]
        session = await client.post("/v1/sessions")
        assert session.status_code == 201
        row = await app_state(app).store.sessions.get(session.json()["id"])
        assert row is not None and row.key_id is None
        # a key presented on an open server is still checked, and recorded
        key = await new_key(client)
        assert (await client.post("/v1/rooms", headers=bearer(key["key"] + "x"))).status_code == 401
        keyed = await client.post("/v1/rooms", headers=bearer(key["key"]))
        assert (await app_state(app).rooms.get(keyed.json()["id"])).key_id == key["id"]  # type: ignore[union-attr]
        # admin stays closed to anonymous callers, even on loopback
        assert (await client.get("/v1/keys")).status_code == 401
        assert (await client.get("/v1/sessions")).status_code == 401


async def test_require_keys_true_closes_loopback_too(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, host="127.0.0.1", require_keys="true") as app,
        asgi_client(app) as client,
    ):
        assert (await client.post("/v1/rooms")).status_code == 401
        assert (await client.post("/v1/sessions")).status_code == 401


async def test_room_key_quota_goes_into_the_grant(tmp_path: Path) -> None:
    async with serving(tmp_path, host="0.0.0.0") as app, asgi_client(app) as client:
        st = app_state(app)
        limited = await new_key(client, max_calls=2)
        unlimited = await new_key(client)
        rooms = {}
        for name, key in (("limited", limited), ("unlimited", unlimited)):
            r = await client.post("/v1/rooms", headers=bearer(key["key"]))
            rooms[name] = r.json()
        grant = await authorize(st, rooms["limited"]["id"], rooms["limited"]["token"])
        assert (grant.key_id, grant.key_max_calls) == (limited["id"], 2)
        grant = await authorize(st, rooms["unlimited"]["id"], rooms["unlimited"]["token"])
        assert (grant.key_id, grant.key_max_calls) == (unlimited["id"], None)

        # a room of a revoked key takes no more calls
        await client.delete(f"/v1/keys/{limited['id']}", headers=bearer(ADMIN))
        with pytest.raises(AdmissionError) as refused:
            await authorize(st, rooms["limited"]["id"], rooms["limited"]["token"])
        assert (refused.value.status, refused.value.code) == (403, "key_revoked")
        r = await client.post(
            f"/v1/rooms/{rooms['limited']['id']}/offer",
            json={"sdp": "v=0", "type": "offer"},
            headers=bearer(rooms["limited"]["token"]),
        )
        assert r.status_code == 403 and r.json()["error"] == "key_revoked"

    async with serving(tmp_path / "open", host="127.0.0.1") as app, asgi_client(app) as client:
        room = (await client.post("/v1/rooms")).json()
        grant = await authorize(app_state(app), room["id"], room["token"])
        assert (grant.key_id, grant.key_max_calls) == (None, None)


async def test_reading_a_room_needs_its_token_or_an_admin(tmp_path: Path) -> None:
    async with serving(tmp_path) as app, asgi_client(app) as client:
        room = (await client.post("/v1/rooms")).json()
        other = (await client.post("/v1/rooms")).json()
        key = await new_key(client)
        admin_key = await new_key(client, scopes=["admin"])
        url = f"/v1/rooms/{room['id']}"
        for headers, status in (
            ({}, 401),
            (bearer("not-a-token"), 401),
            (bearer(other["token"]), 403),
            (bearer(key["key"]), 403),  # a calls key is not the room's owner's token
            (bearer(room["token"]), 200),
            (bearer(admin_key["key"]), 200),
            (bearer(ADMIN), 200),
        ):
            r = await client.get(url, headers=headers)
            assert r.status_code == status, (headers, r.text)
        r = await client.get(f"/v1/rooms/room_{'x' * 200}", headers=bearer(ADMIN))
        assert r.status_code == 404
        # deleting: the room's token or an admin; the room is gone for every reader
        assert (await client.delete(url, headers=bearer(other["token"]))).status_code == 403
        assert (await client.delete(url, headers=bearer(ADMIN))).status_code == 200
        assert (await client.get(url, headers=bearer(room["token"]))).status_code == 404


async def test_room_calls_show_session_ids_to_admins_only(tmp_path: Path) -> None:
    async with serving(tmp_path) as app, asgi_client(app) as client:
        st = app_state(app)
        room = (await client.post("/v1/rooms")).json()
        grant = await authorize(st, room["id"], room["token"])
        call = await st.calls.open(
            "websocket", room_id=grant.room_id, output_rate=16_000, key_id=grant.key_id
        )
        try:
            url = f"/v1/rooms/{room['id']}"
            mine = (await client.get(url, headers=bearer(room["token"]))).json()["calls"]
            assert [c["id"] for c in mine] == [call.id]
            assert "session_id" not in mine[0] and call.session.id not in str(mine)
            ops = (await client.get(url, headers=bearer(ADMIN))).json()["calls"]
            assert ops[0]["session_id"] == call.session.id
        finally:
            await st.calls.end(call, "hung up")


async def test_cors_is_closed_by_default(tmp_path: Path) -> None:
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with serving(tmp_path) as app, asgi_client(app) as client:
        r = await client.options("/v1/rooms", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = await client.post("/v1/rooms", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        # the server's own page is same-origin: it needs no CORS
        assert (await client.get("/")).status_code == 200


async def test_cors_opens_for_configured_origins(tmp_path: Path) -> None:
    origin = "https://app.example.org"
    async with (
        serving(tmp_path, cors_origins=f"{origin}, http://localhost:5173/") as app,
        asgi_client(app) as client,
    ):
        r = await client.options(
            "/v1/rooms",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == origin
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = await client.post("/v1/rooms", headers={"Origin": origin})
        assert r.status_code == 201 and r.headers["access-control-allow-origin"] == origin
        assert "x-session-token" in r.headers["access-control-expose-headers"].lower()
        r = await client.post("/v1/rooms", headers={"Origin": "http://localhost:5173"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
        r = await client.post("/v1/rooms", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = await client.options(
            "/v1/rooms",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
