"""The LiveKit worker through livekit-agents' own machinery, without a LiveKit server.

``AgentServer.run(unregistered=True)`` starts the worker without registering
(nothing is contacted); ``simulate_job(fake_job=True)`` launches a job as
LiveKit's console mode does: a real job runner (thread executor) is
prewarmed with our ``prewarm`` and runs our ``entrypoint`` against
livekit-agents' mock room, whose caller (``mock_user``) has already joined.
The job opens a real session (real local models, real store), speaks the
configured greeting through a real ``rtc.AudioSource``, follows LiveKit's
conventions on the mock participant, and records the call in the store.
Two jobs launched back to back run at once on two event loops, sharing the
models, each with its own small store that is closed (no connection left)
when the job ends; the process executor runs a job in a child process that
loads its own models. Token claims are checked with livekit-api's own
``TokenVerifier``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from livekit import api
from livekit.agents import AgentServer, JobExecutorType, JobProcess
from livekit.agents.ipc.mock_room import create_mock_room
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from agent.config import DEFAULT_CONFIG_PATH, AgentConfig
from agent.errors import ConfigError
from agent.pricing import PriceTable
from agent.runtime import AgentModels
from media.livekit_conventions import ATTRIBUTE_AGENT_STATE, ATTRIBUTE_FINAL, TOPIC_TRANSCRIPTION
from signaling.livekit_rooms import LiveKitRooms
from signaling.livekit_settings import LiveKitNotConfiguredError, LiveKitSettings
from signaling.livekit_worker import (
    JOB_DB_APPLICATION,
    JOB_DB_MAX_OVERFLOW,
    JOB_DB_POOL_SIZE,
    RUNTIME_KEY,
    WorkerRuntime,
    build_server,
    check_executor,
    prewarm,
)
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from store.store import Store
from tests.backends import SERVER_BACKEND
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
        **extra,
    }
    return LiveKitSettings.model_validate(values)


async def until(check: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
def livekit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``AgentServer.run`` exports its credentials to the environment: undo that afterwards."""
    for name, value in (
        ("LIVEKIT_URL", URL),
        ("LIVEKIT_API_KEY", KEY),
        ("LIVEKIT_API_SECRET", SECRET),
    ):
        monkeypatch.setenv(name, value)


