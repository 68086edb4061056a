"""Rate limits per client address and API key: 429 with Retry-After, in memory and in a real
Redis shared by two app instances (two workers), failing open when Redis is down."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from starlette.requests import HTTPConnection

from signaling.app import create_app
from signaling.metrics import ServerMetrics
from signaling.ratelimit import RateLimitedError, RateLimits, client_address
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from tests.backends import SERVER_BACKEND, drop_schema, store_settings
from tests.fakes import fake_models
from tests.server import app_state, bearer, free_port, running_server

ADMIN = "operator-" + "k" * 32


@asynccontextmanager
async def serving(store: StoreSettings, **settings: Any) -> AsyncIterator[FastAPI]:
    application = create_app(
        ServerSettings(jwt_secret="x" * 32, admin_token=ADMIN, **settings),
        models=fake_models(),
        store_settings=store,
    )
    async with application.router.lifespan_context(application):
        yield application


def embedded(tmp_path: Path) -> StoreSettings:
    return StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)


@asynccontextmanager
async def client_from(app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come from ``address``."""
    transport = httpx.ASGITransport(app=app, client=(address, 40_000))
    async with httpx.AsyncClient(transport=transport, base_url="http://parley.test") as c:
        yield c


def assert_limited(r: httpx.Response, bucket: str, window_s: int = 60) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["error"] == "rate_limited" and body["bucket"] == bucket
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= window_s and body["retry_after_s"] == retry_after


async def test_creation_is_limited_per_address(tmp_path: Path) -> None:
    async with (
        serving(embedded(tmp_path), rate_limit_create="3/minute") as app,
        client_from(app, "203.0.113.5") as one,
        client_from(app, "203.0.113.6") as two,
    ):
        for path in ("/v1/rooms", "/v1/sessions", "/v1/rooms"):
            assert (await one.post(path)).status_code == 201
        assert_limited(await one.post("/v1/rooms"), "create")
        assert_limited(await one.post("/v1/sessions"), "create")
        # another address has its own budget
        assert (await two.post("/v1/rooms")).status_code == 201
        metrics = (await two.get("/metrics")).text
        assert 'parley_rate_limited_total{bucket="create"} 2.0' in metrics


async def test_a_key_is_limited_across_addresses(tmp_path: Path) -> None:
    async with serving(embedded(tmp_path), host="0.0.0.0", rate_limit_create="2/minute") as app:
        async with client_from(app, "198.51.100.1") as admin:
            r = await admin.post("/v1/keys", json={"name": "app"}, headers=bearer(ADMIN))
            key = r.json()["key"]
        statuses = []
        for n in range(3):
            async with client_from(app, f"198.51.100.{10 + n}") as c:
                r = await c.post("/v1/rooms", headers=bearer(key))
                statuses.append(r.status_code)
        assert statuses == [201, 201, 429]
        assert "key" in r.json()["detail"]


async def test_offers_chat_and_voice_have_their_own_buckets(tmp_path: Path) -> None:
    async with (
        serving(
            embedded(tmp_path),
            rate_limit_offer="2/minute",
            rate_limit_chat="2/minute",
            rate_limit_voice="1/minute",
        ) as app,
        client_from(app, "192.0.2.7") as c,
    ):
        room = (await c.post("/v1/rooms")).json()
        url = f"/v1/rooms/{room['id']}/offer"
        offer = {"sdp": "garbage", "type": "offer"}
        assert (await c.post(url, json=offer)).status_code == 401  # counted, then refused
        r = await c.post(url, json=offer, headers=bearer(room["token"]))
        assert r.status_code == 400 and r.json()["error"] == "bad_sdp"
        assert_limited(await c.post(url, json=offer, headers=bearer(room["token"])), "offer")

        first = await c.post("/v1/chat/text", json={"text": "hello"})
        assert first.status_code == 200
        follow = {"text": "again", "session_id": first.json()["session_id"]}
        own = bearer(first.json()["session_token"])
        assert (await c.post("/v1/chat/text", json=follow, headers=own)).status_code == 200
        assert_limited(await c.post("/v1/chat/text", json=follow, headers=own), "chat")

        assert (await c.post("/v1/voice/tts", json={"text": "hi"})).status_code == 200
        assert_limited(await c.post("/v1/voice/tts", json={"text": "hi"}), "voice")
        r = await c.post("/v1/voice/stt", content=b"\x00" * 64)
        assert_limited(r, "voice")  # refused before the upload is decoded
        # creation was never limited by all this
        assert (await c.post("/v1/rooms")).status_code == 201


async def test_offers_count_against_the_rooms_key(tmp_path: Path) -> None:
    async with serving(embedded(tmp_path), rate_limit_offer="2/minute") as app:
        async with client_from(app, "192.0.2.1") as owner:
            r = await owner.post("/v1/keys", json={"name": "app"}, headers=bearer(ADMIN))
            room = (await owner.post("/v1/rooms", headers=bearer(r.json()["key"]))).json()
        codes = []
        for n in range(3):  # three callers, one offer each, in the same key's room
            async with client_from(app, f"192.0.2.{20 + n}") as caller:
                r = await caller.post(
                    f"/v1/rooms/{room['id']}/offer",
                    json={"sdp": "garbage", "type": "offer"},
                    headers=bearer(room["token"]),
                )
                codes.append(r.status_code)
        assert codes == [400, 400, 429]


