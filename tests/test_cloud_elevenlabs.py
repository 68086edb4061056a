"""ElevenLabs TTS adapter against a loopback ElevenLabs API (real SDK and WebSocket client)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import traceback
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from agent.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
)
from agent.providers.cloud_errors import parse_retry_after
from agent.providers.elevenlabs import (
    ElevenLabsInputStream,
    ElevenLabsSettings,
    ElevenLabsTTS,
    ElevenLabsVoiceSettings,
    OutputFormat,
    _Int16Decoder,
)
from agent.tts import TTS, SpeechChunk, StreamingTTS, TTSInputStream
from tests.vendors.elevenlabs_api import (
    Behaviour,
    ElevenLabsAPI,
    char_samples,
    speech_samples,
    synthesize,
)

KEY = "sk-el-test-9f3c1a77e0b24d58"
VOICE = "JBFqnCBsd6RMkjVDRZzb"
SENTENCE = "Hello there, this is a streamed answer from the cloud voice."


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[ElevenLabsAPI]:
    async with ElevenLabsAPI(KEY) as api:
        yield api


@pytest.fixture
def api(server: ElevenLabsAPI) -> ElevenLabsAPI:
    """The module's server with no leftover script or records."""
    server.reset()
    return server


def settings(api: ElevenLabsAPI, **changes: object) -> ElevenLabsSettings:
    values: dict[str, object] = {
        "api_key": KEY,
        "voice_id": VOICE,
        "base_url": api.base_url,
        "timeout_s": 2.0,
    }
    values.update(changes)
    return ElevenLabsSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def tts_for(api: ElevenLabsAPI, **changes: object) -> AsyncIterator[ElevenLabsTTS]:
    tts = ElevenLabsTTS(settings(api, **changes))
    try:
        yield tts
    finally:
        await tts.aclose()


async def collect(tts: ElevenLabsTTS, text: str) -> list[SpeechChunk]:
    async with contextlib.aclosing(tts.stream(text)) as stream:
        return [chunk async for chunk in stream]


async def speak(stream: ElevenLabsInputStream, pieces: list[str]) -> list[SpeechChunk]:
    """Push ``pieces`` then end, while another task reads the audio."""

    async def read() -> list[SpeechChunk]:
        return [chunk async for chunk in stream]

    reader = asyncio.create_task(read())
    try:
        for piece in pieces:
            await stream.push(piece)
        await stream.end()
        return await asyncio.wait_for(reader, 5.0)
    finally:
        reader.cancel()
        await stream.aclose()


async def speak_into(stream: ElevenLabsInputStream, text: str, into: list[SpeechChunk]) -> None:
    """Push ``text``, end, then read the audio into ``into`` (one task; closes the stream)."""
    try:
        await stream.push(text)
        await stream.end()
        async for chunk in stream:
            into.append(chunk)
    finally:
        await stream.aclose()


def squeeze(text: str) -> str:
    return "".join(text.split())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- settings and protocols ----------------------------------------------------------


async def test_implements_tts_protocols_and_hides_the_key(api: ElevenLabsAPI) -> None:
    async with tts_for(api, output_format="pcm_24000") as tts:
        assert isinstance(tts, TTS)
        assert isinstance(tts, StreamingTTS)
        streaming: StreamingTTS = tts  # mypy checks the protocols structurally
        stream: TTSInputStream = streaming.open_stream()
        await stream.aclose()
        assert tts.sample_rate == 24_000
        assert tts.voice == f"elevenlabs:{VOICE}"
        assert KEY not in repr(tts.settings)


@pytest.mark.parametrize(
    "changes",
    [
        {"output_format": "mp3_44100_128"},
        {"chunk_length_schedule": (20, 120)},
        {"chunk_length_schedule": ()},
        {"timeout_s": 0.0},
        {"optimize_streaming_latency": 5},
        {"api_key": " "},
        {"base_url": "ftp://example.invalid"},
    ],
)
def test_settings_reject_unusable_values(changes: dict[str, object]) -> None:
    values: dict[str, object] = {"api_key": KEY, "voice_id": VOICE, **changes}
    with pytest.raises(ConfigError):
        ElevenLabsSettings(**values)  # type: ignore[arg-type]


