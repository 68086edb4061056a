"""Logging: redaction, correlation ids, and a whole WebSocket call's logs grepped for secrets.

The call test runs the real server (uvicorn on loopback, ``signaling.logs``'
configuration at TRACE, below DEBUG: uvicorn's access log, its WebSocket and
ASGI message logs and every DEBUG line of the process; in text and in JSON)
with fake providers whose words are known, joins over a WebSocket with the
join token in the URL (as a browser does), speaks a turn and types one, and
tries a socket with a forged token and a request with a token in its query.
Every record of the process is
kept (``tests.logcapture``) with its lines from both formatters, and the
server's own output is read back: no token, the JWT secret, the caller's
words or the agent's replies may appear anywhere, while the lines that held
the token show it redacted and carry their request and call ids.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import re
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import websockets
from websockets.frames import Frame, Opcode

from signaling.app import create_app
from signaling.correlation import (
    CallContext,
    RequestIdMiddleware,
    bind_call,
    call_scope,
    current_call,
    current_request_id,
    request_id_var,
)
from signaling.logs import (
    REDACTED,
    LogConfigError,
    PayloadDumpFilter,
    RedactFilter,
    configure_logging,
    log_config,
    log_format_from_env,
    redact,
)
from signaling.settings import ServerSettings
from tests.fakes import FakeSTT, FakeTTS, ScriptedLLM, fake_models, tone
from tests.logcapture import LogCapture
from tests.server import TEST_SECRET, running_server
from tests.wscall import CLIENT_LOG, silence_after, websocket_call

CALLER_WORDS = "please book a table for seven people by the harbour"
TYPED = "could you also order the lemon tart for dessert"
REPLY_VOICE = "Your table by the harbour is booked for seven tonight."
REPLY_TYPED = "The lemon tart is ordered and waits for you."
CLIENT_REQUEST_ID = "client-req-0001"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYWxsZXIiLCJyb29tIjoicm9vbV94In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
HEX32 = re.compile(r"[0-9a-f]{32}")

LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "aiosqlite")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the process's logging back as it was (a log config applies process-wide)."""
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append(
            (logger, logger.handlers[:], logger.level, logger.propagate, logger.filters[:])
        )
    try:
        yield
    finally:
        for logger, handlers, level, propagate, filters in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
            logger.filters[:] = filters
            logger.disabled = False


def configured(level: str, fmt: str) -> tuple[dict[str, Any], io.StringIO]:
    """The server's log config, writing to a string buffer instead of stderr."""
    stream = io.StringIO()
    config = log_config(level, fmt)
    config["handlers"]["default"]["stream"] = stream
    return config, stream


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('1.2.3.4:5 - "GET /v1/ws/voice?room=r1&token=' + JWT + ' HTTP/1.1" 101', JWT),
        ("/v1/ws/voice?room=r1&session=s1&session_token=abc123def456", "abc123def456"),
        ("/oauth/callback?code=0a1b2c3d4e&state=f5e6d7c8", "0a1b2c3d4e"),
        ("/oauth/callback?code=0a1b2c3d4e&state=f5e6d7c8", "f5e6d7c8"),
        ("/x?API_KEY=k-0123456789&page=2", "k-0123456789"),
        ("/x?client_secret=s3cr3t-value", "s3cr3t-value"),
        ("Authorization: Bearer opaque-token-value", "opaque-token-value"),
        ("{'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ('{"xi-api-key": "xi_0123456789abcdef"}', "xi_0123456789abcdef"),
        ("password=hunter2hunter2 retrying", "hunter2hunter2"),
        ("postgresql+asyncpg://parley:pg-pass-123@db:5432/parley", "pg-pass-123"),
        ("redis://:redis-pass-456@cache:6379/0", "redis-pass-456"),
        ("a bare JWT " + JWT + " in a message", JWT),
        ("groq key gsk_0123456789abcdefghij leaked", "gsk_0123456789abcdefghij"),
    ],
)
def test_redact_removes_secrets(line: str, secret: str) -> None:
    clean = redact(line)
    assert secret not in clean
    assert REDACTED in clean