def connection(peer: str, forwarded: str | None = None) -> HTTPConnection:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    scope = {"type": "http", "client": (peer, 1234), "headers": headers}
    return HTTPConnection(scope)


def test_client_address_trusts_forwarded_for_from_trusted_proxies_only() -> None:
    settings = ServerSettings(trusted_proxies="10.0.0.0/8, ::1")
    proxies = settings.trusted_proxy_networks()
    # no trusted proxy configured: the header is the client's to forge, so it is ignored
    assert client_address(connection("203.0.113.9", "1.2.3.4")) == "203.0.113.9"
    assert client_address(connection("203.0.113.9", "1.2.3.4"), proxies) == "203.0.113.9"
    # through our proxy: the nearest address that is not one of ours
    assert client_address(connection("10.0.0.2", "1.2.3.4"), proxies) == "1.2.3.4"
    assert client_address(connection("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.9"), proxies) == (
        "1.2.3.4"
    )
    assert client_address(connection("::1", "2001:db8::7"), proxies) == "2001:db8::7"
    assert client_address(connection("10.0.0.2", "not-an-ip"), proxies) == "10.0.0.2"
    assert client_address(connection("10.0.0.2"), proxies) == "10.0.0.2"
    with pytest.raises(ValueError, match="trusted_proxies"):
        ServerSettings(trusted_proxies="10.0.0.0/33")


async def test_forwarded_clients_have_their_own_budgets(tmp_path: Path) -> None:
    async with (
        serving(
            embedded(tmp_path), rate_limit_create="1/minute", trusted_proxies="127.0.0.1"
        ) as app,
        client_from(app, "127.0.0.1") as proxy,
    ):
        for client in ("1.1.1.1", "2.2.2.2"):
            r = await proxy.post("/v1/rooms", headers={"X-Forwarded-For": client})
            assert r.status_code == 201
        r = await proxy.post("/v1/rooms", headers={"X-Forwarded-For": "1.1.1.1"})
        assert_limited(r, "create")
    async with (
        serving(embedded(tmp_path / "untrusted"), rate_limit_create="1/minute") as app,
        client_from(app, "127.0.0.1") as spoofer,
    ):
        assert (await spoofer.post("/v1/rooms")).status_code == 201
        r = await spoofer.post("/v1/rooms", headers={"X-Forwarded-For": "9.9.9.9"})
        assert_limited(r, "create")  # a forged header buys no new budget


async def test_limits_in_redis_are_shared_by_two_workers(tmp_path: Path) -> None:
    shared = store_settings(SERVER_BACKEND, tmp_path / "data")  # skips without the servers
    try:
        async with (
            serving(shared, rate_limit_create="3/minute") as one,
            serving(shared, rate_limit_create="3/minute") as two,
        ):
            assert app_state(one).limits.backend == "redis"
            async with client_from(one, "203.0.113.77") as a, client_from(two, "203.0.113.77") as b:
                assert (await a.post("/v1/rooms")).status_code == 201
                assert (await b.post("/v1/rooms")).status_code == 201
                assert (await a.post("/v1/sessions")).status_code == 201
                assert_limited(await b.post("/v1/rooms"), "create")
                assert_limited(await a.post("/v1/rooms"), "create")
            async with client_from(two, "203.0.113.78") as other:
                assert (await other.post("/v1/rooms")).status_code == 201
    finally:
        await drop_schema(shared)


async def test_redis_down_fails_open_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="signaling.ratelimit")
    limits = RateLimits({"create": "1/minute"}, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    metrics = ServerMetrics()
    metrics.watch_rate_limits(limits.stats)
    try:
        assert limits.backend == "redis"
        for _ in range(5):  # over the limit, but the limit cannot be counted: let through
            await limits.hit("create", address="203.0.113.1", key_id="k1")
        assert limits.storage_errors == 1  # then Redis is left alone for a few seconds
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "requests pass unlimited" in warnings[0]
        assert b"parley_rate_limit_storage_errors_total 1.0" in metrics.render()
    finally:
        await limits.aclose()


async def test_memory_limits_refuse_with_retry_after() -> None:
    limits = RateLimits({"create": "2/second;3/minute", "chat": "off"})
    try:
        await limits.hit("create", address="a")
        await limits.hit("create", address="a")
        with pytest.raises(RateLimitedError) as refused:
            await limits.hit("create", address="a")
        assert refused.value.subject == "address" and 1 <= refused.value.retry_after_s <= 1
        for _ in range(100):
            await limits.hit("chat", address="a")  # off
        await limits.hit("create", key_id="k")  # keys and addresses are counted apart
        assert limits.stats() == {"refused_create": 1, "refused_chat": 0, "storage_errors": 0}
    finally:
        await limits.aclose()


async def test_websocket_calls_are_limited_with_close_code_4429(tmp_path: Path) -> None:
    with running_server(fake_models(), rate_limit_offer="1/minute") as url:
        ws_url = url.replace("http", "ws") + "/v1/ws/voice?room=room_nope&token=x"
        codes = []
        for _ in range(2):
            async with websockets.connect(ws_url) as ws:
                error = json.loads(await ws.recv())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None
                codes.append((closed.value.rcvd.code, error["retryable"]))
        assert codes == [(4404, False), (4429, True)]
