"""ElevenLabs cloud TTS: HTTP streaming and input streaming over its WebSocket.

``ElevenLabsTTS.stream(text)`` posts the whole text to
``/v1/text-to-speech/{voice_id}/stream`` through the official SDK's async
client and yields the raw PCM as it arrives. ``open_stream()`` speaks text
while the LLM is still writing it, over the documented input-streaming
WebSocket ``/v1/text-to-speech/{voice_id}/stream-input``; each chunk it yields
says which characters it speaks (the service's alignment), so the playout
knows what the caller heard.

Why the WebSocket is not the SDK's: the SDK's only client for this endpoint
(``RealtimeTextToSpeechClient.convert_realtime``, elevenlabs 2.x) is
synchronous (``websockets.sync``), takes the whole text as an iterator and
drops the alignment; it would need a thread per utterance and could not say
what each chunk speaks. The protocol is small and documented, so it is spoken
here with the ``websockets`` asyncio client (a dependency of the SDK itself).

Output format: raw PCM (``pcm_16000`` by default). The agent's pipeline runs
at 16 kHz (``media.frames.PIPELINE_RATE``) and a phone call carries 8 kHz
(G.711) or 16 kHz (wideband) audio, so a higher rate would only cost bytes
on the wire (24 kHz is 1.5 times the traffic) and a resampling pass per chunk
for nothing the caller can hear; at 16 kHz the reply's resampler is a
passthrough. 22.05 and 24 kHz stay selectable for wideband WebRTC callers.

Failures are translated into ``agent.errors`` types at this edge. HTTP
statuses (of a request or of the WebSocket handshake) go through the mapping
all cloud adapters share (``agent.providers.cloud_errors.status_error``):
401/403 are ``ProviderAuthError``, 429 is ``RateLimitedError`` (with
``Retry-After``), 408 is ``ProviderTimeoutError``, 409 and 5xx are
retryable, other refusals final. This module adds what is ElevenLabs' own:
the WebSocket's error messages and close codes, and httpx failures. Dropped
connections are retryable, time-outs are ``ProviderTimeoutError``. Messages
carry status codes and the vendor's short error codes only, never the API
key or the text being spoken, and vendor exceptions are not chained (their
text can quote the request). The ``websockets`` logger of our sockets is capped at INFO because
its DEBUG output prints the handshake headers (the key).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from agent.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
)
from agent.providers.cloud_errors import safe_token, status_error
from agent.tts import SpeechChunk
from media.frames import PCM

if TYPE_CHECKING:
    from elevenlabs.client import AsyncElevenLabs
    from elevenlabs.types import VoiceSettings

PROVIDER: Final = "elevenlabs"
"""Name of the provider in errors and on ``SpeechChunk.provider``."""

OutputFormat = Literal["pcm_16000", "pcm_22050", "pcm_24000"]
"""Raw 16-bit little-endian mono PCM at 16, 22.05 or 24 kHz."""

SAMPLE_RATES: Final[Mapping[str, int]] = {
    "pcm_16000": 16_000,
    "pcm_22050": 22_050,
    "pcm_24000": 24_000,
}
"""Sample rate of each supported output format."""

CHUNK_QUEUE: Final = 32
"""Audio messages of an input stream waiting for its consumer (the socket waits past it)."""

_CLOSE_TIMEOUT_S: Final = 1.0
"""Longest wait for the server's answer to our close frame before the TCP link is dropped."""
_MAX_MESSAGE_BYTES: Final = 8 * 2**20
"""Largest WebSocket message accepted (about 90 s of 24 kHz audio in base64)."""

_log = logging.getLogger(__name__)
_ws_log = logging.getLogger(f"{__name__}.websocket")
# websockets logs every handshake header (xi-api-key) and frame at DEBUG: never let
# a global DEBUG level reach the sockets of this module.
_ws_log.setLevel(logging.INFO)


ELEVENLABS_BASE_URL = "https://api.elevenlabs.io"
"""Root of ElevenLabs' API (HTTP; the WebSocket uses the same host over wss)."""


