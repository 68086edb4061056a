"""API keys: hashed in the store, scoped, revocable; the CLI and the admin endpoints.

The repository runs on both store backends (PostgreSQL + Redis, SQLite); the
API runs in process over ASGI with fake models on the embedded store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from signaling.app import create_app
from signaling.settings import ServerSettings
from store.__main__ import main as store_main
from store.apikeys import ApiKeyRepository, ScopeError, hash_secret, is_api_key, parse_key
from store.settings import StoreSettings
from store.store import Store
from tests.fakes import fake_models
from tests.server import app_state, asgi_client, bearer

ADMIN = "operator-" + "k" * 32


async def raw_rows(store: Store) -> list[str]:
    """Every column of every api_keys row, as the database returns it, as text."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_keys"))).all()
    return [str(value) for row in rows for value in row]


async def test_keys_are_hashed_scoped_and_revocable(store: Store) -> None:
    issued = await store.keys.create("web app", ["calls"], max_calls=3)
    key = issued.key
    assert is_api_key(key) and key.startswith(f"pk_{issued.info.id}_")
    assert parse_key(key) is not None and not is_api_key("eyJhbGciOiJIUzI1NiJ9.x.y")
    secret = key.split("_", 2)[2]
    assert secret not in repr(issued) and key not in repr(issued)
    # the database holds the hash of the secret, never the secret or the key
    values = await raw_rows(store)
    assert values and all(secret not in v and key not in v for v in values)
    assert hash_secret(secret) in values

    info = await store.keys.verify(key)
    assert info is not None and info.id == issued.info.id and info.name == "web app"
    assert info.scopes == ("calls",) and info.max_calls == 3
    assert info.allows("calls") and not info.allows("admin")
    # a wrong secret, a malformed key, an unknown id: refused
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert await store.keys.verify(wrong) is None
    assert await store.keys.verify("pk_nope") is None
    assert await store.keys.verify(f"pk_{'0' * 16}_{secret}") is None

    admin = await store.keys.create("ops", ["admin", "calls", "admin"])
    assert admin.info.scopes == ("calls", "admin") and admin.info.allows("calls")
    with pytest.raises(ScopeError):
        await store.keys.create("bad", ["superuser"])
    with pytest.raises(ScopeError):
        await store.keys.create("none", [])

    # another worker (its own repository and cache) sees the key, then its revocation
    other = ApiKeyRepository(store.db, cache_ttl_s=0.0)
    assert await other.verify(key) is not None
    revoked = await store.keys.revoke(issued.info.id)
    assert revoked is not None and revoked.revoked
    assert await store.keys.verify(key) is None  # at once where it was revoked
    assert await other.verify(key) is None  # at the next read elsewhere
    again = await store.keys.revoke(issued.info.id)  # idempotent: the first time stays
    assert again is not None and again.revoked_at == revoked.revoked_at
    assert await store.keys.revoke("0" * 16) is None

    listed = await store.keys.list_keys()
    assert [k.id for k in listed] == [issued.info.id, admin.info.id]
    assert [k.id for k in await store.keys.list_keys(include_revoked=False)] == [admin.info.id]
    assert "secret" not in str(listed[0].to_dict()) and key not in str(listed[0].to_dict())


async def test_last_use_is_recorded_without_a_write_per_request(store: Store) -> None:
    keys = ApiKeyRepository(store.db, cache_ttl_s=0.0, touch_interval_s=3600)
    issued = await keys.create("busy", ["calls"])
    assert issued.info.last_used_at is None
    assert await keys.verify(issued.key) is not None
    first = (await keys.get(issued.info.id)).last_used_at  # type: ignore[union-attr]
    assert first is not None and first <= dt.datetime.now(dt.UTC)
    for _ in range(5):  # within the interval: no more writes
        assert await keys.verify(issued.key) is not None
    assert (await keys.get(issued.info.id)).last_used_at == first  # type: ignore[union-attr]


