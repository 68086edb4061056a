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
from tests.webrtc_client import Caller

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
    caller = Caller(compose(1.0, "What is the capital of France?", 8.0))
    r = await room(client)
    try:
        answer = await caller.connect(client, r)
        assert answer["call_id"].startswith("call_")
        listed = (await client.get(f"/v1/rooms/{r['id']}")).json()["calls"]
        assert [c["transport"] for c in listed] == ["webrtc"]

        def answered() -> bool:
            # metrics follow the reply event on the channel: wait for both
            return bool(caller.of_type("metrics")) and len(caller.loud_times()) > 25

        await caller.wait_for(answered, within=60)
        finals = [e for e in caller.of_type("transcript") if e["final"]]
        assert "capital of france" in finals[0]["text"].lower()
        assert caller.of_type("metrics")[0]["voice_to_voice_ms"] > 0
        # text typed on the data channel is answered too
        caller.channel.send(json.dumps({"type": "text", "text": "Thank you!"}))
        await caller.wait_for(lambda: len(caller.of_type("reply")) >= 2, within=60)
        caller.channel.send("{broken")
        await caller.wait_for(lambda: bool(caller.of_type("error")), within=10)
    finally:
        await caller.close()

    # the server notices the peer is gone and frees the call
    async def freed() -> bool:
        health: dict[str, int] = (await client.get("/health")).json()
        return health["active_calls"] == 0

    for _ in range(100):
        if await freed():
            break
        await asyncio.sleep(0.1)
    assert await freed()


async def test_webrtc_barge_in_stops_agent_audio(greeting_url: str) -> None:
    onset_s = 3.0
    caller = Caller(compose(onset_s, "Stop please, I have a question about parking.", 6.0))
    async with httpx.AsyncClient(base_url=greeting_url, timeout=60) as client:
        r = await room(client)
        try:
            await caller.connect(client, r)
            await caller.wait_for(lambda: bool(caller.of_type("interruption")), within=30)
            await caller.wait_for(
                lambda: any(e["interrupted"] for e in caller.of_type("reply")), within=30
            )
            await asyncio.sleep(1.5)
        finally:
            await caller.close()
    assert caller.track.started_at is not None
    speech_at = caller.track.started_at + onset_s
    loud = caller.loud_times()
    assert any(t < speech_at for t in loud), "the greeting was not heard before the barge-in"
    # The greeting stops within a fraction of a second of the caller's onset
    # and stays silent for over a second (natural pauses are < 0.4 s).
    after = [t for t in loud if t > speech_at]
    last_greeting = max(
        [t for t in loud if t <= speech_at] + [t for t in after if t < speech_at + 0.8]
    )
    assert last_greeting - speech_at < 0.8
    next_loud = [t for t in loud if t > last_greeting + 0.1]
    assert not next_loud or next_loud[0] - last_greeting > 1.0
    reply = next(e for e in caller.of_type("reply") if e["interrupted"])
    assert reply["heard_text"] and GREETING.startswith(reply["heard_text"])
    assert len(reply["heard_text"]) < len(GREETING) / 2


async def test_websocket_round_trip_and_errors(base_url: str, client: httpx.AsyncClient) -> None:
    r = await room(client)
    ws_url = base_url.replace("http", "ws") + f"/v1/ws/voice?room={r['id']}&token={r['token']}"
    pcm = compose(0.5, "How many legs does a spider have?", 2.0)
    events: list[dict[str, Any]] = []
    agent_audio: list[np.ndarray] = []
    async with websockets.connect(ws_url, max_size=2**20) as ws:

        async def reader() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    agent_audio.append(np.frombuffer(message, "<i2"))
                else:
                    events.append(json.loads(message))

        task = asyncio.create_task(reader())
        await ws.send(b"\x01\x00\x02")  # odd lengths are carried over, not fatal
        await ws.send(b"\x00")
        await ws.send("not json")
        for i in range(0, pcm.size, 1600):  # 100 ms chunks at 2x real time
            await ws.send(pcm[i : i + 1600].astype("<i2").tobytes())
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            any(e["type"] == "reply" for e in events) and len(agent_audio) > 25
        ):
            await ws.send(np.zeros(320, "<i2").tobytes())
            await asyncio.sleep(0.02)
        await ws.send(json.dumps({"type": "hangup"}))
        await asyncio.wait_for(task, 10)
    assert any(e["type"] == "error" and "JSON" in e["message"] for e in events)
    finals = [e for e in events if e["type"] == "transcript" and e["final"]]
    assert finals and "spider" in finals[0]["text"].lower()
    assert rms_dbfs(np.concatenate(agent_audio)) > -40


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
        caller = Caller(np.zeros(16000, np.int16))
        try:
            await caller.pc.setLocalDescription(await caller.pc.createOffer())
            resp = await client.post(
                f"/v1/rooms/{r['id']}/offer",
                json={"sdp": caller.pc.localDescription.sdp, "type": "offer"},
                headers={"Authorization": f"Bearer {r['token']}"},
            )
            assert resp.status_code == 503 and resp.json()["error"] == "too_many_calls"
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
                started = time.monotonic()
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await send_silence_forever(ws)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.reason == "idle timeout"
                assert 0.9 < time.monotonic() - started < 5.0
            assert (await client.get("/health")).json()["active_calls"] == 0