@contextlib.asynccontextmanager
async def running_worker(settings: LiveKitSettings) -> AsyncIterator[AgentServer]:
    """The worker, unregistered, once its idle job runner is prewarmed; closed afterwards."""
    server = build_server(settings)
    started = asyncio.Event()
    server.on("worker_started", started.set)
    runner = asyncio.create_task(server.run(devmode=True, unregistered=True))
    waiting = asyncio.create_task(started.wait())
    try:
        await asyncio.wait({runner, waiting}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            await runner  # it failed to start: raise why
        assert started.is_set(), "the worker did not start in time"
        yield server
    finally:
        waiting.cancel()
        if started.is_set():
            await server.aclose()
        runner.cancel()
        await asyncio.gather(runner, waiting, return_exceptions=True)


def install_runtime(
    models: AgentModels, agent_config: AgentConfig, store_settings: StoreSettings
) -> None:
    """The test's models (loaded once for the whole run) as this process's runtime."""
    WorkerRuntime.install(
        WorkerRuntime(
            server=ServerSettings(no_audio_timeout_s=120.0),
            store=store_settings,
            config=agent_config.model_copy(update={"greeting": GREETING}),
            models=models,
            prices=PriceTable.load(None),
            loaded_at=time.time(),
        )
    )


def mock_room() -> Any:
    """livekit-agents' fake-job room (one per process, shared by every fake job)."""
    room = create_mock_room()
    room.reset_mock()
    room.isconnected.return_value = True
    return room


def final_transcripts(participant: Any) -> list[str]:
    return [
        c.args[0]
        for c in participant.send_text.call_args_list
        if c.kwargs.get("topic") == TOPIC_TRANSCRIPTION
        and c.kwargs["attributes"][ATTRIBUTE_FINAL] == "true"
    ]


def sqlite_connection_threads() -> int:
    """Open aiosqlite connections in this process (each one runs a thread)."""
    return sum("_connection_worker_thread" in t.name for t in threading.enumerate())


async def job_connections(settings: StoreSettings) -> list[str]:
    """``application_name`` of every PostgreSQL connection a LiveKit job holds now."""
    engine = create_async_engine(settings.sqlalchemy_url())
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT application_name FROM pg_stat_activity "
                    "WHERE starts_with(application_name, :prefix)"
                ),
                {"prefix": JOB_DB_APPLICATION},
            )
            return [str(r[0]) for r in rows]
    finally:
        await engine.dispose()


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
@pytest.mark.usefixtures("livekit_env")
async def test_prewarm_and_entrypoint_carry_a_call_in_a_simulated_job(
    models: AgentModels, agent_config: AgentConfig, tmp_path: Path
) -> None:
    store_settings = StoreSettings(PARLEY_DATA_DIR=tmp_path)
    store = await Store.open(store_settings)  # the schema, as main() prepares it
    await store.close()
    install_runtime(models, agent_config, store_settings)
    room = mock_room()
    try:
        async with running_worker(livekit_settings()) as server:
            await server.simulate_job("room_sim", fake_job=True)
            participant = room.local_participant

            def states() -> list[str]:
                return [
                    c.args[0][ATTRIBUTE_AGENT_STATE]
                    for c in participant.set_attributes.call_args_list
                    if ATTRIBUTE_AGENT_STATE in c.args[0]
                ]

            await until(lambda: bool(final_transcripts(participant)), 60)
            assert states()[:2] == ["listening", "thinking"] and "speaking" in states()
            assert participant.publish_track.await_count == 1  # the agent's audio track
            assert final_transcripts(participant) == [GREETING]
            events = [
                json.loads(c.args[0])["type"]
                for c in participant.send_text.call_args_list
                if c.kwargs.get("topic") == "parley.events"
            ]
            assert "reply" in events and "metrics" in events
    finally:
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


@pytest.mark.slow
@pytest.mark.usefixtures("livekit_env")
async def test_two_jobs_launched_back_to_back_run_at_once_and_close_their_stores(
    models: AgentModels, agent_config: AgentConfig, backend: str, settings: StoreSettings
) -> None:
    # Two simulate_job calls with no event-loop turn between them: with no idle runner
    # to refill, livekit-agents 1.3.11 left the second job waiting for a runner forever.
    store = await Store.open(settings)  # the schema, as main() prepares it
    await store.close()
    install_runtime(models, agent_config, settings)
    room = mock_room()
    sqlite_threads = sqlite_connection_threads()
    during: list[str] = []
    try:
        async with running_worker(livekit_settings()) as server:
            # simulate_job returns once a job runner has the job. No task and no loop turn
            # between the two calls (asyncio.wait_for would add one): the racy case.
            async with asyncio.timeout(60):
                await server.simulate_job("room_a", fake_job=True)
                await server.simulate_job("room_b", fake_job=True)
            participant = room.local_participant
            await until(lambda: len(final_transcripts(participant)) == 2, 90)
            assert final_transcripts(participant) == [GREETING, GREETING]
            assert participant.publish_track.await_count == 2  # one audio track per job
            assert len(server.active_jobs) == 2
            if backend == SERVER_BACKEND:
                during = await job_connections(settings)
            else:
                per_job = JOB_DB_POOL_SIZE + JOB_DB_MAX_OVERFLOW
                assert sqlite_threads < sqlite_connection_threads() <= sqlite_threads + 2 * per_job
    finally:
        room.reset_mock()
    store = await Store.open(settings)
    try:
        page = await store.sessions.page(transport="livekit")
        rows = sorted(page.sessions, key=lambda r: (r.attributes or {})["livekit_room"])
        assert [(r.attributes or {})["livekit_room"] for r in rows] == ["room_a", "room_b"]
        jobs = [str((r.attributes or {})["job_id"]) for r in rows]
        assert len(set(jobs)) == 2
        for row in rows:
            assert row.end_reason is not None
            turns = [(t.role, t.text) for t in await store.sessions.turns(row.id)]
            assert turns == [("assistant", GREETING)]
    finally:
        await store.close()
    if backend == SERVER_BACKEND:
        names = [JOB_DB_APPLICATION + job for job in jobs]
        ours = [n for n in during if n in names]
        assert set(ours) == set(names)  # each job had its own connections...
        assert all(ours.count(n) <= JOB_DB_POOL_SIZE + JOB_DB_MAX_OVERFLOW for n in names)
        deadline = time.monotonic() + 10
        while left := [n for n in await job_connections(settings) if n in names]:
            assert time.monotonic() < deadline, f"connections left open: {left}"
            await asyncio.sleep(0.2)  # a backend ends just after its client closed
    else:
        deadline = time.monotonic() + 10
        while sqlite_connection_threads() > sqlite_threads:
            assert time.monotonic() < deadline, "aiosqlite connections left open"
            await asyncio.sleep(0.1)


