"""schemathesis against the live app: no 5xx, every response and status as documented.

A real server on loopback (uvicorn) with fake models, so the STT, TTS and
chat routes run their whole path in microseconds. Every operation of the
published OpenAPI document is fuzzed (bounded examples), and the paths a
fuzzer rarely reaches are called with valid data through schemathesis too,
so the same checks judge them: an audio upload that transcribes, a synthesis,
a chat turn, offers into a real room (refused SDP, WHIP), a room's life.

The server runs in the open loopback mode (no API key needed). To run it with
keys, set ``API_KEY`` (one line): every request then carries it.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from signaling.app import create_app
from signaling.settings import ServerSettings
from tests.fakes import fake_models, tone
from tests.offers import AIORTC_OFFER, SHA256
from tests.server import running_server

API_KEY: str | None = None
"""An API key with the ``calls`` scope for a server that requires keys (None: open mode)."""
AUTH = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    unsupported_method,  # 405 with an Allow header for undocumented methods
]
NO_LIMIT = "1000000/minute"
AUDIO_TYPES = ["audio/wav", "audio/ogg", "audio/mpeg", "audio/webm", "audio/flac"]
EXAMPLES = 50
"""Fuzzed examples per operation (plus schemathesis' explicit and coverage cases)."""


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(
        fake_models(),
        max_calls=2,
        rate_limit_create=NO_LIMIT,
        rate_limit_offer=NO_LIMIT,
        rate_limit_chat=NO_LIMIT,
        rate_limit_voice=NO_LIMIT,
    ) as url:
        yield url


schemathesis.serializer.alias("application/sdp", "text/plain")  # WHIP offers are SDP text
schemathesis.serializer.alias(AUDIO_TYPES, "application/octet-stream")  # STT uploads

SPEC = create_app(ServerSettings(jwt_secret="x" * 32), models=fake_models()).openapi()
"""The OpenAPI document the server publishes (built without starting anything; a test checks
that the live server serves the same)."""
schema = schemathesis.openapi.from_dict(SPEC)


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    """The live server's OpenAPI document, loaded by schemathesis."""
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_the_live_server_publishes_the_tested_document(base_url: str) -> None:
    assert httpx.get(f"{base_url}/openapi.json").json() == SPEC


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api(case: schemathesis.Case[Any], base_url: str) -> None:
    case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS)


# ------------------------------------------------ the paths a fuzzer rarely reaches


def wav_of(pcm: Any, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return out.getvalue()


def call(api_schema: Any, path: str, method: str, **data: Any) -> Any:
    """Call one operation with chosen data (``AUTH`` unless other headers are given);
    the same checks judge the response."""
    data["headers"] = data.get("headers") or AUTH or None
    case = api_schema[path][method].Case(**data)
    return case.call_and_validate(checks=CHECKS)


def test_model_routes_with_valid_input(api_schema: Any) -> None:
    stt = call(api_schema, "/v1/voice/stt", "POST", body=wav_of(tone(0.5)), media_type="audio/wav")
    assert stt.status_code == 200 and "text" in stt.json()
    tts = call(api_schema, "/v1/voice/tts", "POST", body={"text": "Hello there."})
    assert tts.status_code == 200 and tts.content.startswith(b"RIFF")
    chat = call(api_schema, "/v1/chat/text", "POST", body={"text": "Hi"})
    assert chat.status_code == 200 and chat.json()["reply"]
    again = call(
        api_schema,
        "/v1/chat/text",
        "POST",
        body={"text": "And again", "session_id": chat.json()["session_id"]},
        headers={"Authorization": f"Bearer {chat.json()['session_token']}"},
    )
    assert again.status_code == 200
    garbage = call(api_schema, "/v1/voice/stt", "POST", body=b"RIFF....", media_type="audio/wav")
    assert garbage.status_code == 415


def test_a_room_and_its_offers(api_schema: Any, base_url: str) -> None:
    room = call(api_schema, "/v1/rooms", "POST", body={"name": "fuzz"})
    assert room.status_code == 201
    room_id, token = room.json()["id"], room.json()["token"]
    path = {"room_id": room_id}
    auth = {"Authorization": f"Bearer {token}"}
    refused = [
        ({"sdp": "v=0\r\n", "type": "offer"}, "application/json", 400),
        ({"sdp": AIORTC_OFFER.replace("sha-256", "sha-999"), "type": "offer"}, None, 400),
        ({"sdp": AIORTC_OFFER, "type": "answer"}, None, 400),
        ({"sdp": "x" * 70_000, "type": "offer"}, None, 413),
    ]
    for body, media_type, status in refused:
        r = call(
            api_schema,
            "/v1/rooms/{room_id}/offer",
            "POST",
            path_parameters=path,
            headers=auth,
            body=body,
            media_type=media_type or "application/json",
        )
        assert r.status_code == status, r.text
    whip = call(
        api_schema,
        "/v1/rooms/{room_id}/offer",
        "POST",
        path_parameters=path,
        headers=auth,
        body=AIORTC_OFFER.replace(SHA256, SHA256[:-3]),
        media_type="application/sdp",
    )
    assert whip.status_code == 400
    got = call(api_schema, "/v1/rooms/{room_id}", "GET", path_parameters=path, headers=auth)
    assert got.status_code == 200 and got.json()["calls"] == []
    gone = call(api_schema, "/v1/rooms/{room_id}", "DELETE", path_parameters=path, headers=auth)
    assert gone.status_code == 200
    assert httpx.get(f"{base_url}/health").json()["active_calls"] == 0
