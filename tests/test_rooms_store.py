"""Rooms live in the store: every worker sees a room another created, and its deletion.

The repository and the two-worker check run on both store backends (PostgreSQL +
Redis, and SQLite files shared by two app instances).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI
from sqlalchemy import update

from signaling.admission import AdmissionError, authorize
from signaling.app import create_app
from signaling.settings import ServerSettings
from store.models import RoomRow
from store.settings import StoreSettings
from store.store import Store
from tests.fakes import fake_models
from tests.server import app_state, asgi_client, bearer


async def test_room_repository(store: Store) -> None:
    issued = await store.keys.create("app", ["calls"])
    anonymous = await store.rooms.create("lobby")
    keyed = await store.rooms.create(None, key_id=issued.info.id)
    assert anonymous.id.startswith("room_") and anonymous.id != keyed.id
    assert (anonymous.name, anonymous.key_id) == ("lobby", None)
    got = await store.rooms.get(keyed.id)
    assert got is not None and got.key_id == issued.info.id and got.name is None
    assert got.created_at.tzinfo is not None
    assert abs((got.created_at - keyed.created_at).total_seconds()) < 1
    assert await store.rooms.get("room_nope") is None
    assert await store.rooms.get("x" * 500) is None  # longer than any id: no query
    assert await store.rooms.count() == 2 and await store.rooms.count(key_id=issued.info.id) == 1

    assert await store.rooms.delete(anonymous.id) is True
    assert await store.rooms.delete(anonymous.id) is False
    assert await store.rooms.get(anonymous.id) is None

    old = await store.rooms.create("old")
    async with store.db.begin() as db:
        await db.execute(
            update(RoomRow)
            .where(RoomRow.id == old.id)
            .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
        )
    assert await store.rooms.purge(dt.datetime.now(dt.UTC) - dt.timedelta(days=1)) == 1
    assert await store.rooms.get(old.id) is None and await store.rooms.get(keyed.id) is not None


@asynccontextmanager
async def worker(settings: StoreSettings, index: int) -> AsyncIterator[FastAPI]:
    """One of two app instances serving the same store, as the workers of one server do."""
    application = create_app(
        ServerSettings(jwt_secret="s" * 32, worker_index=index, worker_count=2),
        models=fake_models(),
        store_settings=settings,
    )
    async with application.router.lifespan_context(application):
        yield application


async def test_rooms_are_seen_by_every_worker(settings: StoreSettings) -> None:
    async with (
        worker(settings, 0) as one,
        worker(settings, 1) as two,
        asgi_client(one) as a,
        asgi_client(two) as b,
    ):
        room = (await a.post("/v1/rooms", json={"name": "shared"})).json()
        auth = bearer(room["token"])
        # the other worker reads it, admits its calls, and sees it deleted
        got = await b.get(f"/v1/rooms/{room['id']}", headers=auth)
        assert got.status_code == 200 and got.json()["name"] == "shared"
        assert got.json()["created_at"] == room["created_at"]
        grant = await authorize(app_state(two), room["id"], room["token"])
        assert grant.room_id == room["id"]
        assert (await b.delete(f"/v1/rooms/{room['id']}", headers=auth)).status_code == 200
        assert (await a.get(f"/v1/rooms/{room['id']}", headers=auth)).status_code == 404
        with pytest.raises(AdmissionError) as refused:
            await authorize(app_state(one), room["id"], room["token"])
        assert refused.value.status == 404
        # a key created through one worker works on the other
        issued = await app_state(one).store.keys.create("app", ["calls"])
        r = await b.post("/v1/rooms", headers=bearer(issued.key))
        assert r.status_code == 201
        assert (await app_state(one).rooms.get(r.json()["id"])).key_id == issued.info.id  # type: ignore[union-attr]