@dataclass(frozen=True, slots=True)
class ElevenLabsVoiceSettings:
    """Per-request voice settings; ``None`` keeps the voice's stored value."""

    stability: float | None = None
    """0-1: higher is steadier, lower is more expressive."""
    similarity_boost: float | None = None
    """0-1: how closely to adhere to the original voice."""
    style: float | None = None
    """0-1 style exaggeration (adds latency above 0)."""
    use_speaker_boost: bool | None = None
    """Boost similarity to the speaker (slightly more latency)."""
    speed: float | None = None
    """Speaking rate, 0.7-1.2 (1.0 is the voice's own)."""

    def to_json(self) -> dict[str, float | bool]:
        """The fields that are set, as the API names them."""
        values: dict[str, float | bool | None] = {
            "stability": self.stability,
            "similarity_boost": self.similarity_boost,
            "style": self.style,
            "use_speaker_boost": self.use_speaker_boost,
            "speed": self.speed,
        }
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class ElevenLabsSettings:
    """Settings of the ElevenLabs voice (the key is never shown by ``repr``)."""

    api_key: str = field(repr=False)
    voice_id: str
    base_url: str = ELEVENLABS_BASE_URL
    """HTTP(S) root of the API; the WebSocket uses the same host (ws/wss)."""
    model_id: str = "eleven_flash_v2_5"
    """Flash v2.5: ElevenLabs' lowest-latency model (about 75 ms of model time)."""
    output_format: OutputFormat = "pcm_16000"
    """Raw PCM at the pipeline's own rate (see the module docstring)."""
    optimize_streaming_latency: int | None = None
    """0-4, trading quality for latency; deprecated by ElevenLabs (Flash is already
    fast), sent only when set."""
    voice_settings: ElevenLabsVoiceSettings | None = None
    timeout_s: float = 10.0
    """Connect, and wait for each piece of audio once the service owes some."""
    chunk_length_schedule: tuple[int, ...] = (80, 120, 200, 260)
    """Input streaming: characters the service buffers before each of its first
    generations (the last value repeats). Lower than the service's default
    (120, 160, 250, 290) so a short reply starts speaking after its first clause;
    each value must lie in 50-500."""

    def __post_init__(self) -> None:
        if not self.api_key.strip():
            raise ConfigError("elevenlabs: api_key is empty")
        if not self.voice_id.strip():
            raise ConfigError("elevenlabs: voice_id is empty")
        if self.output_format not in SAMPLE_RATES:
            raise ConfigError(f"elevenlabs: output_format must be one of {', '.join(SAMPLE_RATES)}")
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ConfigError("elevenlabs: base_url must be an http(s) URL")
        if not self.timeout_s > 0:
            raise ConfigError("elevenlabs: timeout_s must be positive")
        if self.optimize_streaming_latency is not None and not (
            0 <= self.optimize_streaming_latency <= 4
        ):
            raise ConfigError("elevenlabs: optimize_streaming_latency must be 0-4")
        if not self.chunk_length_schedule or not all(
            50 <= n <= 500 for n in self.chunk_length_schedule
        ):
            raise ConfigError("elevenlabs: chunk_length_schedule values must lie in 50-500")

    @property
    def sample_rate(self) -> int:
        """Sample rate of ``output_format``."""
        return SAMPLE_RATES[self.output_format]


# --- error mapping -----------------------------------------------------------------


def _http_error(exc: Exception) -> ProviderError:
    """Translate an SDK (``ApiError``, ``ParsingError``) or httpx failure of a request."""
    from elevenlabs.core.api_error import ApiError
    from elevenlabs.core.parse_error import ParsingError

    if isinstance(exc, ApiError | ParsingError):
        if exc.status_code is None:
            return ProviderError(PROVIDER, "request failed without a status", retryable=True)
        return status_error(PROVIDER, exc.status_code, headers=exc.headers, body=exc.body)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(
            PROVIDER, f"no answer within the time-out ({type(exc).__name__})"
        )
    if isinstance(exc, httpx.HTTPStatusError):  # its body is a stream: not read for a code
        return status_error(PROVIDER, exc.response.status_code, headers=exc.response.headers)
    if isinstance(exc, httpx.TransportError | OSError):
        return ProviderError(PROVIDER, f"connection failed ({type(exc).__name__})", retryable=True)
    return ProviderError(PROVIDER, f"request failed ({type(exc).__name__})", retryable=True)


