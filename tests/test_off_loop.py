"""Defect 8: CPU work runs off the event loop (upload decoding, TTS resampling).

Each test records the thread that did the work; the event loop's own thread
must never be among them. Fake providers keep it fast; the app runs in
process over ASGI, so the patched functions are the ones the routes call.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from agent.config import AgentConfig
from agent.session import VoiceSession
from media.decode import decode_audio
from media.frames import AudioFrame
from media.resample import StreamResampler
from media.wav import wav_bytes
from signaling import voice_api
from signaling.app import create_app
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from tests.fakes import FakeSTT, FakeTTS, ScriptedLLM, fake_models, feed, silence, tone


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    models = fake_models(stt=FakeSTT(["book a table for two"]), tts=FakeTTS(24000))
    application = create_app(
        ServerSettings(jwt_secret="x" * 32),
        models=models,
        store_settings=StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with application.router.lifespan_context(application):
        yield application


async def test_upload_decoding_and_tts_joining_run_off_the_loop(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real_decode = decode_audio

    def decode(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(voice_api, "decode_audio", decode)
    wav = wav_bytes(AudioFrame(tone(0.5), 16000))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://parley.test") as client:
        r = await client.post("/v1/voice/stt", content=wav, headers={"Content-Type": "audio/wav"})
        assert r.status_code == 200, r.text
        assert r.json()["text"] == "book a table for two"
        r = await client.post("/v1/voice/tts", json={"text": "Hello from the agent."})
        assert r.status_code == 200 and r.content[:4] == b"RIFF"
    assert threads and threading.current_thread().name not in threads


async def test_reply_resamples_tts_chunks_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real_process = StreamResampler.process

    def process(self: StreamResampler, pcm: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_process(self, pcm)

    monkeypatch.setattr(StreamResampler, "process", process)
    config = AgentConfig.load().model_copy(update={"greeting": "Hello there, welcome."})
    models = fake_models(llm=ScriptedLLM(["Hi."]), tts=FakeTTS(24000))
    async with VoiceSession(config, models) as session:
        audio = await feed(session, silence(2.0))
    assert np.abs(audio).max() > 1000  # the greeting was played
    assert threads and threading.current_thread().name not in threads
