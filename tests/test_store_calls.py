"""Sessions through the server on both store backends: history, resume, outages mid-call."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from agent.runtime import AgentModels
from store.settings import StoreSettings
from tests.backends import BACKENDS, SERVER_BACKEND, drop_schema, store_settings
from tests.proxy import ThreadedProxy
from tests.server import running_server
from tests.speech import compose
from tests.test_session import GREETING
from tests.textnorm import phrase_error

pytestmark = pytest.mark.slow


@pytest.fixture(params=BACKENDS)
async def settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreSettings]:
    s = store_settings(request.param, tmp_path / "data")
    yield s
    await drop_schema(s)


class WsCall:
    """A WebSocket caller that speaks PCM in real time and collects events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WsCall:
        self.ws = await websockets.connect(self.url, max_size=2**20)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        async for message in self.ws:
            if isinstance(message, str):
                self.events.append(json.loads(message))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def speak(self, pcm: np.ndarray) -> None:
        """Send audio paced in real time (20 ms frames)."""
        start = time.monotonic()
        for n, i in enumerate(range(0, pcm.size, 320)):
            await self.ws.send(pcm[i : i + 320].astype("<i2").tobytes())
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))

    async def until(self, predicate: Any, within: float = 60) -> None:
        """Keep sending silence until ``predicate()``."""
        deadline = time.monotonic() + within
        while not predicate():
            assert time.monotonic() < deadline, [e["type"] for e in self.events]
            await self.speak(np.zeros(1600, np.int16))