def _message_error(message: Mapping[str, Any]) -> ProviderError:
    """Translate an error message of the WebSocket (``{"message", "error", "code"}``).

    Only the ``error`` code is read (``message`` is free text); a code naming
    the key or a permission is a ``ProviderAuthError``, as HTTP 401/403 is.
    """
    what = safe_token(message.get("error")) or "error"
    lowered = what.lower()
    if "auth" in lowered or "api_key" in lowered or "permission" in lowered:
        return ProviderAuthError(PROVIDER, f"authentication failed (check the API key) ({what})")
    if "rate" in lowered or "concurrent" in lowered or "busy" in lowered:
        return RateLimitedError(PROVIDER, f"rate limited ({what})")
    if "timeout" in lowered:
        return ProviderTimeoutError(PROVIDER, f"server time-out ({what})")
    if "quota" in lowered or "credit" in lowered or "invalid" in lowered:
        return ProviderError(PROVIDER, f"request rejected ({what})")
    numeric = message.get("code")
    return _close_error(numeric if isinstance(numeric, int) else None, what)


def _close_error(code: int | None, what: str = "connection closed") -> ProviderError:
    """Translate a WebSocket close code the service ended an utterance with."""
    label = f"{what}, close code {code}" if code is not None else what
    if code == 1008:  # policy violation: the service's refusals (key, quota, input)
        return ProviderError(PROVIDER, f"request rejected ({label})")
    if code in (1002, 1003, 1007, 1009, 1010):  # a protocol or payload the other end refused
        return ProviderError(PROVIDER, f"protocol error ({label})")
    if code == 1013:  # try again later
        return RateLimitedError(PROVIDER, f"service overloaded ({label})")
    return ProviderError(PROVIDER, f"connection lost ({label})", retryable=True)


