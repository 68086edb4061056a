"""Token keys survive a restart: generated once into the data directory, or set by env."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import pytest

from agent.llm import LLM
from agent.runtime import AgentModels
from agent.stt import STT
from agent.tts import SpeechChunk
from agent.vad import VAD
from signaling.app import create_app
from signaling.settings import ServerSettings
from signaling.tokens import (
    SECRET_FILE,
    SecretFileError,
    TokenError,
    TokenService,
    load_or_create_secret,
)
from store.settings import StoreSettings

ENV_SECRET = "env-secret-0123456789abcdef-0123456789"


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_JWT_SECRET", raising=False)


def server_settings() -> ServerSettings:
    """Settings from the environment only (no ``.env`` file)."""
    return ServerSettings(_env_file=None)


def test_two_instances_over_one_data_dir_accept_each_others_tokens(tmp_path: Path) -> None:
    settings = server_settings()
    assert settings.jwt_secret is None  # no random per-process key any more
    first = TokenService.from_settings(settings.jwt_secret, tmp_path, 3600)
    second = TokenService.from_settings(server_settings().jwt_secret, tmp_path, 3600)
    token, _ = first.mint_session("ses_1")
    second.verify_session(token, "ses_1")
    room_token, _ = second.mint("room_1")
    assert first.verify(room_token, "room_1").room_id == "room_1"
    other = TokenService.from_settings(None, tmp_path / "elsewhere", 3600)
    with pytest.raises(TokenError) as refused:
        other.verify_session(token, "ses_1")
    assert refused.value.status == 401


def test_the_key_file_is_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    secret = load_or_create_secret(data_dir)
    path = data_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert len(secret) >= 32 and path.read_text().strip() == secret
    assert [p.name for p in data_dir.iterdir()] == [SECRET_FILE]  # no temporary file left
    assert load_or_create_secret(data_dir) == secret


def test_the_env_secret_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = TokenService.from_settings(None, tmp_path, 3600)
    monkeypatch.setenv("PARLEY_JWT_SECRET", ENV_SECRET)
    settings = server_settings()
    assert settings.jwt_secret is not None
    env_keyed = TokenService.from_settings(settings.jwt_secret, tmp_path / "unused", 3600)
    assert not (tmp_path / "unused").exists()  # no key file when the env sets one
    token, _ = env_keyed.mint_session("ses_e")
    TokenService(ENV_SECRET, 3600).verify_session(token, "ses_e")
    with pytest.raises(TokenError):
        stored.verify_session(token, "ses_e")
    with pytest.raises(TokenError):
        env_keyed.verify_session(stored.mint_session("ses_e")[0], "ses_e")


def test_a_key_file_readable_by_others_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = load_or_create_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="signaling.tokens"):
        assert load_or_create_secret(tmp_path) == secret  # same key: issued tokens still work
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "0600" in caplog.text and secret not in caplog.text


def test_unsafe_or_broken_key_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = tmp_path / "short"
    short.mkdir()
    (short / SECRET_FILE).write_text("too short\n")
    with pytest.raises(SecretFileError, match="no usable key"):
        load_or_create_secret(short)

    linked = tmp_path / "linked"
    linked.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("x" * 64)
    (linked / SECRET_FILE).symlink_to(target)
    with pytest.raises(SecretFileError, match="symbolic link"):
        load_or_create_secret(linked)

    foreign = tmp_path / "foreign"
    load_or_create_secret(foreign)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(foreign / SECRET_FILE).st_uid + 1)
    with pytest.raises(SecretFileError, match="another user"):
        load_or_create_secret(foreign)


def test_workers_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    keys: list[str] = []

    def start() -> None:
        barrier.wait()
        keys.append(load_or_create_secret(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_FILE]


class _SilentTTS:
    """Enough of a TTS for an app that serves no call."""

    sample_rate = 16000
    voice = "silent"

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        yield SpeechChunk(np.zeros(160, dtype=np.int16), self.sample_rate, self.voice)

    async def aclose(self) -> None:
        return None


async def test_a_restarted_server_accepts_the_session_tokens_it_issued(tmp_path: Path) -> None:
    models = AgentModels(
        vad=cast(VAD, object()),
        stt=cast(STT, object()),
        llm=cast(LLM, object()),
        tts=_SilentTTS(),
    )
    store = StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)

    async def serve_once(session: tuple[str, str] | None) -> tuple[str, str]:
        app = create_app(server_settings(), models=models, store_settings=store)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://parley"
            ) as client,
        ):
            if session is None:
                created = (await client.post("/v1/sessions")).json()
                return created["id"], created["token"]
            session_id, token = session
            resp = await client.get(
                f"/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {token}"}
            )
            assert resp.status_code == 200, resp.text
            return session_id, token

    try:
        issued = await serve_once(None)
        await serve_once(issued)  # a new process over the same data directory
    finally:
        models.vad_executor.shutdown()
