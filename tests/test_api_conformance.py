"""The API as a demanding HTTP client sees it (issue 14, defects 3 and 6).

A real server on loopback (uvicorn, fake models): refused SDP offers are
400/413 with a reason, take no call slot and write no session, and leave the
keep-alive connection usable; aiortc's own refusal of an offer is a 400 too;
``OPTIONS``, ``HEAD`` and 405 name every method of a path; CORS preflights
stay with the CORS middleware; the OpenAPI document lists every error status
and the bodies routes read themselves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from media.caller import CallerPeer
from signaling.app import create_app
from signaling.sdp_offer import MAX_SDP_BYTES
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from tests.fakes import fake_models
from tests.offers import AIORTC_OFFER, SHA256, edit
from tests.server import asgi_client, bearer, running_server

ADMIN = "admin-" + "a" * 32
UNKNOWN_CODECS = (
    AIORTC_OFFER.replace("opus/48000/2", "speex/48000")
    .replace("G722/8000", "iLBC/8000")
    .replace("PCMU/8000", "AMR/8000")
    .replace("PCMA/8000", "GSM/8000")
)
BAD_PORT = edit(AIORTC_OFFER, "m=audio 45555", "m=audio abc")
BOGUS_HASH = AIORTC_OFFER.replace(f"sha-256 {SHA256}", f"sha-999 {SHA256}")
NO_LIMIT = "100000/minute"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(
        fake_models(),
        max_calls=2,
        admin_token=ADMIN,
        rate_limit_create=NO_LIMIT,
        rate_limit_offer=NO_LIMIT,
    ) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        yield c


async def new_room(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.post("/v1/rooms")
    assert r.status_code == 201, r.text
    room: dict[str, Any] = r.json()
    return room


async def session_count(client: httpx.AsyncClient) -> int:
    r = await client.get("/v1/sessions", params={"limit": 200}, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    return len(r.json()["sessions"])


async def active_calls(client: httpx.AsyncClient) -> int:
    calls: int = (await client.get("/health")).json()["active_calls"]
    return calls


class RawConnection:
    """One HTTP/1.1 keep-alive connection, spoken by hand (no client library reconnects)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; read its whole response (status, lower-cased headers, body)."""
        lines = [f"{method} {path} HTTP/1.1", "Host: parley.test", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line = await asyncio.wait_for(self.reader.readline(), 10)
        assert status_line, "the server closed the connection"
        status = int(status_line.split()[1])
        fields: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            fields[name.strip().lower()] = value.strip()
        data = await self.reader.readexactly(int(fields.get("content-length", "0")))
        return status, fields, data


async def raw_connection(base_url: str) -> RawConnection:
    host, port = base_url.removeprefix("http://").split(":")
    return RawConnection(*await asyncio.open_connection(host, int(port)))


# ----------------------------------------------------------------- defect 3


async def test_unknown_codecs_are_a_400_and_the_connection_stays_usable(
    base_url: str, client: httpx.AsyncClient
) -> None:
    room = await new_room(client)
    sessions = await session_count(client)
    conn = await raw_connection(base_url)
    try:
        body = json.dumps({"sdp": UNKNOWN_CODECS, "type": "offer"}).encode()
        headers = {"Content-Type": "application/json", **bearer(room["token"])}
        status, fields, data = await conn.request(
            "POST", f"/v1/rooms/{room['id']}/offer", body, headers
        )
        assert status == 400
        error = json.loads(data)
        assert error["error"] == "bad_sdp"
        assert "no codec this server can answer" in error["detail"]
        assert fields.get("connection", "keep-alive") != "close"
        # the same connection answers the next request
        status, _, data = await conn.request("GET", "/health")
        assert status == 200 and json.loads(data)["active_calls"] == 0
    finally:
        conn.writer.close()
    assert await session_count(client) == sessions


async def test_aiortc_refusing_an_offer_is_a_400_not_a_500(
    base_url: str, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: an offer the checks let through and aiortc refuses (here: the
    checks switched off) is still a 400, keeps the connection, and opens no call."""
    monkeypatch.setattr("signaling.webrtc.check_offer", lambda sdp, kind: None)
    room = await new_room(client)
    sessions = await session_count(client)
    conn = await raw_connection(base_url)
    try:
        headers = {"Content-Type": "application/sdp", **bearer(room["token"])}
        path = f"/v1/rooms/{room['id']}/offer"
        for offer, reason in [
            (UNKNOWN_CODECS, "no codec in common"),  # aiortc's OperationError
            (edit(AIORTC_OFFER, "a=sendrecv\r\n", ""), "cannot be answered (ValueError)"),
        ]:
            status, _, data = await conn.request("POST", path, offer.encode(), headers)
            assert status == 400, data
            assert reason in json.loads(data)["detail"]
        assert (await conn.request("GET", "/health"))[0] == 200
    finally:
        conn.writer.close()
    assert await active_calls(client) == 0
    assert await session_count(client) == sessions