def _ws_error(exc: Exception) -> ProviderError:
    """Translate a failure to open the WebSocket."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        return status_error(
            PROVIDER, response.status_code, headers=response.headers, body=response.body
        )
    if isinstance(exc, TimeoutError):
        return ProviderTimeoutError(PROVIDER, "no WebSocket handshake within the time-out")
    if isinstance(exc, InvalidURI):
        return ProviderError(PROVIDER, "invalid WebSocket URL (check base_url)")
    if isinstance(exc, InvalidHandshake):
        return ProviderError(
            PROVIDER, f"WebSocket handshake failed ({type(exc).__name__})", retryable=True
        )
    if isinstance(exc, ConnectionClosed):
        return _closed_error(exc)
    return ProviderError(PROVIDER, f"connection failed ({type(exc).__name__})", retryable=True)


def _closed_error(exc: ConnectionClosed) -> ProviderError:
    received = exc.rcvd
    return _close_error(received.code if received is not None else 1006)


# --- audio ---------------------------------------------------------------------------


class _Int16Decoder:
    """S16LE bytes arriving in arbitrary pieces -> int16 arrays.

    An odd trailing byte waits for the next piece, so a sample split between
    two network reads is never lost or misaligned.
    """

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> PCM:
        """The complete samples of ``data`` after what was carried over."""
        if self._carry:
            data = self._carry + data
        usable = len(data) - (len(data) % 2)
        self._carry = data[usable:]
        return np.frombuffer(data, dtype="<i2", count=usable // 2).astype(np.int16)


# --- the TTS -------------------------------------------------------------------------


class ElevenLabsTTS:
    """Cloud TTS by ElevenLabs; implements ``agent.tts.TTS`` and ``agent.tts.StreamingTTS``."""

    def __init__(self, settings: ElevenLabsSettings) -> None:
        try:
            from elevenlabs.client import AsyncElevenLabs
        except ImportError as exc:  # pragma: no cover - the cloud extra is missing
            raise ProviderError(
                PROVIDER, "package elevenlabs is not installed (scripts/setup.sh cloud)"
            ) from exc

        self.settings = settings
        self.sample_rate: int = settings.sample_rate
        self.voice: str = f"elevenlabs:{settings.voice_id}"
        # Our own httpx client, so aclose() can close its connections (the SDK has no
        # close); its time-out applies to connecting and to each read of the stream.
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_s))
        self._client: AsyncElevenLabs = AsyncElevenLabs(
            api_key=settings.api_key,
            base_url=settings.base_url.rstrip("/"),
            timeout=settings.timeout_s,
            httpx_client=self._http,
        )
        self._streams: set[ElevenLabsInputStream] = set()
        self._closed = False

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        """Yield the audio of ``text`` as the service streams it (HTTP).

        Closing the generator closes the HTTP response at once. Failures
        surface as ``ProviderError`` (see ``_http_error``).
        """
        self._check_open()
        if not text.strip():
            return
        from elevenlabs.core.api_error import ApiError
        from elevenlabs.core.parse_error import ParsingError

        settings = self.settings
        decoder = _Int16Decoder()
        # The raw client's stream is a context manager around the HTTP response: leaving
        # it (the end, an error, this generator closed or cancelled) closes the response.
        request = self._client.text_to_speech.with_raw_response.stream(
            settings.voice_id,
            text=text,
            model_id=settings.model_id,
            output_format=settings.output_format,
            optimize_streaming_latency=settings.optimize_streaming_latency,
            voice_settings=self._sdk_voice_settings(),
            request_options={"max_retries": 0},
        )
        try:
            async with request as response:
                async for piece in response.data:
                    pcm = decoder.feed(piece)
                    if pcm.size:
                        yield SpeechChunk(pcm, self.sample_rate, self.voice, provider=PROVIDER)
        except (ApiError, ParsingError, httpx.HTTPError, OSError) as exc:
            raise _http_error(exc) from None

    def open_stream(self) -> ElevenLabsInputStream:
        """Start an utterance over the input-streaming WebSocket (needs a running loop).

        The connection opens at once, in the background, so its handshake
        overlaps the LLM's first tokens.
        """
        self._check_open()
        stream = ElevenLabsInputStream(self.settings, on_done=self._streams.discard)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        """Abort open input streams and close the HTTP connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        streams = list(self._streams)
        self._streams.clear()
        for stream in streams:
            await stream.aclose()
        await self._http.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderError(PROVIDER, "the TTS is closed")

    def _sdk_voice_settings(self) -> VoiceSettings | None:
        if self.settings.voice_settings is None:
            return None
        from elevenlabs.types import VoiceSettings

        values = self.settings.voice_settings.to_json()
        return VoiceSettings(**values) if values else None


