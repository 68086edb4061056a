"""Operators read calls: the admin token lists sessions and reads any session's history.

The API runs in process over ASGI with fake models on the embedded store; the
repository's keyset query runs on both store backends (PostgreSQL + Redis and
SQLite) through the ``store`` fixture.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import update

from signaling.app import create_app
from signaling.settings import ServerSettings
from store.models import VoiceSession
from store.repositories import SessionCursor, TurnRecord
from store.settings import StoreSettings
from store.store import Store
from tests.fakes import fake_models
from tests.server import app_state, asgi_client, bearer

ADMIN = "operator-" + "k" * 32
T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


async def _app(tmp_path: Path, admin_token: str | None) -> AsyncIterator[FastAPI]:
    application = create_app(
        ServerSettings(jwt_secret="x" * 32, admin_token=admin_token),
        models=fake_models(),
        store_settings=StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    async for a in _app(tmp_path, ADMIN):
        yield a


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


async def _seed(store: Store, sessions: list[tuple[str, str, dt.datetime]]) -> None:
    """Sessions ``(id, transport, started_at)`` with chosen start times."""
    for session_id, transport, _ in sessions:
        await store.sessions.create(session_id, transport=transport)
    async with store.db.begin() as db:
        for session_id, _, started in sessions:
            await db.execute(
                update(VoiceSession).where(VoiceSession.id == session_id).values(started_at=started)
            )


SEEDED = [
    ("ses_a", "webrtc", T0),
    ("ses_b", "sip", T0 + dt.timedelta(minutes=1)),
    ("ses_c", "sip", T0 + dt.timedelta(minutes=2)),
    ("ses_d", "websocket", T0 + dt.timedelta(minutes=3)),
    ("ses_e", "sip", T0 + dt.timedelta(minutes=4)),
    ("ses_f", "sip", T0 + dt.timedelta(minutes=4)),  # same instant as ses_e: id breaks the tie
]


async def test_list_needs_the_admin_token(app: FastAPI, client: httpx.AsyncClient) -> None:
    created = (await client.post("/v1/sessions")).json()
    for headers in (
        {},
        bearer("not-the-admin-token-at-all"),
        bearer(ADMIN + "x"),
        bearer(ADMIN[:-1]),
        bearer(created["token"]),  # a session's own token is not an operator's
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": ADMIN},
    ):
        r = await client.get("/v1/sessions", headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = await client.get("/v1/sessions", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert [s["id"] for s in r.json()["sessions"]] == [created["id"]]


async def test_list_is_newest_first_filtered_and_paginated(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await _seed(app_state(app).store, SEEDED)
    r = await client.get("/v1/sessions", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["id"] for s in body["sessions"]] == [
        "ses_f",
        "ses_e",
        "ses_d",
        "ses_c",
        "ses_b",
        "ses_a",
    ]
    assert body["next_cursor"] is None
    first = body["sessions"][0]
    assert first["transport"] == "sip" and first["status"] == "active"
    assert dt.datetime.fromisoformat(first["started_at"]) == T0 + dt.timedelta(minutes=4)
    assert first["turn_count"] == 0 and first["live_calls"] == []

    r = await client.get("/v1/sessions", params={"transport": "sip"}, headers=bearer(ADMIN))
    assert [s["id"] for s in r.json()["sessions"]] == ["ses_f", "ses_e", "ses_c", "ses_b"]
    assert all(s["transport"] == "sip" for s in r.json()["sessions"])
    r = await client.get("/v1/sessions", params={"transport": "livekit"}, headers=bearer(ADMIN))
    assert r.json() == {"sessions": [], "next_cursor": None}

    # Page through the SIP calls two at a time, then one at a time: the same order, no repeats.
    for limit in (2, 1, 3):
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"transport": "sip", "limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            r = await client.get("/v1/sessions", params=params, headers=bearer(ADMIN))
            assert r.status_code == 200, r.text
            page = r.json()
            assert 0 < len(page["sessions"]) <= limit
            seen += [s["id"] for s in page["sessions"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ["ses_f", "ses_e", "ses_c", "ses_b"], limit
        assert pages == -(-4 // limit)


async def test_pages_do_not_shift_when_calls_arrive(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    store = app_state(app).store
    await _seed(store, SEEDED)
    r = await client.get("/v1/sessions", params={"limit": 3}, headers=bearer(ADMIN))
    first = r.json()
    assert [s["id"] for s in first["sessions"]] == ["ses_f", "ses_e", "ses_d"]
    # A new call starts between two page reads; the next page neither repeats nor skips.
    await _seed(store, [("ses_new", "sip", T0 + dt.timedelta(hours=1))])
    r = await client.get(
        "/v1/sessions", params={"limit": 3, "cursor": first["next_cursor"]}, headers=bearer(ADMIN)
    )
    assert [s["id"] for s in r.json()["sessions"]] == ["ses_c", "ses_b", "ses_a"]
    assert r.json()["next_cursor"] is None


async def test_bad_limits_and_cursors_are_rejected(client: httpx.AsyncClient) -> None:
    for limit in (0, -1, 201, "many"):
        r = await client.get("/v1/sessions", params={"limit": limit}, headers=bearer(ADMIN))
        assert r.status_code == 422, (limit, r.text)
    r = await client.get("/v1/sessions", params={"limit": 200}, headers=bearer(ADMIN))
    assert r.status_code == 200
    forged = [
        "%%%",
        "bm90IGpzb24",  # "not json"
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        base64.urlsafe_b64encode(b'["2026-11-23T12:00:00", "ses_a"]').decode(),  # naive time
        base64.urlsafe_b64encode(b'["yesterday", "ses_a"]').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ]
    for cursor in forged:
        r = await client.get("/v1/sessions", params={"cursor": cursor}, headers=bearer(ADMIN))
        assert r.status_code == 400, (cursor, r.text)
        assert r.json()["error"] == "bad_cursor"
    r = await client.get("/v1/sessions", params={"cursor": "A" * 600}, headers=bearer(ADMIN))
    assert r.status_code == 422
    # Without the admin token a cursor is never even decoded.
    r = await client.get("/v1/sessions", params={"cursor": "%%%"})
    assert r.status_code == 401


async def test_admin_reads_any_session_and_its_history(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    store = app_state(app).store
    await _seed(store, [("ses_phone", "sip", T0)])
    call = {"from_uri": "sip:+15551234@pbx.example.org", "call_id": "a84b4c76e66710@pbx"}
    await store.sessions.create("ses_phone", transport="sip", attributes=call)
    await store.sessions.add_turn(
        TurnRecord("ses_phone", "t1", "user", "what are your opening hours", stt_confidence=0.9)
    )
    await store.sessions.add_turn(TurnRecord("ses_phone", "t1", "assistant", "Nine to five."))

    # A phone call has no caller token: only the operator can read it.
    r = await client.get("/v1/sessions/ses_phone")
    assert r.status_code == 401
    r = await client.get("/v1/sessions/ses_phone", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["transport"] == "sip" and r.json()["turn_count"] == 1
    assert r.json()["attributes"] == call and r.json()["end_reason"] is None
    await store.sessions.end("ses_phone")
    listed = (await client.get("/v1/sessions", headers=bearer(ADMIN))).json()["sessions"]
    assert [(s["id"], s["status"], s["attributes"]) for s in listed] == [
        ("ses_phone", "ended", call)
    ]
    r = await client.get("/v1/sessions/ses_phone/history", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    turns = r.json()["turns"]
    assert all(dt.datetime.fromisoformat(t["started_at"]).tzinfo is not None for t in turns)
    assert [(t["role"], t["text"]) for t in turns] == [
        ("user", "what are your opening hours"),
        ("assistant", "Nine to five."),
    ]
    r = await client.get("/v1/sessions/ses_nope", headers=bearer(ADMIN))
    assert r.status_code == 404
    r = await client.get("/v1/sessions/ses_phone/history", headers=bearer(ADMIN + "!"))
    assert r.status_code == 401

    # A caller's own session token still works, and still only for its own session.
    mine = (await client.post("/v1/sessions")).json()
    r = await client.get(f"/v1/sessions/{mine['id']}", headers=bearer(mine["token"]))
    assert r.status_code == 200 and r.json()["transport"] == "none"
    r = await client.get(f"/v1/sessions/{mine['id']}", headers=bearer(ADMIN))
    assert r.status_code == 200 and r.json()["id"] == mine["id"]
    r = await client.get("/v1/sessions/ses_phone/history", headers=bearer(mine["token"]))
    assert r.status_code == 403

    # Operators read; deleting stays with the session's owner.
    r = await client.delete("/v1/sessions/ses_phone", headers=bearer(ADMIN))
    assert r.status_code == 401
    assert await store.sessions.get("ses_phone") is not None


async def test_no_admin_token_configured_means_no_admin_access(tmp_path: Path) -> None:
    async for application in _app(tmp_path, None):
        await _seed(app_state(application).store, [("ses_phone", "sip", T0)])
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://parley.test") as c:
            for token in (ADMIN, "", "None", "null"):
                headers = bearer(token)
                assert (await c.get("/v1/sessions", headers=headers)).status_code == 401
                assert (await c.get("/v1/sessions/ses_phone", headers=headers)).status_code == 401
                r = await c.get("/v1/sessions/ses_phone/history", headers=headers)
                assert r.status_code == 401


def test_admin_token_setting_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_ADMIN_TOKEN", ADMIN)
    settings = ServerSettings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == ADMIN
    assert ADMIN not in repr(settings) and ADMIN not in str(settings.model_dump())
    monkeypatch.setenv("PARLEY_ADMIN_TOKEN", "")
    assert ServerSettings().admin_token is None
    weak = "hunter2-weak"
    monkeypatch.setenv("PARLEY_ADMIN_TOKEN", weak)
    with pytest.raises(ValidationError) as err:
        ServerSettings()
    assert "admin_token" in str(err.value) and weak not in str(err.value)


async def test_the_admin_token_never_reaches_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async for application in _app(tmp_path, ADMIN):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://parley.test") as c:
            assert (await c.get("/v1/sessions", headers=bearer(ADMIN))).status_code == 200
            assert (await c.get("/v1/sessions", headers=bearer(ADMIN + "?"))).status_code == 401
            assert (await c.get("/v1/sessions/x/history", headers=bearer(ADMIN))).status_code == 404
    assert caplog.records  # the app did log (start-up, store), just never the token
    assert all(ADMIN not in r.getMessage() for r in caplog.records)


async def test_session_page_query_on_each_backend(store: Store) -> None:
    await _seed(store, SEEDED)
    page = await store.sessions.page()
    assert [s.id for s in page.sessions] == ["ses_f", "ses_e", "ses_d", "ses_c", "ses_b", "ses_a"]
    assert page.next is None

    page = await store.sessions.page(limit=2)
    assert [s.id for s in page.sessions] == ["ses_f", "ses_e"]
    assert page.next == SessionCursor(T0 + dt.timedelta(minutes=4), "ses_e")
    page = await store.sessions.page(limit=2, after=page.next)
    assert [s.id for s in page.sessions] == ["ses_d", "ses_c"]
    page = await store.sessions.page(limit=2, after=page.next)
    assert [s.id for s in page.sessions] == ["ses_b", "ses_a"]
    assert page.next is None  # exactly full last page: no empty extra page

    sip = await store.sessions.page(transport="sip", limit=3)
    assert [s.id for s in sip.sessions] == ["ses_f", "ses_e", "ses_c"]
    assert sip.next is not None
    rest = await store.sessions.page(transport="sip", limit=3, after=sip.next)
    assert [s.id for s in rest.sessions] == ["ses_b"] and rest.next is None

    # A cursor given in another time zone names the same instant.
    cet = dt.timezone(dt.timedelta(hours=1))
    same = SessionCursor((T0 + dt.timedelta(minutes=2)).astimezone(cet), "ses_c")
    page = await store.sessions.page(after=same)
    assert [s.id for s in page.sessions] == ["ses_b", "ses_a"]

    with pytest.raises(ValueError, match="limit"):
        await store.sessions.page(limit=0)