@pytest.mark.parametrize(
    ("offer", "reason"),
    [(BAD_PORT, "port must be a number"), (BOGUS_HASH, "unknown fingerprint hash 'sha-999'")],
    ids=["m=audio abc", "sha-999"],
)
async def test_malformed_offers_take_no_call_slot(
    client: httpx.AsyncClient, offer: str, reason: str
) -> None:
    room = await new_room(client)
    sessions = await session_count(client)
    url = f"/v1/rooms/{room['id']}/offer"
    auth = bearer(room["token"])
    r = await client.post(url, json={"sdp": offer, "type": "offer"}, headers=auth)
    assert (r.status_code, r.json()["error"]) == (400, "bad_sdp")
    assert reason in r.json()["detail"]
    whip = await client.post(
        url, content=offer, headers={**auth, "Content-Type": "application/sdp"}
    )
    assert (whip.status_code, whip.json()["detail"]) == (400, r.json()["detail"])
    assert await active_calls(client) == 0
    assert await session_count(client) == sessions
    assert (await client.get(f"/v1/rooms/{room['id']}", headers=auth)).json()["calls"] == []


async def test_a_real_offer_still_gets_a_call(client: httpx.AsyncClient) -> None:
    room = await new_room(client)
    peer = CallerPeer()
    try:
        r = await client.post(
            f"/v1/rooms/{room['id']}/offer",
            json={"sdp": await peer.offer(), "type": "offer"},
            headers=bearer(room["token"]),
        )
        assert r.status_code == 200, r.text
        assert r.json()["type"] == "answer" and "m=audio" in r.json()["sdp"]
        assert await active_calls(client) == 1
        hang_up = await client.delete(
            f"/v1/rooms/{room['id']}/calls/{r.json()['call_id']}", headers=bearer(room["token"])
        )
        assert hang_up.status_code == 200
    finally:
        await peer.close()
    for _ in range(100):
        if await active_calls(client) == 0:
            break
        await asyncio.sleep(0.05)
    assert await active_calls(client) == 0


# ----------------------------------------------------------------- defect 6


