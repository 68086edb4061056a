"""Calls over the wire: an aiortc peer and a WebSocket client against a loopback server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from agent.runtime import AgentModels
from media.frames import rms_dbfs
from tests.server import running_server
from tests.speech import compose
from tests.test_session import GREETING
from tests.textnorm import phrase_error
from tests.webrtc_client import connect, events, speaking, wait_for, wait_freed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url(models: AgentModels) -> Iterator[str]:
    with running_server(models, max_calls=2, idle_timeout_s=30) as url:
        yield url


@pytest.fixture(scope="module")
def greeting_url(models: AgentModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose agent greets every call with a long speech (to talk over)."""
    config = Path(tmp_path_factory.mktemp("agent")) / "greeter.yaml"
    config.write_text(f"greeting: {json.dumps(GREETING)}\n")
    with running_server(models, agent_config=config, max_calls=2) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as c:
        yield c


async def room(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.post("/v1/rooms")
    assert r.status_code == 201
    data: dict[str, Any] = r.json()
    return data


async def test_webrtc_call_question_and_answer(client: httpx.AsyncClient) -> None:
    caller = speaking(compose(1.0, "What is the capital of France?", 8.0))
    r = await room(client)
    try:
        answer = await connect(caller, client, r)
        assert answer["call_id"].startswith("call_")
        auth = {"Authorization": f"Bearer {r['token']}"}
        listed = (await client.get(f"/v1/rooms/{r['id']}", headers=auth)).json()["calls"]
        assert [c["transport"] for c in listed] == ["webrtc"]

        def answered() -> bool:
            # metrics follow the reply event on the channel: wait for both
            return bool(caller.of_type("metrics")) and len(caller.loud_times()) > 25

        await wait_for(caller, answered, 60)
        finals = [e for e in events(caller, "transcript") if e["final"]]
        assert phrase_error(finals[0]["text"], "what is the capital of France") <= 0.25
        assert events(caller, "metrics")[0]["voice_to_voice_ms"] > 0
        # text typed on the data channel is answered too
        caller.send({"type": "text", "text": "Thank you!"})
        await wait_for(caller, lambda: len(caller.of_type("reply")) >= 2, 60)
        # what the bridge cannot read is answered in the one error format
        caller.send("{broken")
        await wait_for(caller, lambda: bool(caller.of_type("error")), 10)
        error = events(caller, "error")[0]
        assert (error["stage"], error["retryable"]) == ("input", False)
        assert "JSON" in error["message"]
    finally:
        await caller.close()
    # the server notices the peer is gone and frees the call
    assert await wait_freed(client)


async def test_webrtc_hangup_on_the_data_channel(client: httpx.AsyncClient) -> None:
    caller = speaking()
    r = await room(client)
    try:
        await connect(caller, client, r)
        await wait_for(caller, lambda: caller.connected, 30)
        caller.send({"type": "hangup"})
        # the server ends the call and closes its peer connection
        await wait_for(caller, lambda: caller.pc.connectionState == "closed", 30)
        auth = {"Authorization": f"Bearer {r['token']}"}
        assert (await client.get(f"/v1/rooms/{r['id']}", headers=auth)).json()["calls"] == []
    finally:
        await caller.close()


async def test_webrtc_barge_in_stops_agent_audio(greeting_url: str) -> None:
    onset_s = 3.0
    caller = speaking(compose(onset_s, "Stop please, I have a question about parking.", 6.0))
    async with httpx.AsyncClient(base_url=greeting_url, timeout=60) as client:
        r = await room(client)
        try:
            await connect(caller, client, r)

            def interrupted() -> bool:
                return any(e["interrupted"] for e in events(caller, "reply"))

            await wait_for(caller, lambda: bool(caller.of_type("interruption")), 30)
            await wait_for(caller, interrupted, 30)
        finally:
            await caller.close()
    # Behaviour only; how fast the agent stops is a figure of the wire benchmark
    # (python -m bench.wire: barge-in stop times), not an assert.
    assert caller.track.started_at is not None
    speech_at = caller.track.started_at + onset_s
    assert any(t < speech_at for t in caller.loud_times()), "the greeting was not heard"
    phases = [e["phase"] for e in events(caller, "interruption")]
    assert "confirmed" in phases
    reply = next(e for e in events(caller, "reply") if e["interrupted"])
    assert reply["text"] == GREETING
    # only what was played before the barge-in counts as heard: a prefix
    assert reply["heard_text"] and GREETING.startswith(reply["heard_text"])
    assert len(reply["heard_text"]) < len(GREETING) / 2


async def test_websocket_round_trip_and_errors(base_url: str, client: httpx.AsyncClient) -> None:
    r = await room(client)
    ws_url = base_url.replace("http", "ws") + f"/v1/ws/voice?room={r['id']}&token={r['token']}"
    pcm = compose(0.5, "How many legs does a spider have?", 2.0)
    received: list[dict[str, Any]] = []
    agent_audio: list[np.ndarray] = []
    async with websockets.connect(ws_url, max_size=2**20) as ws:

        async def reader() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    agent_audio.append(np.frombuffer(message, "<i2"))
                else:
                    received.append(json.loads(message))

        task = asyncio.create_task(reader())
        await ws.send(b"\x01\x00\x02")  # odd lengths are carried over, not fatal
        await ws.send(b"\x00")
        await ws.send("not json")
        for i in range(0, pcm.size, 1600):  # 100 ms chunks at 2x real time
            await ws.send(pcm[i : i + 1600].astype("<i2").tobytes())
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            any(e["type"] == "reply" for e in received) and len(agent_audio) > 25
        ):
            await ws.send(np.zeros(320, "<i2").tobytes())
            await asyncio.sleep(0.02)
        await ws.send(json.dumps({"type": "hangup"}))
        await asyncio.wait_for(task, 10)  # hang guard: the server closes the socket
    assert (ws.close_code, ws.close_reason) == (1000, "hung up")
    assert received[0]["type"] == "session" and received[0]["session_token"]
    errors = [e for e in received if e["type"] == "error"]
    assert [(e["stage"], e["retryable"]) for e in errors] == [("input", False)]
    assert "JSON" in errors[0]["message"]
    finals = [e for e in received if e["type"] == "transcript" and e["final"]]
    assert finals and phrase_error(finals[0]["text"], "how many legs does a spider have") <= 0.25
    assert rms_dbfs(np.concatenate(agent_audio)) > -40