@pytest.mark.parametrize(
    "line",
    [
        "call call_AbC123 opened (websocket, room room_9)",
        '127.0.0.1:5555 - "GET /v1/rooms/room_9?session=ses_1 HTTP/1.1" 200',
        "llm_tokens=12 max_tokens: 80 monkey=3 keyboard layout",
        '{"state": "listening", "code": 4401}',
        "https://api.groq.com/openai/v1/chat/completions",
    ],
)
def test_redact_keeps_harmless_text(line: str) -> None:
    assert redact(line) == line


def test_redact_filter_keeps_the_access_records_shape() -> None:
    """uvicorn's access formatter needs its five arguments: only the path changes."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5555", "GET", f"/v1/ws/voice?room=r1&token={JWT}", "1.1", 200),
        None,
    )
    assert RedactFilter().filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    assert record.args[2] == f"/v1/ws/voice?room=r1&token={REDACTED}"
    assert record.getMessage().endswith(f'token={REDACTED} HTTP/1.1" 200')


def test_redact_filter_cleans_messages_and_tracebacks() -> None:
    try:
        raise ConnectionError(f"could not reach redis://:pw-0123456@cache:6379 with {JWT}")
    except ConnectionError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed with token=%s", ("tok-0123456789",), None
        )
        record.exc_info = sys.exc_info()
    assert RedactFilter().filter(record)
    text = logging.Formatter().format(record)
    for secret in ("tok-0123456789", "pw-0123456", JWT):
        assert secret not in text
    assert "ConnectionError" in text and REDACTED in text


# ------------------------------------------------------------------ configuration


def test_log_config_checks_level_and_format(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LogConfigError):
        log_config("loud", "text")
    with pytest.raises(LogConfigError):
        log_config("info", "yaml")
    monkeypatch.delenv("PARLEY_LOG_FORMAT", raising=False)
    assert log_format_from_env() == "text"
    monkeypatch.setenv("PARLEY_LOG_FORMAT", "JSON")
    assert log_format_from_env() == "json"
    assert log_config("info")["formatters"]["default"]["()"].endswith("JsonFormatter")
    monkeypatch.setenv("PARLEY_LOG_FORMAT", "xml")
    with pytest.raises(LogConfigError):
        log_format_from_env()
    # plain data only: uvicorn applies it again in each worker process
    json.dumps(log_config("trace", "text"))


async def test_json_lines_carry_ids_and_redacted_tracebacks(restore_logging: None) -> None:
    config, stream = configured("debug", "json")
    logging.config.dictConfig(config)
    log = logging.getLogger("tests.logs.json")
    token = request_id_var.set("req-json-1")
    try:
        with call_scope(CallContext("call_json", "ses_json", "websocket")):

            async def in_a_task() -> None:
                log.info("inside the call's task")

            await asyncio.get_running_loop().create_task(in_a_task())
            try:
                raise ValueError(f"bad header Authorization: Bearer {JWT}")
            except ValueError:
                log.exception("handling failed for /v1/x?token=%s", JWT)
        log.warning("after the call")
    finally:
        request_id_var.reset(token)
    log.debug("outside any request")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "inside the call's task",
        f"handling failed for /v1/x?token={REDACTED}",
        "after the call",
        "outside any request",
    ]
    first, failed, after, outside = lines
    assert {"ts", "level", "logger", "message", "pid"} <= first.keys()
    assert first["ts"].endswith("Z") and first["logger"] == "tests.logs.json"
    assert (first["request_id"], first["call_id"]) == ("req-json-1", "call_json")
    assert failed["level"] == "ERROR" and "ValueError" in failed["exc"]
    assert JWT not in stream.getvalue() and "Bearer [redacted]" in failed["exc"]
    assert after["request_id"] == "req-json-1" and "call_id" not in after
    assert "request_id" not in outside and "call_id" not in outside


def test_text_lines_carry_ids(restore_logging: None) -> None:
    config, stream = configured("info", "text")
    logging.config.dictConfig(config)
    token = request_id_var.set("req-text-1")
    try:
        with call_scope(CallContext("call_text", "ses_text", "webrtc")):
            logging.getLogger("tests.logs.text").info("hello %s", "there")
    finally:
        request_id_var.reset(token)
    line = stream.getvalue().strip()
    assert line.endswith("INFO tests.logs.text [req=req-text-1 call=call_text]: hello there")


def test_websocket_frame_dumps_are_dropped(restore_logging: None) -> None:
    config, stream = configured("debug", "text")
    logging.config.dictConfig(config)
    error_log = logging.getLogger("uvicorn.error")
    frame = Frame(Opcode.TEXT, json.dumps({"type": "transcript", "text": CALLER_WORDS}).encode())
    error_log.debug("> %s", frame)
    error_log.debug("< %s", frame)
    error_log.debug("= connection is %s", "OPEN")
    assert not PayloadDumpFilter().filter(
        logging.LogRecord("x", logging.DEBUG, __file__, 1, "< %s", (frame,), None)
    )
    out = stream.getvalue()
    assert "connection is OPEN" in out and "harbour" not in out


def test_configure_logging_applies_and_returns_the_config(restore_logging: None) -> None:
    config = configure_logging("warning", "text")
    root = logging.getLogger()
    assert root.level == logging.WARNING and len(root.handlers) == 1
    assert logging.getLogger("uvicorn.access").propagate
    assert any(isinstance(f, RedactFilter) for f in logging.getLogger("uvicorn.access").filters)
    assert config == log_config("warning", "text")


# ------------------------------------------------------------------ request ids


async def _through_middleware(
    scope_type: str, headers: list[tuple[bytes, bytes]]
) -> tuple[list[dict[str, Any]], list[str | None]]:
    """One request through ``RequestIdMiddleware``: the messages sent, the ids seen inside."""
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_request_id())
        bind_call(CallContext("call_mw", "ses_mw", scope["type"]))  # as admission does
        if scope["type"] == "http":
            start = {"type": "http.response.start", "status": 200, "headers": []}
            start["headers"] = [(b"x-request-id", b"spoofed-by-app")]
            await send(start)
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await send({"type": "websocket.accept"})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": scope_type, "headers": headers, "path": "/", "query_string": b""}
    await RequestIdMiddleware(app)(scope, receive, send)
    assert current_request_id() is None and current_call() is None  # unbound after it
    return sent, seen


def _header(message: dict[str, Any]) -> list[bytes]:
    return [v for k, v in message.get("headers", []) if k == b"x-request-id"]


@pytest.mark.parametrize("scope_type", ["http", "websocket"])
async def test_request_id_is_honoured_or_generated_and_returned(scope_type: str) -> None:
    sent, seen = await _through_middleware(scope_type, [(b"x-request-id", b"abc-123.x:1")])
    assert seen == ["abc-123.x:1"] and _header(sent[0]) == [b"abc-123.x:1"]
    sent, seen = await _through_middleware(scope_type, [])
    assert seen[0] is not None and HEX32.fullmatch(seen[0])
    assert _header(sent[0]) == [seen[0].encode()]


@pytest.mark.parametrize(
    "incoming",
    [b"x" * 65, JWT.encode(), b"has space", b"line\nbreak", b"", b"-leading-dash", b"caf\xc3\xa9"],
)
async def test_insane_request_ids_are_replaced(incoming: bytes) -> None:
    sent, seen = await _through_middleware("http", [(b"x-request-id", incoming)])
    assert seen[0] is not None and HEX32.fullmatch(seen[0])
    assert _header(sent[0]) == [seen[0].encode()]


# ------------------------------------------------------------------ a whole call


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_no_secret_or_call_text_reaches_any_log_line(fmt: str, restore_logging: None) -> None:
    """A WebSocket call with its token in the URL, its whole log grepped (see the module doc)."""
    models = fake_models(
        stt=FakeSTT([CALLER_WORDS], delay=0.05),
        llm=ScriptedLLM([REPLY_VOICE, REPLY_TYPED]),
        tts=FakeTTS(seconds_per_char=0.01),
    )
    config, stream = configured("trace", fmt)  # DEBUG and below: the most a server logs
    forged = jwt.encode({"sub": "caller", "room": "nope"}, "x" * 32, algorithm="HS256")
    capture = LogCapture(keys={TEST_SECRET, forged})
    with running_server(models, log_config=config, log_level="trace") as base_url:
        logging.getLogger().addHandler(capture)  # after uvicorn applied the config
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                room = (await client.post("/v1/rooms")).json()
                # a token in a plain request's query, and a refused socket's
                got = await client.get(f"/v1/rooms/{room['id']}", params={"token": room["token"]})
                assert HEX32.fullmatch(got.headers["x-request-id"])
            capture.keys.add(room["token"])
            call = await websocket_call(
                base_url,
                speech=[silence_after(tone(1.0), 1.2)],
                typed=[TYPED],
                headers={"X-Request-Id": CLIENT_REQUEST_ID},
            )
            capture.keys.update({call.room["token"], call.hello["session_token"]})
            refused = await _refused_socket(base_url, room["id"], forged)
            assert refused == 4401
        finally:
            capture.unwatch()
    # the call really happened, with these texts
    assert call.close_code == 1000 and call.audio_bytes > 0
    assert sorted(call.texts) == sorted([CALLER_WORDS, TYPED, REPLY_VOICE, REPLY_TYPED])
    assert call.response_headers["x-request-id"] == CLIENT_REQUEST_ID
    capture.keep_secret(*call.texts)

    # no record, raw or formatted either way, holds a secret or a text of the call
    capture.assert_clean()
    out = stream.getvalue()
    lines = out.splitlines()
    assert len(lines) > 10
    secrets = capture.keys | capture.texts
    assert not [s for s in secrets if s in out]
    # the lines that had the token show it redacted, with their ids
    accepted = [line for line in lines if "WebSocket /v1/ws/voice" in line]
    assert accepted and all(f"token={REDACTED}" in line for line in accepted)
    ws_line = next(line for line in accepted if "[accepted]" in line and CLIENT_REQUEST_ID in line)
    ended = [line for line in lines if f"call {call.call_id} ended" in line]
    room_get = next(line for line in lines if f"GET /v1/rooms/{room['id']}?token=" in line)
    assert f"token={REDACTED}" in room_get
    # at TRACE uvicorn logs each ASGI scope, its query string included
    assert any("ASGI [" in line and f"token={REDACTED}" in line for line in lines)
    if fmt == "json":
        parsed = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all({"ts", "level", "logger", "message"} <= p.keys() for p in parsed)
        ws = json.loads(ws_line)
        assert (ws["request_id"], ws["call_id"]) == (CLIENT_REQUEST_ID, call.call_id)
        assert len(ended) == 1 and json.loads(ended[0])["call_id"] == call.call_id
        access = json.loads(room_get)
        assert access["logger"] == "uvicorn.access" and HEX32.fullmatch(access["request_id"])
        assert access["http"]["status"] == got.status_code and REDACTED in access["http"]["path"]
        in_call = [p for p in parsed if p.get("call_id") == call.call_id]
        assert len(in_call) >= 2
    else:
        assert f"[req={CLIENT_REQUEST_ID} call={call.call_id}]" in ws_line
        assert len(ended) == 1 and f"call={call.call_id}]" in ended[0]
        assert re.search(r"\[req=[0-9a-f]{32}\]", room_get)


async def _refused_socket(base_url: str, room_id: str, token: str) -> int | None:
    """A socket refused for its (forged) token: the close code."""
    url = base_url.replace("http", "ws", 1) + f"/v1/ws/voice?room={room_id}&token={token}"
    async with websockets.connect(url, logger=CLIENT_LOG, proxy=None) as ws:
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
        return ws.close_code


def test_call_scope_sets_and_resets() -> None:
    assert current_call() is None
    with call_scope(CallContext("call_a", "ses_a", "sip")) as ctx:
        assert current_call() == ctx
    assert current_call() is None


async def test_an_unhandled_error_answers_500_with_the_request_id() -> None:
    """Starlette's outermost 500 carries the request's id and none of the failure's text."""
    app = create_app(ServerSettings(jwt_secret=TEST_SECRET), models=fake_models())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a detail the client must not see")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:
        r = await client.get("/boom", headers={"X-Request-Id": "req-500"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "req-500"
    assert r.json() == {"error": "internal_error", "detail": "internal server error"}
    assert "must not see" not in r.text