async def new_room(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.post("/v1/rooms")
    assert r.status_code == 201
    room: dict[str, Any] = r.json()
    return room


def ws_url(
    base: str, room: dict[str, Any], session: str | None = None, token: str | None = None
) -> str:
    url = base.replace("http", "ws") + f"/v1/ws/voice?room={room['id']}&token={room['token']}"
    if session:
        url += f"&session={session}&session_token={token}"
    return url


async def test_call_turns_with_interruption_in_history(
    models: AgentModels, settings: StoreSettings, tmp_path: Path
) -> None:
    config = tmp_path / "greeter.yaml"
    config.write_text(f"greeting: {json.dumps(GREETING)}\n")
    with running_server(models, store=settings, agent_config=config) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            room = await new_room(client)
            async with WsCall(ws_url(base, room)) as call:
                await call.until(lambda: bool(call.of("session")), within=10)
                hello = call.of("session")[0]
                await call.speak(compose(2.0, "Stop please, what time is it?", 0.5))
                await call.until(lambda: len(call.of("reply")) >= 2)
            sid, token = hello["session_id"], hello["session_token"]
            auth = {"Authorization": f"Bearer {token}"}
            for _ in range(50):  # the writer is asynchronous: wait for the rows
                turns = (await client.get(f"/v1/sessions/{sid}/history", headers=auth)).json()
                if len(turns.get("turns", [])) >= 3:
                    break
                await asyncio.sleep(0.1)
            roles = [(t["role"], t["interrupted"]) for t in turns["turns"]]
            assert roles == [("assistant", True), ("user", False), ("assistant", False)]
            greeting = turns["turns"][0]
            assert greeting["text"] == GREETING
            assert greeting["heard_text"] and GREETING.startswith(greeting["heard_text"])
            assert len(greeting["heard_text"]) < len(GREETING)
            assert phrase_error(turns["turns"][1]["text"], "what time is it") <= 0.25
            assert turns["turns"][2]["latencies"]["voice_to_voice_ms"] > 0
            info = (await client.get(f"/v1/sessions/{sid}", headers=auth)).json()
            assert info["turn_count"] == 1 and info["transport"] == "websocket"
            # another caller's token never reads this session
            other = (await client.post("/v1/sessions")).json()
            theirs = {"Authorization": f"Bearer {other['token']}"}
            assert (await client.get(f"/v1/sessions/{sid}", headers=theirs)).status_code == 403
            assert (await client.get(f"/v1/sessions/{sid}/history")).status_code == 401
            assert (await client.delete(f"/v1/sessions/{sid}", headers=auth)).status_code == 200
            assert (await client.get(f"/v1/sessions/{sid}", headers=auth)).status_code == 404


async def test_session_resumes_in_second_app_instance(
    models: AgentModels, settings: StoreSettings
) -> None:
    with (
        running_server(models, store=settings) as first,
        running_server(models, store=settings) as second,
    ):
        async with (
            httpx.AsyncClient(base_url=first, timeout=60) as one,
            httpx.AsyncClient(base_url=second, timeout=60) as two,
        ):
            created = (await one.post("/v1/sessions")).json()
            sid, auth = created["id"], {"Authorization": f"Bearer {created['token']}"}
            r = await one.post(
                "/v1/chat/text", json={"text": "My name is Ada.", "session_id": sid}, headers=auth
            )
            assert r.status_code == 200
            r = await two.post(
                "/v1/chat/text", json={"text": "What is my name?", "session_id": sid}, headers=auth
            )
            assert r.status_code == 200
            # the second instance continued the same conversation
            for _ in range(50):
                hist = (await two.get(f"/v1/sessions/{sid}/history", headers=auth)).json()
                if len(hist["turns"]) == 4:
                    break
                await asyncio.sleep(0.1)
            texts = [t["text"] for t in hist["turns"]]
            assert texts[0] == "My name is Ada." and texts[2] == "What is my name?"
            # and a voice call in the second instance resumes it too
            room = await new_room(two)
            async with WsCall(ws_url(second, room, sid, created["token"])) as call:
                await call.until(lambda: bool(call.of("session")), within=10)
                assert call.of("session")[0]["session_id"] == sid
                assert "session_token" not in call.of("session")[0]


async def test_redis_and_database_outages_mid_call(models: AgentModels, tmp_path: Path) -> None:
    redis_proxy = ThreadedProxy("127.0.0.1", 6379)
    pg_proxy = ThreadedProxy("127.0.0.1", 5432)
    settings = store_settings(
        SERVER_BACKEND, tmp_path / "d", pg_port=pg_proxy.port, redis_port=redis_proxy.port
    )
    try:
        with running_server(models, store=settings) as base:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                room = await new_room(client)
                async with WsCall(ws_url(base, room)) as call:
                    await call.until(lambda: bool(call.of("session")), within=10)
                    hello = call.of("session")[0]
                    redis_proxy.cut()  # Redis goes away mid-call
                    await call.speak(compose(0.3, "What is the capital of France?", 0.3))
                    await call.until(lambda: len(call.of("reply")) >= 1)
                    pg_proxy.cut()  # and then the database
                    await call.speak(compose(0.3, "How many legs does a spider have?", 0.3))
                    await call.until(lambda: len(call.of("reply")) >= 2)
                    assert not [e for e in call.of("error") if e.get("stage") != "input"]
                    auth = {"Authorization": f"Bearer {hello['session_token']}"}
                    r = await client.get(f"/v1/sessions/{hello['session_id']}", headers=auth)
                    assert r.status_code == 503 and r.json()["error"] == "store_unavailable"
                pg_proxy.restore()
                redis_proxy.restore()
                sid, auth = (
                    hello["session_id"],
                    {"Authorization": f"Bearer {hello['session_token']}"},
                )
                for _ in range(150):
                    r = await client.get(f"/v1/sessions/{sid}/history", headers=auth)
                    if r.status_code == 200 and len(r.json()["turns"]) >= 4:
                        break
                    await asyncio.sleep(0.2)
                turns = r.json()["turns"]
                assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
                assert phrase_error(turns[2]["text"], "how many legs does a spider have") <= 0.25
    finally:
        pg_proxy.restore()
        redis_proxy.restore()
        await drop_schema(settings)
        redis_proxy.close()
        pg_proxy.close()