def test_cli_creates_lists_and_revokes_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PARLEY_DB_SCHEMA", raising=False)
    assert store_main(["keys", "create", "--name", "ops", "--scopes", "calls,admin"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert is_api_key(key) and key not in out.err
    assert "created" in out.err and "calls,admin" in out.err
    assert store_main(["keys", "create", "--name", "kiosk", "--max-calls", "2"]) == 0
    kiosk = capsys.readouterr().out.strip()
    assert store_main(["keys", "create", "--name", "x", "--scopes", "root"]) == 2
    assert "unknown scope" in capsys.readouterr().err

    assert store_main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ops" in listing and "kiosk" in listing and "max_calls=2" in listing
    assert key not in listing and kiosk not in listing and key.split("_", 2)[2] not in listing

    key_id = key.split("_")[1]
    assert store_main(["keys", "revoke", key_id]) == 0
    assert "revoked" in capsys.readouterr().err
    assert store_main(["keys", "revoke", "0" * 16]) == 1
    assert store_main(["keys", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(key_id in line and "revoked" in line for line in lines)

    async def verify() -> tuple[bool, bool]:
        store = await Store.open(
            StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)
        )
        try:
            return (
                await store.keys.verify(key) is not None,
                await store.keys.verify(kiosk) is not None,
            )
        finally:
            await store.close()

    assert asyncio.run(verify()) == (False, True)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    application = create_app(
        ServerSettings(jwt_secret="x" * 32, admin_token=ADMIN),
        models=fake_models(),
        store_settings=StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


async def test_admin_endpoints_manage_keys(app: FastAPI, client: httpx.AsyncClient) -> None:
    # the bootstrap admin token creates the first key; the secret is in that answer only
    r = await client.post(
        "/v1/keys", json={"name": "ops", "scopes": ["admin"]}, headers=bearer(ADMIN)
    )
    assert r.status_code == 201, r.text
    ops = r.json()
    assert is_api_key(ops["key"]) and ops["scopes"] == ["admin"] and ops["revoked_at"] is None
    # the admin key does what the admin token does
    r = await client.post(
        "/v1/keys", json={"name": "app", "max_calls": 2}, headers=bearer(ops["key"])
    )
    assert r.status_code == 201, r.text
    app_key = r.json()
    assert app_key["scopes"] == ["calls"] and app_key["max_calls"] == 2
    listed = await client.get("/v1/keys", headers=bearer(ops["key"]))
    assert listed.status_code == 200
    assert [k["name"] for k in listed.json()["keys"]] == ["ops", "app"]
    assert ops["key"] not in listed.text and app_key["key"] not in listed.text
    assert all("key" not in k and "secret_hash" not in k for k in listed.json()["keys"])

    # a calls key is not an admin: 403; no credential or a bad one: 401
    for headers, status in (
        (bearer(app_key["key"]), 403),
        ({}, 401),
        (bearer(ops["key"] + "x"), 401),
        (bearer("pk_0000000000000000_" + "a" * 43), 401),
    ):
        r = await client.get("/v1/keys", headers=headers)
        assert r.status_code == status, (headers, r.text)
        r = await client.post("/v1/keys", json={"name": "sneaky"}, headers=headers)
        assert r.status_code == status
        if status == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.get("/v1/sessions", headers=bearer(app_key["key"]))).status_code == 403
    assert (await client.get("/v1/sessions", headers=bearer(ops["key"]))).status_code == 200

    r = await client.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=bearer(ADMIN))
    assert r.status_code == 400 and r.json()["error"] == "bad_key"
    r = await client.post("/v1/keys", json={"name": "x", "max_calls": 0}, headers=bearer(ADMIN))
    assert r.status_code == 422

    # revoked: refused at once, everywhere the key was accepted
    r = await client.delete(f"/v1/keys/{app_key['id']}", headers=bearer(ops["key"]))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = await client.post("/v1/rooms", headers=bearer(app_key["key"]))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert (await client.delete("/v1/keys/nope", headers=bearer(ADMIN))).status_code == 404
    r = await client.delete(f"/v1/keys/{ops['id']}", headers=bearer(ops["key"]))
    assert r.status_code == 200
    assert (await client.get("/v1/keys", headers=bearer(ops["key"]))).status_code == 401
    assert (await client.get("/v1/keys", headers=bearer(ADMIN))).status_code == 200
    rows = await raw_rows(app_state(app).store)
    assert all(ops["key"] not in v and app_key["key"] not in v for v in rows)


async def test_keys_never_reach_the_logs(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await client.post("/v1/keys", json={"name": "logged?"}, headers=bearer(ADMIN))
    key = r.json()["key"]
    assert (await client.post("/v1/rooms", headers=bearer(key))).status_code == 201
    assert (await client.post("/v1/rooms", headers=bearer(key + "x"))).status_code == 401
    secret = key.split("_", 2)[2]
    assert all(
        secret not in rec.getMessage() and ADMIN not in rec.getMessage() for rec in caplog.records
    )
