"""A loopback ElevenLabs text-to-speech API for tests and benchmarks.

Speaks the documented endpoints with the real clients (the official SDK,
``websockets``) on 127.0.0.1:

* ``POST /v1/text-to-speech/{voice_id}/stream``: raw PCM in the requested
  ``output_format``, streamed in small pieces as it is "synthesized";
* ``POST /v1/text-to-speech/{voice_id}``: the same audio in one response;
* ``WS /v1/text-to-speech/{voice_id}/stream-input``: input streaming. Text is
  buffered like the service does (``generation_config.chunk_length_schedule``,
  default 120/160/250/290 characters; ``flush``; ``{"text": ""}`` ends it), each
  generation comes back as ``audio`` (base64) messages with ``alignment`` and
  ``normalizedAlignment`` (for every message with ``sync_alignment=true``, else
  on the first of a generation), then ``{"isFinal": true}`` and a normal close.

The audio is deterministic and recognisable, never silence: ``CHAR_MS`` (60 ms)
per character, a two-formant vowel-like tone whose pitch and formants depend
on the character (whitespace is a pause), so durations follow from the text
(``speech_samples``) and tests can check lengths and rates.

``xi-api-key`` is checked (401 with the vendor's error JSON otherwise). Each
request takes the next scripted ``Behaviour`` (``script()``), else the
default: first-audio latency, throughput, and faults (hang, an HTTP status
such as 429 with ``Retry-After``, 500 or 401, a stream or socket broken after
N chunks, a WebSocket error message). Every request is recorded
(``RecordedRequest``: text, voice, model, output format, and for sockets how
they ended).

Start it with ``async with ElevenLabsAPI() as api:`` (an ephemeral port; the
server runs on the caller's event loop) or from a shell with
``python -m tests.vendors.elevenlabs_api --port 8089``. No pytest dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

CHAR_MS: Final = 60
"""Audio per character of text."""

SAMPLE_RATES: Final[dict[str, int]] = {
    "pcm_8000": 8_000,
    "pcm_16000": 16_000,
    "pcm_22050": 22_050,
    "pcm_24000": 24_000,
    "pcm_44100": 44_100,
}
"""The output formats served (raw S16LE PCM only)."""

DEFAULT_SCHEDULE: Final = (120, 160, 250, 290)
"""The service's default ``chunk_length_schedule``."""

_VENDOR_STATUS: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid_request", "The request is invalid."),
    401: ("invalid_api_key", "Invalid API key"),
    403: ("missing_permissions", "The API key lacks the text_to_speech permission."),
    404: ("voice_not_found", "A voice with the voice_id was not found."),
    429: ("too_many_concurrent_requests", "Too many concurrent requests for your plan."),
    500: ("internal_server_error", "An internal error occurred."),
    503: ("service_unavailable", "The service is temporarily unavailable."),
}


# --- audio ---------------------------------------------------------------------------


def char_samples(sample_rate: int) -> int:
    """Samples of audio per character at ``sample_rate``."""
    return round(sample_rate * CHAR_MS / 1000)


def speech_samples(text: str, sample_rate: int) -> int:
    """Samples of audio the server returns for ``text``."""
    return len(text) * char_samples(sample_rate)