def test_decoder_keeps_an_odd_trailing_byte_for_the_next_piece() -> None:
    samples = np.array([1, -2, 300, -32768, 32767], dtype=np.int16)
    data = samples.astype("<i2").tobytes()
    decoder = _Int16Decoder()
    pieces = [decoder.feed(data[:3]), decoder.feed(data[3:4]), decoder.feed(data[4:])]
    assert [p.size for p in pieces] == [1, 1, 3]
    assert np.array_equal(np.concatenate(pieces), samples)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    seconds = parse_retry_after(later)
    assert seconds is not None
    assert 25 <= seconds <= 31


# --- HTTP streaming ------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["pcm_16000", "pcm_22050", "pcm_24000"])
async def test_http_stream_yields_the_audio_of_the_text_at_the_requested_rate(
    api: ElevenLabsAPI, output_format: OutputFormat
) -> None:
    voice_settings = ElevenLabsVoiceSettings(stability=0.4, speed=1.1)
    async with tts_for(api, output_format=output_format, voice_settings=voice_settings) as tts:
        chunks = await collect(tts, SENTENCE)

    rate = tts.sample_rate
    assert len(chunks) > 1
    assert {(c.sample_rate, c.voice, c.provider) for c in chunks} == {
        (rate, f"elevenlabs:{VOICE}", "elevenlabs")
    }
    assert all(c.pcm.dtype == np.int16 and c.pcm.ndim == 1 for c in chunks)
    audio = np.concatenate([c.pcm for c in chunks])
    assert audio.size == speech_samples(SENTENCE, rate)
    assert sum(c.duration for c in chunks) == pytest.approx(len(SENTENCE) * 0.060, abs=1e-3)
    assert np.array_equal(audio, synthesize(SENTENCE, rate))  # every sample, in order
    assert float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) > 1000  # speech, not silence

    request = api.last("stream")
    assert request.key_ok
    assert (request.voice_id, request.text, request.model_id, request.output_format) == (
        VOICE,
        SENTENCE,
        "eleven_flash_v2_5",
        output_format,
    )
    assert request.voice_settings is not None
    assert request.voice_settings["stability"] == 0.4
    assert request.voice_settings["speed"] == 1.1


async def test_http_stream_yields_audio_before_the_text_is_synthesized(
    api: ElevenLabsAPI,
) -> None:
    api.script(Behaviour(realtime_factor=4.0))  # 3.7 s of audio over about 0.9 s
    async with tts_for(api) as tts, contextlib.aclosing(tts.stream(SENTENCE)) as stream:
        start = time.monotonic()
        first = await anext(stream)
        first_at = time.monotonic() - start
        request = api.last("stream")
        assert not request.done.is_set()  # the server is still synthesizing
        rest = [chunk async for chunk in stream]
        total = time.monotonic() - start
    assert first.pcm.size + sum(c.pcm.size for c in rest) == speech_samples(SENTENCE, 16_000)
    assert first_at < total / 3


async def test_closing_the_http_stream_closes_the_response(api: ElevenLabsAPI) -> None:
    api.script(Behaviour(realtime_factor=1.0))  # 3.7 s of audio in real time
    async with tts_for(api) as tts:
        stream = tts.stream(SENTENCE)
        await anext(stream)
        start = time.monotonic()
        await stream.aclose()
        assert time.monotonic() - start < 0.2
        request = api.last("stream")
        await asyncio.wait_for(request.done.wait(), 1.0)
    assert request.client_closed
    assert request.audio_chunks < len(SENTENCE) * 60 // 40


async def test_server_also_answers_the_non_streaming_endpoint(api: ElevenLabsAPI) -> None:
    from elevenlabs.client import AsyncElevenLabs

    async with httpx.AsyncClient() as http:
        client = AsyncElevenLabs(api_key=KEY, base_url=api.base_url, httpx_client=http)
        pieces = client.text_to_speech.convert(
            VOICE, text="Hi there.", model_id="eleven_flash_v2_5", output_format="pcm_24000"
        )
        audio = b"".join([piece async for piece in pieces])
    assert len(audio) == 2 * speech_samples("Hi there.", 24_000)
    request = api.last("convert")
    assert (request.text, request.output_format) == ("Hi there.", "pcm_24000")


async def test_blank_text_makes_no_request(api: ElevenLabsAPI) -> None:
    async with tts_for(api) as tts:
        assert await collect(tts, "  \n") == []
    assert api.requests == []