async def test_an_sdp_over_the_limit_says_so(client: httpx.AsyncClient) -> None:
    room = await new_room(client)
    url = f"/v1/rooms/{room['id']}/offer"
    auth = bearer(room["token"])
    big = AIORTC_OFFER + "a=x-pad:" + "p" * MAX_SDP_BYTES + "\r\n"
    size = len(big.encode())
    r = await client.post(url, json={"sdp": big, "type": "offer"}, headers=auth)
    assert r.status_code == 413
    assert r.json() == {
        "error": "sdp_too_large",
        "detail": f"the SDP offer is {size} bytes; at most {MAX_SDP_BYTES} are accepted",
    }
    whip = await client.post(url, content=big, headers={**auth, "Content-Type": "application/sdp"})
    assert (whip.status_code, whip.json()) == (413, r.json())
    # other body errors still say what is wrong
    for content, detail in [
        (b"{not json", "the body is not valid JSON"),
        (json.dumps({"sdp": AIORTC_OFFER}).encode(), "the body must be JSON {sdp, type}: type:"),
        (
            json.dumps({"sdp": 5, "type": "offer"}).encode(),
            "the body must be JSON {sdp, type}: sdp: Input should be a valid string",
        ),
    ]:
        r = await client.post(
            url, content=content, headers={**auth, "Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["detail"].startswith(detail), r.text
    assert await active_calls(client) == 0


ALLOW = {
    "/health": "GET, HEAD, OPTIONS",
    "/v1/rooms": "POST, OPTIONS",
    "/v1/rooms/room_x": "GET, HEAD, DELETE, OPTIONS",
    "/v1/rooms/room_x/offer": "POST, OPTIONS",
    "/v1/rooms/room_x/calls/call_y": "DELETE, OPTIONS",
    "/v1/sessions": "GET, HEAD, POST, OPTIONS",
    "/v1/sessions/ses_x": "GET, HEAD, DELETE, OPTIONS",
    "/v1/sessions/ses_x/history": "GET, HEAD, OPTIONS",
    "/v1/voice/stt": "POST, OPTIONS",
    "/v1/voice/tts": "POST, OPTIONS",
    "/v1/chat/text": "POST, OPTIONS",
    "/v1/calls/call_x/transfer": "POST, OPTIONS",
    "/": "GET, HEAD, OPTIONS",
}


async def test_options_lists_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    for path, allow in ALLOW.items():
        r = await client.options(path)
        assert (r.status_code, r.headers.get("allow"), r.content) == (204, allow, b""), path
    assert (await client.options("/v1/nowhere")).status_code == 404


async def test_405_and_head_name_every_method(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("PUT", "/v1/rooms/room_x"),
        ("PATCH", "/v1/sessions"),
        ("GET", "/v1/rooms/room_x/offer"),
        ("TRACE", "/health"),
    ]:
        r = await client.request(method, path)
        assert r.status_code == 405, (method, path)
        assert r.headers["allow"] == ALLOW[path]
        assert r.json() == {
            "error": "method_not_allowed",
            "detail": f"{method} is not allowed here; allowed: {ALLOW[path]}",
        }
    head = await client.head("/health")
    get = await client.get("/health")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"] == "application/json"
    assert (await client.head("/v1/rooms")).status_code == 405  # POST only: no HEAD


async def _app(tmp_path: Path, **settings: Any) -> AsyncIterator[FastAPI]:
    application = create_app(
        ServerSettings(jwt_secret="x" * 32, **settings),
        models=fake_models(),
        store_settings=StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with application.router.lifespan_context(application):
        yield application


PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


async def test_cors_preflight_is_left_to_the_cors_middleware(tmp_path: Path) -> None:
    async for app in _app(tmp_path / "open", cors_origins=["https://app.example"]):
        async with asgi_client(app) as c:
            r = await c.options("/v1/rooms/room_x/offer", headers=PREFLIGHT)
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            assert "POST" in r.headers["access-control-allow-methods"]
            plain = await c.options("/v1/rooms/room_x/offer")  # not a preflight: Allow
            assert (plain.status_code, plain.headers["allow"]) == (204, "POST, OPTIONS")
    async for app in _app(tmp_path / "closed"):  # no CORS configured: refused, Allow right
        async with asgi_client(app) as c:
            r = await c.options("/v1/rooms/room_x/offer", headers=PREFLIGHT)
            assert (r.status_code, r.headers["allow"]) == (405, "POST, OPTIONS")
            assert "access-control-allow-origin" not in r.headers


EXPECTED_ERRORS = {
    ("get", "/health"): {"503"},
    ("post", "/v1/rooms"): {"400", "401", "403", "413", "429", "503"},
    ("get", "/v1/rooms/{room_id}"): {"401", "403", "404", "503"},
    ("delete", "/v1/rooms/{room_id}"): {"401", "403", "404", "503"},
    ("post", "/v1/rooms/{room_id}/offer"): {"400", "401", "403", "404", "413", "415", "429", "503"},
    ("delete", "/v1/rooms/{room_id}/calls/{call_id}"): {"401", "403", "404", "503"},
    ("get", "/v1/sessions"): {"400", "401", "403", "503"},
    ("post", "/v1/sessions"): {"401", "403", "413", "429", "503"},
    ("get", "/v1/sessions/{session_id}"): {"401", "403", "404", "503"},
    ("delete", "/v1/sessions/{session_id}"): {"401", "403", "404", "503"},
    ("get", "/v1/sessions/{session_id}/history"): {"401", "403", "404", "503"},
    ("post", "/v1/calls/{call_id}/transfer"): {"401", "403", "404", "409", "503"},
    ("post", "/v1/chat/text"): {"400", "401", "403", "413", "429", "502", "503"},
    ("post", "/v1/voice/stt"): {"400", "401", "403", "413", "415", "429", "502", "503"},
    ("post", "/v1/voice/tts"): {"400", "401", "403", "413", "429", "502", "503"},
}


async def test_openapi_lists_error_responses_and_raw_bodies(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    error_ref = "#/components/schemas/ErrorOut"
    assert spec["components"]["schemas"]["ErrorOut"]["required"] == ["error", "detail"]
    for (method, path), statuses in EXPECTED_ERRORS.items():
        responses = spec["paths"][path][method]["responses"]
        assert statuses <= set(responses), (method, path, sorted(responses))
        for status in statuses:
            content = responses[status]["content"]["application/json"]
            assert content["schema"]["$ref"] == error_ref, (method, path, status)
    offer = spec["paths"]["/v1/rooms/{room_id}/offer"]["post"]
    assert set(offer["requestBody"]["content"]) == {"application/json", "application/sdp"}
    assert offer["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "sdp",
        "type",
    ]
    assert "application/sdp" in offer["responses"]["201"]["content"]
    assert offer["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/AnswerOut"
    )
    stt = spec["paths"]["/v1/voice/stt"]["post"]["requestBody"]
    assert stt["required"] is True
    assert {"audio/wav", "application/octet-stream", "multipart/form-data"} <= set(stt["content"])
    assert stt["content"]["audio/wav"]["schema"] == {"type": "string", "format": "binary"}
    tts = spec["paths"]["/v1/voice/tts"]["post"]["responses"]["200"]
    assert set(tts["content"]) == {"audio/wav"}