class ElevenLabsInputStream:
    """One utterance over ``stream-input``; implements ``agent.tts.TTSInputStream``.

    Made by ``ElevenLabsTTS.open_stream()`` (in a running event loop).

    One reader task, owned by the stream, connects, sends the opening message
    and turns the service's messages into ``SpeechChunk``s on a bounded queue
    (``CHUNK_QUEUE``; the socket, then the service, wait past it). Text is sent
    a word at a time: ElevenLabs wants every piece to end with a space, so a
    partial word waits in ``push`` until the space after it (or ``end()``).

    Once ``end()`` sent the end of the text, each message must come within
    ``timeout_s`` (``ProviderTimeoutError`` otherwise). ``aclose()`` drops
    pending audio, ends iteration at once and closes the socket; ``push`` and
    ``end`` do nothing after it.
    """

    def __init__(
        self,
        settings: ElevenLabsSettings,
        *,
        on_done: Callable[[ElevenLabsInputStream], None] | None = None,
    ) -> None:
        self._settings = settings
        self._voice = f"elevenlabs:{settings.voice_id}"
        self._sample_rate = settings.sample_rate
        self._queue: asyncio.Queue[SpeechChunk | ProviderError | None] = asyncio.Queue(CHUNK_QUEUE)
        self._ready = asyncio.Event()
        self._reader_done = asyncio.Event()
        self._socket: ClientConnection | None = None
        self._failure: ProviderError | None = None
        self._deadline: asyncio.Timeout | None = None
        self._awaiting_service = False
        self._pending = ""
        self._ended = False
        self._closed = False
        self._finished = False
        self._task = asyncio.create_task(self._run(), name="elevenlabs-tts-stream")
        if on_done is not None:
            self._task.add_done_callback(lambda _: on_done(self))

    # -- producer side

    async def push(self, text: str) -> None:
        """Add text; whole words are sent at once, a partial word waits for its end."""
        if self._closed:
            return
        if self._ended:
            raise RuntimeError("push() after end()")
        self._pending += text
        cut = _last_space(self._pending)
        if cut < 0:
            return
        piece, self._pending = self._pending[: cut + 1], self._pending[cut + 1 :]
        await self._send_text(piece)

    async def end(self) -> None:
        """Send what is pending and the end of the text; idempotent."""
        if self._closed or self._ended:
            return
        self._ended = True
        rest, self._pending = self._pending, ""
        await self._send_text(rest)
        await self._send({"text": ""})
        if self._deadline is not None and self._awaiting_service:
            self._deadline.reschedule(asyncio.get_running_loop().time() + self._settings.timeout_s)

    # -- consumer side

    def __aiter__(self) -> ElevenLabsInputStream:
        return self

    async def __anext__(self) -> SpeechChunk:
        """The next chunk of audio; raises the stream's ``ProviderError`` if it failed."""
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, SpeechChunk):
            return item
        self._finished = True
        if item is None:
            raise StopAsyncIteration
        raise item

    async def aclose(self) -> None:
        """Abandon the utterance: end iteration now and close the socket; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        # Drop what was not played and wake a consumer waiting on the queue. The
        # reader is cancelled before it can run again, so nothing follows the end.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        self._ready.set()
        await asyncio.wait([self._task])

    # -- the reader task

    async def _run(self) -> None:
        result: ProviderError | None = None
        try:
            await self._converse()
        except ProviderError as exc:
            result = exc
        except Exception as exc:  # a bug here must still end the consumer's iteration
            _log.warning("elevenlabs input stream failed: %s", type(exc).__name__)
            result = ProviderError(PROVIDER, f"stream failed ({type(exc).__name__})")
            result.__cause__ = exc
        if result is not None:
            self._failure = result
        self._ready.set()
        self._reader_done.set()
        await self._queue.put(result)

    async def _converse(self) -> None:
        settings = self._settings
        try:
            socket = await connect(
                self._url(),
                additional_headers={"xi-api-key": settings.api_key},
                open_timeout=settings.timeout_s,
                close_timeout=_CLOSE_TIMEOUT_S,
                max_size=_MAX_MESSAGE_BYTES,
                compression=None,  # base64 PCM gains little from deflate: spare the CPU
                logger=_ws_log,
            )
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            raise _ws_error(exc) from None
        try:
            self._socket = socket
            opening: dict[str, Any] = {
                "text": " ",
                "generation_config": {
                    "chunk_length_schedule": list(settings.chunk_length_schedule)
                },
            }
            voice_settings = settings.voice_settings.to_json() if settings.voice_settings else {}
            if voice_settings:
                opening["voice_settings"] = voice_settings
            # A refusal comes as an error message, then a close: if the close beat
            # our opening message, the reader still reads (and translates) the reason.
            with contextlib.suppress(ConnectionClosed):
                await socket.send(json.dumps(opening))
            self._ready.set()
            await self._read(socket)
        finally:
            await socket.close()

    async def _read(self, socket: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        decoder = _Int16Decoder()
        timeout_s = self._settings.timeout_s
        try:
            async with asyncio.timeout(None) as deadline:
                self._deadline = deadline
                while True:
                    # Only time the service: the deadline runs while we wait on the
                    # socket after the end of the text, never while a slow consumer
                    # keeps the queue full.
                    if self._ended:
                        deadline.reschedule(loop.time() + timeout_s)
                    self._awaiting_service = True
                    try:
                        raw = await socket.recv()
                    except ConnectionClosedOK:
                        break
                    finally:
                        self._awaiting_service = False
                    deadline.reschedule(None)
                    message = _parse(raw)
                    chunk = self._chunk(message, decoder)
                    if chunk is not None:
                        await self._queue.put(chunk)
                    if message.get("isFinal"):
                        return
        except TimeoutError:
            raise ProviderTimeoutError(
                PROVIDER, f"no audio within {timeout_s:g} s of the end of the text"
            ) from None
        except ConnectionClosed as exc:
            raise _closed_error(exc) from None
        finally:
            self._deadline = None
        if not self._ended:
            raise ProviderError(
                PROVIDER, "connection closed before the end of the text", retryable=True
            )

    def _chunk(self, message: Mapping[str, Any], decoder: _Int16Decoder) -> SpeechChunk | None:
        """The audio of a server message (``None`` for a message without audio)."""
        if "audio" not in message and ("error" in message or "message" in message):
            raise _message_error(message)
        audio = message.get("audio")
        if not audio:
            return None
        if not isinstance(audio, str):
            raise ProviderError(PROVIDER, "malformed audio message", retryable=True)
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(PROVIDER, "malformed audio message", retryable=True) from None
        pcm = decoder.feed(data)
        text = _aligned_text(message)
        if not pcm.size and not text:
            return None
        return SpeechChunk(pcm, self._sample_rate, self._voice, provider=PROVIDER, text=text)

    async def _send_text(self, piece: str) -> None:
        stripped = piece.strip()
        if stripped:
            await self._send({"text": f"{stripped} "})

    async def _send(self, message: Mapping[str, Any]) -> None:
        await self._ready.wait()
        if self._closed:
            return
        if self._failure is not None:
            raise self._failure
        socket = self._socket
        if socket is None:  # pragma: no cover - ready without a socket implies a failure
            raise ProviderError(PROVIDER, "not connected", retryable=True)
        try:
            await socket.send(json.dumps(message))
        except ConnectionClosed as exc:
            # The service's error message came before its close frame: let the
            # reader translate it, so push() raises what iteration raises.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader_done.wait(), _CLOSE_TIMEOUT_S)
            if self._failure is not None:
                raise self._failure from None
            raise _closed_error(exc) from None

    def _url(self) -> str:
        settings = self._settings
        base = urlsplit(settings.base_url.rstrip("/"))
        scheme = "wss" if base.scheme == "https" else "ws"
        query: dict[str, str] = {
            "model_id": settings.model_id,
            "output_format": settings.output_format,
            "sync_alignment": "true",  # alignment with every audio chunk, not only the first
        }
        if settings.optimize_streaming_latency is not None:
            query["optimize_streaming_latency"] = str(settings.optimize_streaming_latency)
        path = f"{base.path}/v1/text-to-speech/{quote(settings.voice_id, safe='')}/stream-input"
        return urlunsplit((scheme, base.netloc, path, urlencode(query), ""))


def _last_space(text: str) -> int:
    """Index of the last whitespace character of ``text`` (-1 when there is none)."""
    for index in range(len(text) - 1, -1, -1):
        if text[index].isspace():
            return index
    return -1


def _parse(raw: str | bytes) -> Mapping[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        raise ProviderError(PROVIDER, "malformed message from the server", retryable=True) from None
    if not isinstance(message, dict):
        raise ProviderError(PROVIDER, "malformed message from the server", retryable=True)
    return message


def _aligned_text(message: Mapping[str, Any]) -> str | None:
    """The characters an audio message speaks: its ``alignment`` (the text as sent),
    else its ``normalizedAlignment``; ``None`` when it carries neither."""
    for key in ("alignment", "normalizedAlignment"):
        alignment = message.get(key)
        if isinstance(alignment, Mapping):
            chars = alignment.get("chars")
            if isinstance(chars, list):
                return "".join(c for c in chars if isinstance(c, str))
    return None