@pytest.mark.parametrize(
    ("behaviour", "error_type", "retryable", "words"),
    [
        (
            Behaviour(status=401),
            ProviderAuthError,
            False,
            "HTTP 401: authentication failed (check the API key) (invalid_api_key)",
        ),
        (
            Behaviour(status=403),
            ProviderAuthError,
            False,
            "HTTP 403: authentication failed (check the API key) (missing_permissions)",
        ),
        (Behaviour(status=404), ProviderError, False, "HTTP 404: not found"),
        (Behaviour(status=408), ProviderTimeoutError, True, "HTTP 408: request timed out"),
        (Behaviour(status=409), ProviderError, True, "HTTP 409: server error"),
        (Behaviour(status=422), ProviderError, False, "HTTP 422: request rejected"),
        (
            Behaviour(status=400),
            ProviderError,
            False,
            "HTTP 400: request rejected (invalid_request)",
        ),
        (Behaviour(status=429, retry_after="7"), RateLimitedError, True, "HTTP 429"),
        (Behaviour(status=500), ProviderError, True, "HTTP 500: server error"),
        (
            Behaviour(status=503),
            ProviderError,
            True,
            "HTTP 503: server error (service_unavailable)",
        ),
        (Behaviour(hang=True), ProviderTimeoutError, True, "time-out"),
        (Behaviour(break_after=2), ProviderError, True, "connection failed"),
    ],
)
async def test_http_faults_map_to_typed_errors(
    api: ElevenLabsAPI,
    behaviour: Behaviour,
    error_type: type[ProviderError],
    retryable: bool,
    words: str,
) -> None:
    api.script(behaviour)
    async with tts_for(api, timeout_s=0.5) as tts:
        with pytest.raises(ProviderError) as caught:
            await collect(tts, SENTENCE)
    assert type(caught.value) is error_type
    assert caught.value.retryable is retryable
    assert caught.value.provider == "elevenlabs"
    assert words in str(caught.value)
    if isinstance(caught.value, RateLimitedError):
        assert caught.value.retry_after_s == 7.0


async def test_http_wrong_key_and_refused_connection(api: ElevenLabsAPI) -> None:
    async with tts_for(api, api_key="sk-wrong-key-0000") as tts:
        with pytest.raises(ProviderAuthError, match="authentication failed") as caught:
            await collect(tts, SENTENCE)
    assert not caught.value.retryable
    assert not api.last("stream").key_ok

    async with tts_for(api, base_url=f"http://127.0.0.1:{free_port()}") as tts:
        with pytest.raises(ProviderError, match="connection failed") as refused:
            await collect(tts, SENTENCE)
    assert refused.value.retryable


# --- input streaming (WebSocket) -----------------------------------------------------


async def test_input_stream_speaks_pushed_words_with_their_text(api: ElevenLabsAPI) -> None:
    text = (
        "Sure, I can help with that. Your order shipped on Monday and should arrive "
        "by Thursday afternoon, weather permitting. Anything else today?"
    )
    # LLM-like pieces: words, parts of words, punctuation, leading spaces.
    pieces = ["Sure", ", I c", "an help", " with that.", " Your", " order shi", "pped on"]
    pieces += [f" {word}" for word in text.split()[10:]]
    assert squeeze("".join(pieces)) == squeeze(text)
    voice_settings = ElevenLabsVoiceSettings(stability=0.5, similarity_boost=0.8)
    async with tts_for(api, output_format="pcm_22050", voice_settings=voice_settings) as tts:
        chunks = await speak(tts.open_stream(), pieces)

    assert chunks
    assert {(c.sample_rate, c.voice, c.provider) for c in chunks} == {
        (22_050, f"elevenlabs:{VOICE}", "elevenlabs")
    }
    spoken = "".join(c.text or "" for c in chunks)
    assert squeeze(spoken) == squeeze(text)
    for chunk in chunks:  # each chunk's text is what its audio speaks
        assert chunk.text is not None
        assert chunk.pcm.size == len(chunk.text) * char_samples(22_050)
    audio = np.concatenate([c.pcm for c in chunks])
    assert np.array_equal(audio, synthesize(spoken, 22_050))

    request = api.last("stream-input")
    await asyncio.wait_for(request.done.wait(), 1.0)
    assert request.key_ok
    assert request.server_closed
    assert not request.client_closed
    assert request.query["model_id"] == "eleven_flash_v2_5"
    assert request.query["output_format"] == "pcm_22050"
    assert request.query["sync_alignment"] == "true"
    opening, *texts, eos = request.messages
    assert opening["text"] == " "
    assert opening["generation_config"] == {"chunk_length_schedule": [80, 120, 200, 260]}
    assert opening["voice_settings"] == {"stability": 0.5, "similarity_boost": 0.8}
    assert eos == {"text": ""}
    # A partial word waits for the space after it; whole words go at once.
    assert [m["text"] for m in texts] == [
        f"{words} "
        for words in [
            "Sure, I",
            "can",
            "help with",
            "that.",
            "Your order",
            "shipped",
            *text.split()[9:],
        ]
    ]