async def read_until_closed(ws: Any) -> None:
    """Read (and drop) messages until the socket closes."""
    while True:
        await ws.recv()


async def test_websocket_message_too_big_closes_1009(
    base_url: str, client: httpx.AsyncClient
) -> None:
    r = await room(client)
    url = base_url.replace("http", "ws") + f"/v1/ws/voice?room={r['id']}&token={r['token']}"
    async with websockets.connect(url, max_size=2**20) as ws:
        assert json.loads(await ws.recv())["type"] == "session"
        await ws.send(b"\x00" * (256 * 1024 + 2))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await read_until_closed(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert await wait_freed(client)


async def test_websocket_refusals_and_capacity(base_url: str, client: httpx.AsyncClient) -> None:
    r = await room(client)
    other = await room(client)
    ws_base = base_url.replace("http", "ws") + "/v1/ws/voice"

    async def close_code(url: str) -> int:
        async with websockets.connect(url) as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "error"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code

    assert await close_code(f"{ws_base}?room={r['id']}") == 4401
    assert await close_code(f"{ws_base}?room={r['id']}&token=bad") == 4401
    assert await close_code(f"{ws_base}?room={r['id']}&token={other['token']}") == 4403
    assert await close_code(f"{ws_base}?room=room_x&token={r['token']}") == 4404
    ok = f"{ws_base}?room={r['id']}&token={r['token']}"
    async with websockets.connect(ok), websockets.connect(ok):
        await asyncio.sleep(0.3)
        assert (await client.get("/health")).json()["active_calls"] == 2
        assert await close_code(ok) == 4503
        caller = speaking()
        try:
            resp = await client.post(
                f"/v1/rooms/{r['id']}/offer",
                json={"sdp": await caller.offer(), "type": "offer"},
                headers={"Authorization": f"Bearer {r['token']}"},
            )
            assert resp.status_code == 503 and resp.json()["error"] == "too_many_calls"
            assert resp.headers["Retry-After"] == "5"
        finally:
            await caller.close()
        # deleting the room ends its calls
        auth = {"Authorization": f"Bearer {r['token']}"}
        deleted = (await client.delete(f"/v1/rooms/{r['id']}", headers=auth)).json()
        assert deleted["calls_ended"] == 2
    assert (await client.get("/health")).json()["active_calls"] == 0


async def send_silence_forever(ws: Any) -> None:
    """Send 20 ms of silence at a time (draining what arrives) until the socket closes."""
    while True:
        await ws.send(np.zeros(320, "<i2").tobytes())
        await asyncio.sleep(0.02)
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.wait_for(ws.recv(), 0.001)


async def test_silent_caller_is_hung_up_after_idle_timeout(models: AgentModels) -> None:
    with running_server(models, idle_timeout_s=1.0) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await room(client)
            url = base.replace("http", "ws") + f"/v1/ws/voice?room={r['id']}&token={r['token']}"
            async with websockets.connect(url) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await send_silence_forever(ws)
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle timeout")
            assert await wait_freed(client)