@pytest.fixture
def worker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployed worker's environment: the agent (with a greeting), the store, the timeouts."""
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text("utf-8"))
    config["greeting"] = GREETING
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config), "utf-8")
    monkeypatch.setenv("PARLEY_AGENT_CONFIG", str(tmp_path / "agent.yaml"))
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PARLEY_NO_AUDIO_TIMEOUT_S", "120")
    for name in ("DATABASE_URL", "REDIS_URL", "PARLEY_STT", "PARLEY_LLM", "PARLEY_TTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
@pytest.mark.usefixtures("livekit_env", "worker_env")
async def test_the_process_executor_runs_a_job_in_a_process_with_its_own_models() -> None:
    # The child process loads its runtime from the environment (prewarm in the child),
    # not from this process's installed one.
    store = await Store.open(StoreSettings())
    try:
        async with running_worker(livekit_settings(PARLEY_LIVEKIT_EXECUTOR="process")) as server:
            await server.simulate_job("room_proc", fake_job=True)
            (runner,) = [p for p in server._proc_pool.processes if p.running_job is not None]
            assert runner.pid is not None and runner.pid != os.getpid()  # type: ignore[attr-defined]
            deadline = time.monotonic() + 120
            turns: list[tuple[str, str]] = []
            while not turns:
                assert time.monotonic() < deadline, "the job did not speak its greeting"
                await asyncio.sleep(0.5)
                page = await store.sessions.page(transport="livekit")
                if page.sessions:
                    found = await store.sessions.turns(page.sessions[0].id)
                    turns = [(t.role, t.text) for t in found]
            assert turns == [("assistant", GREETING)]
        page = await store.sessions.page(transport="livekit")
        assert len(page.sessions) == 1
        row = page.sessions[0]
        assert (row.attributes or {})["livekit_room"] == "room_proc"
        assert row.end_reason is not None  # the job's shutdown ended the call
    finally:
        await store.close()


def test_a_worker_keeps_at_least_one_job_runner_warm() -> None:
    with pytest.raises(ValidationError, match="PARLEY_LIVEKIT_IDLE_PROCESSES"):
        livekit_settings(PARLEY_LIVEKIT_IDLE_PROCESSES=0)
    assert livekit_settings().idle_processes == 1


def test_cloud_providers_are_refused_on_the_thread_executor(agent_config: AgentConfig) -> None:
    check_executor("thread", agent_config, {})  # the local models: any executor
    check_executor("process", agent_config, {"PARLEY_LLM": "groq,local"})
    with pytest.raises(ConfigError, match=r"groq.*PARLEY_LIVEKIT_EXECUTOR=process"):
        check_executor("thread", agent_config, {"PARLEY_LLM": "groq,local"})


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