async def test_input_stream_audio_starts_before_end(api: ElevenLabsAPI) -> None:
    words = ("one two three four five six seven eight nine ten eleven twelve " * 2).split()
    async with tts_for(api, chunk_length_schedule=(50, 120)) as tts:
        stream = tts.open_stream()
        try:
            for word in words:
                await stream.push(f"{word} ")
            first = await asyncio.wait_for(anext(stream), 2.0)  # no end() yet
            assert first.text
            assert first.pcm.size
            await stream.end()
            rest = [chunk async for chunk in stream]
        finally:
            await stream.aclose()
    spoken = (first.text or "") + "".join(c.text or "" for c in rest)
    assert squeeze(spoken) == squeeze(" ".join(words))


async def test_input_stream_slow_consumer_is_not_a_service_time_out(
    api: ElevenLabsAPI,
) -> None:
    text = " ".join([SENTENCE] * 3)  # about 50 audio messages: more than the queue holds
    async with tts_for(api, timeout_s=0.3) as tts:
        stream = tts.open_stream()
        try:
            await stream.push(text)
            await stream.end()
            await asyncio.sleep(0.6)  # the playout is busy: nobody reads for a while
            chunks = [chunk async for chunk in stream]
        finally:
            await stream.aclose()
    assert squeeze("".join(c.text or "" for c in chunks)) == squeeze(text)


async def test_input_stream_text_shorter_than_the_schedule_is_spoken_at_end(
    api: ElevenLabsAPI,
) -> None:
    async with tts_for(api) as tts:
        chunks = await speak(tts.open_stream(), ["Ye", "s."])
    assert squeeze("".join(c.text or "" for c in chunks)) == "Yes."
    assert api.last("stream-input").text == "Yes. "


async def test_input_stream_aclose_mid_utterance_is_prompt_and_closes_the_socket(
    api: ElevenLabsAPI,
) -> None:
    api.script(Behaviour(realtime_factor=1.0))  # audio in real time: seconds of it
    async with tts_for(api) as tts:
        stream = tts.open_stream()
        await stream.push(SENTENCE + " " + SENTENCE)
        await stream.end()
        await asyncio.wait_for(anext(stream), 2.0)
        start = time.monotonic()
        await stream.aclose()
        assert time.monotonic() - start < 0.5
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        await stream.push("ignored after close ")  # abandoned: no error, nothing sent
        await stream.end()
        request = api.last("stream-input")
        await asyncio.wait_for(request.done.wait(), 1.0)
    assert request.client_closed
    assert request.close_code == 1000
    assert request.audio_chunks < len(SENTENCE) // 2


async def test_input_stream_aclose_wakes_a_waiting_reader(api: ElevenLabsAPI) -> None:
    api.script(Behaviour(hang=True))
    async with tts_for(api) as tts:
        stream = tts.open_stream()
        await stream.push("Hello there ")
        reader = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.05)
        assert not reader.done()
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, 0.5)
        await asyncio.wait_for(api.last("stream-input").done.wait(), 1.0)


async def test_tts_aclose_aborts_open_streams(api: ElevenLabsAPI) -> None:
    api.script(Behaviour(hang=True))
    tts = ElevenLabsTTS(settings(api))
    stream = tts.open_stream()
    await stream.push("Hello there ")
    await tts.aclose()
    await tts.aclose()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 0.5)
    with pytest.raises(ProviderError, match="closed"):
        tts.open_stream()
    with pytest.raises(ProviderError, match="closed"):
        await collect(tts, SENTENCE)


