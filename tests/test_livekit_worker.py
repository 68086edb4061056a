"""The LiveKit worker through livekit-agents' own machinery, without a LiveKit server.

``AgentServer.run(unregistered=True)`` starts the worker without registering
(nothing is contacted); ``simulate_job(fake_job=True)`` launches a job as
LiveKit's console mode does: a real job runner (thread executor) is
prewarmed with our ``prewarm`` and runs our ``entrypoint`` against
livekit-agents' mock room, whose caller (``mock_user``) has already joined.
The job opens a real session (real local models, real store), speaks the
configured greeting through a real ``rtc.AudioSource``, follows LiveKit's
conventions on the mock participant, and records the call in the store.
Token claims are checked with livekit-api's own ``TokenVerifier``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import api
from livekit.agents import JobExecutorType, JobProcess
from livekit.agents.ipc.mock_room import create_mock_room

from agent.config import AgentConfig
from agent.pricing import PriceTable
from agent.runtime import AgentModels
from media.livekit_conventions import ATTRIBUTE_AGENT_STATE, ATTRIBUTE_FINAL, TOPIC_TRANSCRIPTION
from signaling.livekit_rooms import LiveKitRooms
from signaling.livekit_settings import LiveKitNotConfiguredError, LiveKitSettings
from signaling.livekit_worker import RUNTIME_KEY, WorkerRuntime, build_server, prewarm
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from store.store import Store
from tests.server import running_server

URL = "ws://127.0.0.1:7880"  # never contacted: the worker runs unregistered
KEY = "devkey"
SECRET = "a-test-secret-that-is-long-enough-0123456789"
GREETING = "Hello, this is the parley agent."


def livekit_settings(**extra: Any) -> LiveKitSettings:
    values: dict[str, Any] = {
        "LIVEKIT_URL": URL,
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
        "PARLEY_LIVEKIT_HTTP_PORT": 0,
        "PARLEY_LIVEKIT_IDLE_PROCESSES": 0,
        **extra,
    }
    return LiveKitSettings.model_validate(values)


async def until(check: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_caller_token_joins_the_room_and_dispatches_the_agent() -> None:
    rooms = LiveKitRooms(livekit_settings(PARLEY_LIVEKIT_AGENT_NAME="support-bot"))
    issued = rooms.caller_token("room_abc")
    claims = api.TokenVerifier(KEY, SECRET).verify(issued.token)
    assert claims.identity == issued.identity and issued.identity.startswith("caller-")
    assert claims.video is not None
    assert claims.video.room_join and claims.video.room == "room_abc"
    assert claims.video.can_publish and claims.video.can_subscribe
    assert claims.room_config is not None
    assert [a.agent_name for a in claims.room_config.agents] == ["support-bot"]
    assert issued.describe()["url"] == "ws://127.0.0.1:7880"
    with pytest.raises(Exception, match=r"(?i)signature"):
        api.TokenVerifier(KEY, "another-secret-another-secret-0123456789").verify(issued.token)


def test_unconfigured_livekit_is_refused_with_one_clear_line() -> None:
    settings = LiveKitSettings.model_validate({"LIVEKIT_URL": "ws://127.0.0.1:7880"})
    assert not settings.configured
    with pytest.raises(LiveKitNotConfiguredError, match="LIVEKIT_API_KEY"):
        LiveKitRooms(settings)


@pytest.mark.slow
async def test_prewarm_and_entrypoint_carry_a_call_in_a_simulated_job(
    models: AgentModels,
    agent_config: AgentConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # AgentServer.run exports its credentials to the environment: undo that afterwards
    for name, value in (
        ("LIVEKIT_URL", URL),
        ("LIVEKIT_API_KEY", KEY),
        ("LIVEKIT_API_SECRET", SECRET),
    ):
        monkeypatch.setenv(name, value)
    store_settings = StoreSettings(PARLEY_DATA_DIR=tmp_path)
    store = await Store.open(store_settings)  # the schema, as main() prepares it
    await store.close()
    runtime = WorkerRuntime(
        server=ServerSettings(no_audio_timeout_s=120.0),
        store=store_settings,
        config=agent_config.model_copy(update={"greeting": GREETING}),
        models=models,
        prices=PriceTable.load(None),
        loaded_at=time.time(),
    )
    WorkerRuntime.install(runtime)  # the test's models, loaded once for the whole run
    room = create_mock_room()
    room.reset_mock()
    room.isconnected.return_value = True
    server = build_server(livekit_settings())
    runner = asyncio.create_task(server.run(devmode=True, unregistered=True))
    try:
        await until(lambda: not server._closed)
        await server.simulate_job("room_sim", fake_job=True)
        participant = room.local_participant

        def states() -> list[str]:
            return [
                c.args[0][ATTRIBUTE_AGENT_STATE]
                for c in participant.set_attributes.call_args_list
                if ATTRIBUTE_AGENT_STATE in c.args[0]
            ]

        def transcripts() -> list[tuple[str, dict[str, str]]]:
            return [
                (c.args[0], c.kwargs["attributes"])
                for c in participant.send_text.call_args_list
                if c.kwargs.get("topic") == TOPIC_TRANSCRIPTION
            ]

        await until(lambda: any(a[ATTRIBUTE_FINAL] == "true" for _, a in transcripts()), 60)
        assert states()[:2] == ["listening", "thinking"] and "speaking" in states()
        assert participant.publish_track.await_count == 1  # the agent's audio track
        final = [text for text, a in transcripts() if a[ATTRIBUTE_FINAL] == "true"]
        assert final == [GREETING]
        events = [
            json.loads(c.args[0])["type"]
            for c in participant.send_text.call_args_list
            if c.kwargs.get("topic") == "parley.events"
        ]
        assert "reply" in events and "metrics" in events
    finally:
        await server.aclose()
        await runner
        room.reset_mock()
    store = await Store.open(store_settings)
    try:
        page = await store.sessions.page(transport="livekit")
        assert len(page.sessions) == 1
        row = page.sessions[0]
        assert row.attributes is not None
        attributes: dict[str, Any] = dict(row.attributes)
        assert attributes.pop("job_id").startswith("fake-job-")
        assert attributes == {
            "livekit_room": "room_sim",
            "participant": "mock_user",
            "participant_kind": "standard",
        }
        assert row.end_reason is not None
        turns = [(t.role, t.text) for t in await store.sessions.turns(row.id)]
        assert turns == [("assistant", GREETING)]
    finally:
        await store.close()


def test_prewarm_shares_one_runtime_per_process(models: AgentModels) -> None:
    runtime = WorkerRuntime.load(models)
    WorkerRuntime.install(runtime)

    first, second = (
        JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
        for _ in range(2)
    )
    prewarm(first)
    prewarm(second)
    assert first.userdata[RUNTIME_KEY] is second.userdata[RUNTIME_KEY] is runtime


@pytest.mark.slow
@pytest.mark.parametrize("configured", [True, False])
def test_post_rooms_creates_a_livekit_room_with_a_dispatching_token(
    models: AgentModels, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    if configured:
        monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:7880")
        monkeypatch.setenv("LIVEKIT_API_KEY", KEY)
        monkeypatch.setenv("LIVEKIT_API_SECRET", SECRET)
    else:
        for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            monkeypatch.delenv(name, raising=False)
    with running_server(models) as url:
        local = httpx.post(f"{url}/v1/rooms", json={"name": "desk"}, timeout=30)
        remote = httpx.post(f"{url}/v1/rooms", json={"media": "livekit"}, timeout=30)
        unknown = httpx.post(f"{url}/v1/rooms", json={"media": "carrier-pigeon"}, timeout=30)
    assert local.status_code == 201 and local.json()["media"] == "local"
    assert "livekit" not in local.json()
    assert unknown.status_code in (400, 422)
    if not configured:
        assert remote.status_code == 400
        assert remote.json()["error"] == "livekit_not_configured"
        return
    assert remote.status_code == 201
    room = remote.json()
    assert room["media"] == "livekit" and room["token"]  # our join token, as for every room
    issued = room["livekit"]
    assert issued["url"] == "ws://127.0.0.1:7880" and issued["room"] == room["id"]
    claims = api.TokenVerifier(KEY, SECRET).verify(issued["token"])
    assert claims.video is not None and claims.video.room == room["id"]
    assert claims.room_config is not None
    assert [a.agent_name for a in claims.room_config.agents] == [issued["agent_name"]]