@functools.lru_cache(maxsize=1024)
def _char_audio(char: str, sample_rate: int) -> bytes:
    n = char_samples(sample_rate)
    if char.isspace():
        return bytes(2 * n)
    code = ord(char.lower())
    t = np.arange(n, dtype=np.float64) / sample_rate
    pitch = 100.0 + (code % 7) * 12.0
    formant1 = 300.0 + (code % 11) * 55.0
    formant2 = 900.0 + (code % 13) * 110.0
    # Formants excited at the pitch rate: a crude vowel, but speech-like in spectrum.
    excitation = 0.55 + 0.45 * np.cos(2 * np.pi * pitch * t)
    wave = (0.6 * np.sin(2 * np.pi * formant1 * t) + 0.3 * np.sin(2 * np.pi * formant2 * t)) * (
        excitation
    )
    ramp = min(n // 2, round(sample_rate * 0.005))
    envelope = np.ones(n)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[n - ramp :] = np.linspace(1.0, 0.0, ramp)
    samples = np.round(wave * envelope * 0.5 * 32767).astype("<i2")
    return samples.tobytes()


def synthesize(text: str, sample_rate: int) -> npt.NDArray[np.int16]:
    """The server's audio for ``text``: ``CHAR_MS`` per character, mono int16."""
    data = b"".join(_char_audio(char, sample_rate) for char in text)
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


# --- scripting and records -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the server answers one request."""

    first_audio_s: float = 0.0
    """Delay before the first audio of the request (time to first byte)."""
    realtime_factor: float = 50.0
    """Seconds of audio produced per second of wall clock (throughput)."""
    piece_ms: int = 40
    """HTTP: audio per streamed piece."""
    chunk_chars: int = 4
    """WebSocket: characters per audio message."""
    status: int | None = None
    """Refuse with this HTTP status (also at a WebSocket handshake)."""
    retry_after: str | None = None
    """``Retry-After`` header sent with ``status``."""
    hang: bool = False
    """Accept the request, then never send audio (until the client leaves)."""
    break_after: int | None = None
    """Drop the HTTP stream (abruptly) or close the socket (1011) after this many chunks."""
    ws_error: tuple[str, int] | None = None
    """WebSocket: send ``{"message", "error": code[0], "code": code[1]}`` and close with
    ``code[1]`` (after ``break_after`` chunks, else before any audio)."""


@dataclass(slots=True)
class RecordedRequest:
    """What one request asked for and how it ended."""

    kind: Literal["stream", "convert", "stream-input"]
    voice_id: str
    query: dict[str, str]
    key_ok: bool
    model_id: str | None = None
    output_format: str | None = None
    text: str = ""
    """The whole text (for sockets: every piece received, joined)."""
    voice_settings: dict[str, Any] | None = None
    generation_config: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Sockets: every JSON message received, in order."""
    audio_chunks: int = 0
    """Audio pieces (HTTP) or audio messages (WebSocket) sent."""
    client_closed: bool = False
    """The client went away before the server finished."""
    server_closed: bool = False
    """Sockets: the server closed first (the end of the utterance, or a fault)."""
    close_code: int | None = None
    """Sockets: the close code the client sent, when it closed first."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server finished with the request."""


class StreamBrokenError(Exception):
    """Raised inside a response body to drop the connection mid-stream (a fault)."""


# --- the server ----------------------------------------------------------------------


class ElevenLabsAPI:
    """The loopback server; an async context manager (see the module docstring)."""

    def __init__(
        self,
        api_key: str = "test-elevenlabs-key",
        *,
        default: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.default = default or Behaviour()
        self.requests: list[RecordedRequest] = []
        self._scripted: deque[Behaviour] = deque()
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/text-to-speech/{voice_id}/stream", self._http_stream, methods=["POST"]),
                Route("/v1/text-to-speech/{voice_id}", self._http_convert, methods=["POST"]),
                WebSocketRoute("/v1/text-to-speech/{voice_id}/stream-input", self._stream_input),
            ]
        )

    # -- control

    def script(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with ``behaviours``, one each, in order."""
        self._scripted.extend(behaviours)

    def reset(self) -> None:
        """Forget the script and the recorded requests (between tests on one server)."""
        self._scripted.clear()
        self.requests.clear()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` once started."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return f"http://{self._host}:{self._port}"

    def last(self, kind: str | None = None) -> RecordedRequest:
        """The latest request (of ``kind``)."""
        for request in reversed(self.requests):
            if kind is None or request.kind == kind:
                return request
        raise LookupError(f"no {kind or ''} request recorded")

    async def __aenter__(self) -> ElevenLabsAPI:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._port = sock.getsockname()[1]
        # log_config=None: no dictConfig of the process's logging. The level caps
        # uvicorn's loggers, whose DEBUG output has every handshake header (the key).
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = _QuietServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="elevenlabs-api")
        while not server.started:
            if self._task.done():
                sock.close()
                await self._task  # raises what stopped it
                raise RuntimeError("the ElevenLabs test server stopped while starting")
            await asyncio.sleep(0.005)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = None
        self._task = None

    def _next(self) -> Behaviour:
        return self._scripted.popleft() if self._scripted else self.default

    # -- HTTP

    async def _http_stream(self, request: Request) -> Response:
        return await self._http(request, streaming=True)

    async def _http_convert(self, request: Request) -> Response:
        return await self._http(request, streaming=False)

    async def _http(self, request: Request, *, streaming: bool) -> Response:
        behaviour = self._next()
        record = RecordedRequest(
            kind="stream" if streaming else "convert",
            voice_id=request.path_params["voice_id"],
            query=dict(request.query_params),
            key_ok=request.headers.get("xi-api-key") == self.api_key,
            output_format=request.query_params.get("output_format", "mp3_44100_128"),
        )
        self.requests.append(record)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            record.text = str(body.get("text", ""))
            record.model_id = body.get("model_id")
            record.voice_settings = body.get("voice_settings")
        refusal = self._refusal(record, behaviour)
        if refusal is None and not isinstance(body, dict):
            refusal = _validation_error("body", "a JSON object is required")
        if refusal is None and not record.text:
            refusal = _validation_error("text", "text must not be empty")
        if refusal is not None:
            record.done.set()
            return refusal
        if behaviour.hang:
            await _wait_disconnect(request)
            record.client_closed = True
            record.done.set()
            return Response(status_code=499)
        rate = SAMPLE_RATES[str(record.output_format)]
        audio = synthesize(record.text, rate).tobytes()
        if not streaming:
            await asyncio.sleep(
                behaviour.first_audio_s + _audio_s(len(audio), rate) / behaviour.realtime_factor
            )
            record.audio_chunks = 1
            record.done.set()
            return Response(audio, media_type="audio/pcm")
        return StreamingResponse(
            self._pieces(audio, rate, behaviour, record), media_type="audio/pcm"
        )

    async def _pieces(
        self, audio: bytes, rate: int, behaviour: Behaviour, record: RecordedRequest
    ) -> AsyncIterator[bytes]:
        piece = max(2, 2 * round(rate * behaviour.piece_ms / 1000))
        finished = False
        try:
            await asyncio.sleep(behaviour.first_audio_s)
            for start in range(0, len(audio), piece):
                if (
                    behaviour.break_after is not None
                    and record.audio_chunks >= behaviour.break_after
                ):
                    finished = True
                    raise StreamBrokenError("fault: stream broken")
                data = audio[start : start + piece]
                await asyncio.sleep(_audio_s(len(data), rate) / behaviour.realtime_factor)
                record.audio_chunks += 1
                yield data
            finished = True
        finally:
            # Starlette stops the body (cancels or closes it) when the client leaves.
            record.client_closed = not finished
            record.done.set()

    def _refusal(self, record: RecordedRequest, behaviour: Behaviour) -> Response | None:
        if not record.key_ok:
            return _error_response(401)
        if behaviour.status is not None:
            return _error_response(behaviour.status, behaviour.retry_after)
        if record.output_format not in SAMPLE_RATES:
            return _validation_error(
                "output_format", f"this server only speaks {', '.join(SAMPLE_RATES)}"
            )
        return None

    # -- WebSocket

    async def _stream_input(self, websocket: WebSocket) -> None:
        behaviour = self._next()
        query = dict(websocket.query_params)
        record = RecordedRequest(
            kind="stream-input",
            voice_id=websocket.path_params["voice_id"],
            query=query,
            key_ok=websocket.headers.get("xi-api-key") == self.api_key,
            model_id=query.get("model_id"),
            output_format=query.get("output_format", "mp3_44100"),
        )
        self.requests.append(record)
        try:
            refusal = self._refusal(record, behaviour)
            if refusal is not None:
                await websocket.send_denial_response(refusal)
                return
            await websocket.accept()
            await self._converse(websocket, behaviour, record)
        finally:
            record.done.set()

    async def _converse(
        self, websocket: WebSocket, behaviour: Behaviour, record: RecordedRequest
    ) -> None:
        jobs: asyncio.Queue[str | None] = asyncio.Queue()
        receiver = asyncio.create_task(self._receive(websocket, record, jobs))
        sender = asyncio.create_task(self._send(websocket, behaviour, record, jobs))
        try:
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                # Everything was sent (or a fault ended it): let the close handshake finish.
                await asyncio.wait({receiver}, timeout=2.0)
        finally:
            # The client left first, or is too slow to close: stop both sides.
            for task in (receiver, sender):
                task.cancel()
            await asyncio.gather(receiver, sender, return_exceptions=True)

    async def _receive(
        self, websocket: WebSocket, record: RecordedRequest, jobs: asyncio.Queue[str | None]
    ) -> None:
        """Read text until the client closes; queue a generation per schedule step."""
        buffer = ""
        generations = 0
        schedule: Sequence[float] = DEFAULT_SCHEDULE
        auto_mode = record.query.get("auto_mode") == "true"
        ended = False
        while True:
            try:
                raw = await websocket.receive_text()
            except WebSocketDisconnect as exc:
                if not record.server_closed:
                    record.client_closed = True
                    record.close_code = exc.code
                return
            message = json.loads(raw)
            record.messages.append(message)
            if ended:
                continue
            if len(record.messages) == 1:
                record.voice_settings = message.get("voice_settings")
                record.generation_config = message.get("generation_config")
                if record.generation_config and record.generation_config.get(
                    "chunk_length_schedule"
                ):
                    schedule = record.generation_config["chunk_length_schedule"]
                continue
            text = message.get("text")
            if text == "":
                ended = True
                if buffer.strip():
                    jobs.put_nowait(buffer)
                jobs.put_nowait(None)
                continue
            if isinstance(text, str):
                record.text += text
                buffer += text
            threshold = schedule[min(generations, len(schedule) - 1)]
            if buffer.strip() and (message.get("flush") or auto_mode or len(buffer) >= threshold):
                jobs.put_nowait(buffer)
                buffer = ""
                generations += 1

    async def _send(
        self,
        websocket: WebSocket,
        behaviour: Behaviour,
        record: RecordedRequest,
        jobs: asyncio.Queue[str | None],
    ) -> None:
        """Generate each queued text into audio messages; ``isFinal`` and close at the end."""
        rate = SAMPLE_RATES[str(record.output_format)]
        sync_alignment = record.query.get("sync_alignment") == "true"
        if behaviour.hang:
            await asyncio.Event().wait()
        if behaviour.ws_error is not None and behaviour.break_after is None:
            await _send_error(websocket, record, behaviour.ws_error)
            return
        first = True
        while (text := await jobs.get()) is not None:
            if first:
                await asyncio.sleep(behaviour.first_audio_s)
                first = False
            step = max(1, behaviour.chunk_chars)
            for start in range(0, len(text), step):
                if (
                    behaviour.break_after is not None
                    and record.audio_chunks >= behaviour.break_after
                ):
                    if behaviour.ws_error is not None:
                        await _send_error(websocket, record, behaviour.ws_error)
                    else:
                        record.server_closed = True
                        await websocket.close(code=1011, reason="internal error")
                    return
                chars = text[start : start + step]
                audio = synthesize(chars, rate).tobytes()
                await asyncio.sleep(_audio_s(len(audio), rate) / behaviour.realtime_factor)
                alignment: dict[str, list[Any]] | None = None
                if sync_alignment or start == 0:
                    covered = chars if sync_alignment else text
                    alignment = {
                        "chars": list(covered),
                        "charStartTimesMs": [i * CHAR_MS for i in range(len(covered))],
                        "charDurationsMs": [CHAR_MS] * len(covered),
                    }
                await websocket.send_text(
                    json.dumps(
                        {
                            "audio": base64.b64encode(audio).decode("ascii"),
                            "isFinal": None,
                            "normalizedAlignment": alignment,
                            "alignment": alignment,
                        }
                    )
                )
                record.audio_chunks += 1
        record.server_closed = True  # before isFinal: the client may close right after it
        await websocket.send_text(json.dumps({"audio": None, "isFinal": True}))
        await websocket.close(code=1000)


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _audio_s(n_bytes: int, rate: int) -> float:
    return n_bytes / 2 / rate


def _error_response(status: int, retry_after: str | None = None) -> Response:
    code, message = _VENDOR_STATUS.get(status, ("error", "The request failed."))
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return JSONResponse(
        {"detail": {"status": code, "message": message}}, status_code=status, headers=headers
    )


def _validation_error(field_name: str, message: str) -> Response:
    return JSONResponse(
        {"detail": [{"loc": ["body", field_name], "msg": message, "type": "value_error"}]},
        status_code=422,
    )


async def _send_error(
    websocket: WebSocket, record: RecordedRequest, error: tuple[str, int]
) -> None:
    code, close_code = error
    await websocket.send_text(
        json.dumps({"message": f"The request failed: {code}.", "error": code, "code": close_code})
    )
    record.server_closed = True
    await websocket.close(code=close_code)


async def _wait_disconnect(request: Request) -> None:
    """Wait until the client goes away (its body was read, so only that can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _serve(port: int, api_key: str) -> None:
    async with ElevenLabsAPI(api_key, port=port) as api:
        print(f"ElevenLabs test API on {api.base_url} (key {api_key!r})", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server in the foreground (for benchmarks and manual tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", default="test-elevenlabs-key")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.api_key))


if __name__ == "__main__":
    main()