@pytest.mark.parametrize(
    ("behaviour", "error_type", "retryable", "words"),
    [
        (Behaviour(status=401), ProviderAuthError, False, "HTTP 401: authentication failed"),
        (Behaviour(status=403), ProviderAuthError, False, "HTTP 403: authentication failed"),
        (Behaviour(status=429, retry_after="3"), RateLimitedError, True, "HTTP 429"),
        (Behaviour(status=500), ProviderError, True, "HTTP 500: server error"),
        (Behaviour(hang=True), ProviderTimeoutError, True, "no audio within 0.5 s"),
        (Behaviour(break_after=2), ProviderError, True, "close code 1011"),
        (Behaviour(ws_error=("quota_exceeded", 1008)), ProviderError, False, "quota_exceeded"),
        (
            Behaviour(ws_error=("input_timeout_exceeded", 1008), break_after=1),
            ProviderTimeoutError,
            True,
            "input_timeout_exceeded",
        ),
        (
            Behaviour(ws_error=("invalid_api_key", 1008)),
            ProviderAuthError,
            False,
            "authentication failed",
        ),
    ],
)
async def test_input_stream_faults_map_to_typed_errors(
    api: ElevenLabsAPI,
    behaviour: Behaviour,
    error_type: type[ProviderError],
    retryable: bool,
    words: str,
) -> None:
    api.script(behaviour)
    async with tts_for(api, timeout_s=0.5) as tts:
        chunks: list[SpeechChunk] = []
        with pytest.raises(ProviderError) as caught:
            await speak_into(tts.open_stream(), SENTENCE, chunks)
    assert type(caught.value) is error_type
    assert caught.value.retryable is retryable
    assert words in str(caught.value)
    if behaviour.break_after:
        assert len(chunks) == behaviour.break_after
    if isinstance(caught.value, RateLimitedError):
        assert caught.value.retry_after_s == 3.0


async def test_input_stream_handshake_failure_surfaces_from_push_and_iteration(
    api: ElevenLabsAPI,
) -> None:
    async with tts_for(api, api_key="sk-wrong-key-0000") as tts:
        stream = tts.open_stream()
        with pytest.raises(ProviderError, match="authentication failed") as pushed:
            await stream.push("Hello there ")
        with pytest.raises(ProviderError, match="authentication failed") as iterated:
            await anext(stream)
        await stream.aclose()
    assert type(pushed.value) is ProviderAuthError and not pushed.value.retryable
    assert iterated.value is pushed.value
    assert not api.last("stream-input").key_ok


async def test_input_stream_refused_connection_is_retryable(api: ElevenLabsAPI) -> None:
    async with tts_for(api, base_url=f"http://127.0.0.1:{free_port()}") as tts:
        stream = tts.open_stream()
        with pytest.raises(ProviderError, match="connection failed") as caught:
            await anext(stream)
        await stream.aclose()
    assert caught.value.retryable


async def test_input_stream_unanswered_handshake_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # read the upgrade request, never answer it
        writer.close()

    tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        tts = ElevenLabsTTS(
            ElevenLabsSettings(
                api_key=KEY, voice_id=VOICE, base_url=f"http://127.0.0.1:{port}", timeout_s=0.3
            )
        )
        stream = tts.open_stream()
        start = time.monotonic()
        with pytest.raises(ProviderTimeoutError, match="handshake"):
            await stream.push("Hello there ")
        assert time.monotonic() - start < 1.0
        await tts.aclose()
    finally:
        tcp.close()
        await tcp.wait_closed()


# --- secrets -------------------------------------------------------------------------


async def test_key_and_text_never_appear_in_errors_or_logs(
    api: ElevenLabsAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_text = "Zanzibar-7731 account number forty two"
    wrong_key = "sk-el-wrong-5e0c2d9b1f"
    errors: list[ProviderError] = []

    async def failing_http(behaviour: Behaviour, **changes: object) -> None:
        api.script(behaviour)
        async with tts_for(api, timeout_s=0.5, **changes) as tts:
            try:
                await collect(tts, secret_text)
            except ProviderError as exc:
                errors.append(exc)

    async def failing_ws(behaviour: Behaviour, **changes: object) -> None:
        api.script(behaviour)
        async with tts_for(api, timeout_s=0.5, **changes) as tts:
            try:
                await speak_into(tts.open_stream(), secret_text, [])
            except ProviderError as exc:
                errors.append(exc)

    await failing_http(Behaviour())  # succeeds: logs of a normal request too
    await failing_http(Behaviour(), api_key=wrong_key)
    await failing_http(Behaviour(status=500))
    await failing_http(Behaviour(status=429, retry_after="1"))
    await failing_http(Behaviour(break_after=1))
    await failing_ws(Behaviour())
    await failing_ws(Behaviour(), api_key=wrong_key)
    await failing_ws(Behaviour(ws_error=("quota_exceeded", 1008)))
    await failing_ws(Behaviour(break_after=1))

    assert len(errors) == 7
    for exc in errors:
        shown = "".join(traceback.format_exception(exc))  # as a logged traceback shows it
        assert KEY not in shown
        assert wrong_key not in shown
        assert "Zanzibar" not in shown
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged
    assert wrong_key not in logged
    assert "Zanzibar" not in logged
