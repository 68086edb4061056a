"""Hypothesis fuzzers of the control messages (WebSocket text messages, data channel).

``media.transport.parse_control`` must turn anything into a ``ControlMessage``
without raising (two inputs used to escape it: JSON nested deeper than the
recursion limit, and an integer of over 4,300 digits), and a live WebSocket
call answers each message it cannot understand with one ``input`` error
event, stays open, and still hangs up on ``{"type": "hangup"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.transport import (
    MAX_CONTROL_BYTES,
    HangUp,
    InvalidControl,
    TextInput,
    parse_control,
)
from tests.fakes import fake_models
from tests.server import running_server

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value."""

control_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "hangup", "Text", "", "dtmf", "hold"]) | json_values},
    optional={"text": st.text(max_size=40) | json_values, "extra": json_values},
)
"""Objects shaped like control messages, right or wrong."""

nasty = st.sampled_from(
    [
        "[" * 5000,  # nesting past the recursion limit
        '{"type": "text", "text": ' * 2000,
        "1" * 5000,  # an integer over Python's 4300-digit conversion limit
        '{"type": "text", "text": "\\ud800"}',  # a lone surrogate, escaped
        '{"type": "text", "text": "\\udfff\\ud800"}',
        "x" * (MAX_CONTROL_BYTES + 1),
        "NaN",
        '{"type": "text", "text": 1e999}',
        "\x00",
        "",
    ]
)
"""Inputs known to break naive JSON handling."""

messages: st.SearchStrategy[str | bytes] = st.one_of(
    json_values.map(json.dumps),
    control_like.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=64),
    nasty,
)


@settings(max_examples=500, deadline=None)
@given(messages)
def test_parse_control_never_raises(raw: str | bytes) -> None:
    message = parse_control(raw)
    assert isinstance(message, TextInput | HangUp | InvalidControl)
    if isinstance(message, InvalidControl):
        assert message.message
    if isinstance(raw, bytes):
        assert isinstance(message, InvalidControl)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=1000))
def test_text_messages_round_trip(text: str) -> None:
    raw = json.dumps({"type": "text", "text": text})
    message = parse_control(raw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        assert message == InvalidControl("text must be valid Unicode")
    else:
        assert message == TextInput(text)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("[" * 5000, "not valid JSON"),
        ("1" * 5000, "not valid JSON"),
        ('{"type": "text", "text": "\\ud800"}', "valid Unicode"),
        ("x" * (MAX_CONTROL_BYTES + 1), "KiB"),
        (b'{"type": "hangup"}', "not binary"),
        ('{"type": "dtmf"}', "expected"),
    ],
)
def test_inputs_that_used_to_escape_are_invalid_control(raw: str | bytes, reason: str) -> None:
    message = parse_control(raw)
    assert isinstance(message, InvalidControl) and reason in message.message
    assert parse_control('{"type": "hangup", "x": [1]}') == HangUp()


# ------------------------------------------------------------ over a live socket


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(fake_models(), max_calls=2, rate_limit_create="100000/minute") as url:
        yield url


def _sendable(raw: str | bytes) -> bool:
    """Whether a WebSocket client can send it (text frames are UTF-8; no hang-up mid-test)."""
    if isinstance(raw, bytes):
        return len(raw) % 2 == 0  # binary is audio: whole 16-bit samples
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not isinstance(parse_control(raw), HangUp)


async def read_events(ws: websockets.ClientConnection, into: list[dict[str, Any]]) -> None:
    """Collect the JSON events of a socket (audio dropped) until it closes (raises)."""
    while True:
        message = await ws.recv()
        if isinstance(message, str):
            into.append(json.loads(message))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(messages.filter(_sendable), min_size=1, max_size=4))
async def test_a_websocket_call_survives_any_control_message(
    base_url: str, batch: list[str | bytes]
) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        room = (await client.post("/v1/rooms")).json()
    url = base_url.replace("http", "ws") + f"/v1/ws/voice?room={room['id']}&token={room['token']}"
    received: list[dict[str, Any]] = []
    async with websockets.connect(url, max_size=2**20) as ws:
        assert json.loads(await ws.recv())["type"] == "session"
        for raw in batch:
            await ws.send(raw)
        await ws.send(json.dumps({"type": "hangup"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await read_events(ws, received)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "hung up")
    expected: list[str] = []
    for raw in batch:
        parsed = parse_control(raw) if isinstance(raw, str) else None  # binary is audio
        if isinstance(parsed, InvalidControl):
            expected.append(parsed.message)
    errors = [e for e in received if e["type"] == "error" and e["stage"] == "input"]
    assert [e["message"] for e in errors] == expected
