"""A real LiveKit room, where one is configured (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``,
``LIVEKIT_API_SECRET``; e.g. ``livekit-server --dev`` on 127.0.0.1:7880).

The worker registers; a test participant joins with a caller token (which
dispatches the agent), publishes a spoken question and expects its own
transcript on ``lk.transcription``, the agent's ``lk.agent.state`` to move
through thinking and speaking, and non-silent agent audio. Without the
variables the test is skipped and says so.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from agent.runtime import AgentModels
from media.livekit_conventions import ATTRIBUTE_AGENT_STATE, ATTRIBUTE_FINAL, TOPIC_TRANSCRIPTION
from signaling.livekit_rooms import LiveKitRooms
from signaling.livekit_settings import LiveKitSettings
from signaling.livekit_worker import WorkerRuntime, build_server
from store.settings import StoreSettings
from store.store import Store
from tests.speech import compose
from tests.textnorm import word_error_rate

pytestmark = pytest.mark.slow

QUESTION = "what time do you open tomorrow"
RATE = 48_000


@pytest.fixture
def settings() -> LiveKitSettings:
    configured = LiveKitSettings.model_validate({"PARLEY_LIVEKIT_HTTP_PORT": 0})
    if not configured.configured:
        pytest.skip(
            "SKIPPED: no LiveKit server to test against "
            "(set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET)"
        )
    return configured.model_copy(
        update={"agent_name": "parley-test-" + secrets.token_hex(4), "idle_processes": 1}
    )


async def test_a_caller_talks_to_the_agent_in_a_real_room(
    settings: LiveKitSettings, models: AgentModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path))
    store = await Store.open(StoreSettings())
    await store.close()
    WorkerRuntime.install(WorkerRuntime.load(models))
    server = build_server(settings)
    worker = asyncio.create_task(server.run(devmode=True))
    room = rtc.Room()
    transcripts: list[tuple[str, dict[str, str]]] = []
    states: list[str] = []
    agent_rms: list[float] = []
    readers: set[asyncio.Task[None]] = set()

    def on_transcript(reader: rtc.TextStreamReader, identity: str) -> None:
        async def read() -> None:
            transcripts.append((await reader.read_all(), dict(reader.info.attributes or {})))

        task = asyncio.create_task(read())
        readers.add(task)
        task.add_done_callback(readers.discard)

    def on_attributes(changed: dict[str, str], participant: rtc.Participant) -> None:
        if ATTRIBUTE_AGENT_STATE in changed:
            states.append(changed[ATTRIBUTE_AGENT_STATE])

    def on_track(track: rtc.Track, *_: object) -> None:
        async def listen() -> None:
            async for event in rtc.AudioStream.from_track(track=track, sample_rate=16_000):
                pcm = np.frombuffer(event.frame.data, np.int16).astype(np.float64)
                agent_rms.append(float(np.sqrt(np.mean(pcm**2))))

        task = asyncio.create_task(listen())
        readers.add(task)

    room.register_text_stream_handler(TOPIC_TRANSCRIPTION, on_transcript)
    room.on("participant_attributes_changed", on_attributes)
    room.on("track_subscribed", on_track)
    try:
        issued = LiveKitRooms(settings).caller_token("parley-test-" + secrets.token_hex(6))
        await room.connect(issued.url, issued.token)
        source = rtc.AudioSource(RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, options)
        await asyncio.sleep(3.0)  # the agent is dispatched and joins
        signal = compose(0.5, QUESTION, 2.5, rate=RATE)
        step = RATE // 100
        for i in range(0, signal.size, step):
            chunk = signal[i : i + step]
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, chunk.size))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            "speaking" in states and any(r > 300 for r in agent_rms)
        ):
            await source.capture_frame(rtc.AudioFrame(bytes(2 * step), RATE, 1, step))
        mine = [
            text
            for text, attributes in transcripts
            if attributes.get(ATTRIBUTE_FINAL) == "true" and word_error_rate(QUESTION, text) <= 0.34
        ]
        assert mine, f"no final transcript of the question among {len(transcripts)}"
        assert "thinking" in states and "speaking" in states
        assert any(r > 300 for r in agent_rms), "the agent was never heard"
    finally:
        await room.disconnect()
        for task in list(readers):
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await server.aclose()
        await asyncio.gather(worker, return_exceptions=True)
