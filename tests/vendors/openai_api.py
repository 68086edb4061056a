"""A loopback server speaking the OpenAI HTTP API, as OpenAI and Groq serve it.

Endpoints, under ``/v1`` (where the ``openai`` SDK calls them) and
``/openai/v1`` (where the ``groq`` SDK does):

``POST .../chat/completions``
    The documented JSON body. With ``stream: true`` the answer is
    server-sent events, one ``chat.completion.chunk`` per ``data:`` line and
    ``data: [DONE]`` last: a first chunk with ``delta.role``, one chunk per
    word of the reply, tool calls in OpenAI's fragments (the first with
    ``id``, ``type`` and ``function.name``, then pieces of
    ``function.arguments``), a chunk with ``finish_reason``, and with
    ``stream_options.include_usage`` a last chunk with empty ``choices`` and
    ``usage`` (every other chunk then has ``usage: null``). Under
    ``/openai/v1`` chunks carry Groq's ``x_groq`` (its request id first, id
    and usage in the finishing chunk). Without ``stream`` one
    ``chat.completion`` object answers. ``max_completion_tokens`` /
    ``max_tokens`` cut the reply (``finish_reason: "length"``).
``POST .../audio/transcriptions``
    A multipart form (``file``, ``model``, ``language``, ``prompt``,
    ``response_format``, ``temperature``); the answer is ``json``
    (``text``), ``verbose_json`` (``task``, ``language``, ``duration``,
    ``text``, ``segments`` with ``avg_logprob`` and ``no_speech_prob``) or
    ``text``.

Every request needs ``Authorization: Bearer <api_key>``; others get 401 with
the vendor's error object, whose message repeats the key that was sent (as
OpenAI's does, masked), so tests can check that adapters never repeat it.
Error messages of scripted 400s quote the last user message likewise.

Behaviour is scripted per request: ``queue_chat(ChatReply(...))`` and
``queue_transcription(TranscriptionReply(...))`` queue answers used in order;
when the queue is empty, ``chat`` / ``transcription`` answer. Replies set
their text (or a function of the last user message), tool calls, first-token
latency and token rate; faults are ``HttpFault`` (an error status, e.g. 429
with ``Retry-After``), ``Hang`` (nothing more is sent until the client
leaves) and ``BreakStream`` (the stream stops after N chunks). ``requests``
records what arrived (decoded JSON or form); a record's ``disconnected``
event is set when the client left before its answer was complete.

HTTP/1.1 on asyncio streams, written here for exact control of every byte
and of the connection (a cut mid-body, a stall, a disconnect seen while the
server is idle): requests need ``Content-Length`` (the SDKs send it);
answers are ``Content-Length`` JSON or chunked event streams; connections
are kept alive. Pipelined requests are not supported (the SDKs never
pipeline): bytes arriving before an answer is complete count as the client
leaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

from media.errors import AudioFormatError
from media.wav import read_wav

GROQ_PREFIX = "/openai/v1"
OPENAI_PREFIX = "/v1"
CHAT = "chat/completions"
TRANSCRIPTIONS = "audio/transcriptions"
ARGUMENT_PIECE = 8
"""Characters of tool-call arguments per streamed fragment."""

_WORD = re.compile(r"\s*\S+\s*$|\s*\S+")
"""A word with the spaces before it (and, for the last, after it): the pieces join to the text."""
_LAST_CHUNK = b"0\r\n\r\n"
_SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("transfer-encoding", "chunked"),
)
_LANGUAGES = {"en": "english", "de": "german", "fr": "french", "es": "spanish"}


# ---------------------------------------------------------------- scripts


@dataclass(frozen=True, slots=True)
class ScriptedToolCall:
    """A tool call the scripted model makes; ``id`` defaults to ``call_<n>``."""

    name: str
    arguments: str = "{}"
    id: str | None = None


@dataclass(frozen=True, slots=True)
class HttpFault:
    """Answer with an error status and the vendor's error object.

    ``message`` and ``code`` default to what the vendor sends for the status.
    """

    status: int
    retry_after: str | None = None
    """``Retry-After`` header value (seconds, or an HTTP date)."""
    message: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Hang:
    """Send nothing more until the client leaves.

    ``after_headers``: a stream's status line and headers go out first (a
    stall before the first token); otherwise not even those.
    """

    after_headers: bool = True


@dataclass(frozen=True, slots=True)
class BreakStream:
    """Stop a stream after ``after_chunks`` chunks.

    The connection is cut mid-body; with ``clean`` the body is ended properly
    instead, but without ``finish_reason`` or ``[DONE]`` (a proxy cutting
    the reply short).
    """

    after_chunks: int
    clean: bool = False


Fault = HttpFault | Hang | BreakStream


@dataclass(frozen=True, slots=True)
class ChatReply:
    """How to answer one chat-completions request."""

    text: str | Callable[[str], str] = "Hello! How can I help you today?"
    """The reply, or a function of the last user message's text."""
    tool_calls: Sequence[ScriptedToolCall] = ()
    first_token_s: float = 0.0
    """Delay between the response headers and the first chunk."""
    tokens_per_s: float | None = None
    """Pace of the following chunks; ``None``: all at once."""
    prompt_tokens: int | None = None
    """Reported prompt size; ``None``: the words of the request's messages."""
    report_usage: bool = True
    """``False``: no usage at all (a server that ignores ``stream_options``)."""
    fault: Fault | None = None


@dataclass(frozen=True, slots=True)
class Segment:
    """One ``verbose_json`` segment of a transcription."""

    text: str
    avg_logprob: float = -0.1
    no_speech_prob: float = 0.01


@dataclass(frozen=True, slots=True)
class TranscriptionReply:
    """How to answer one transcription request."""

    segments: Sequence[Segment] = (Segment(" Hello there."),)
    latency_s: float = 0.0
    fault: HttpFault | Hang | None = None

    @classmethod
    def of(
        cls, text: str, *, avg_logprob: float = -0.1, latency_s: float = 0.0
    ) -> TranscriptionReply:
        """One segment of ``text``."""
        return cls((Segment(f" {text}", avg_logprob),), latency_s)

    @property
    def text(self) -> str:
        """The whole transcript, as ``text`` reports it."""
        return "".join(s.text for s in self.segments).strip()


@dataclass(slots=True)
class RecordedRequest:
    """A request the server got, and what became of its answer."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    """The decoded JSON body (chat completions)."""
    form: dict[str, str] = field(default_factory=dict)
    """Form fields (transcriptions)."""
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    """Uploaded files by field: (file name, content)."""
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client left (or the server stopped) before the answer was complete."""
    completed: bool = False
    """The whole answer was sent."""

    @property
    def endpoint(self) -> str:
        """The path below the API prefix (``chat/completions``)."""
        for prefix in (GROQ_PREFIX, OPENAI_PREFIX):
            if self.path.startswith(prefix + "/"):
                return self.path[len(prefix) + 1 :]
        return self.path

    @property
    def groq(self) -> bool:
        """Whether the request came the way the Groq SDK sends it."""
        return self.path.startswith(GROQ_PREFIX + "/")


# ----------------------------------------------------------------- server


class OpenAIAPIServer:
    """The OpenAI / Groq API on ``127.0.0.1`` and a free port (see the module doc).

    Use as ``async with OpenAIAPIServer(api_key) as server:``; point the
    ``openai`` SDK at ``server.openai_base_url`` and the ``groq`` SDK at
    ``server.groq_base_url``.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        chat: ChatReply | None = None,
        transcription: TranscriptionReply | None = None,
    ) -> None:
        self.api_key = api_key
        self.chat = chat or ChatReply()
        """The answer when no queued one is left."""
        self.transcription = transcription or TranscriptionReply()
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._chat_queue: deque[ChatReply] = deque()
        self._transcription_queue: deque[TranscriptionReply] = deque()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._ids = itertools.count(1)
        self._arrivals = asyncio.Condition()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``base_url`` for the ``openai`` SDK."""
        return self.url + OPENAI_PREFIX

    @property
    def groq_base_url(self) -> str:
        """``base_url`` for the ``groq`` SDK (it adds ``/openai/v1`` itself)."""
        return self.url

    def queue_chat(self, *replies: ChatReply) -> None:
        """Answer the next chat requests with ``replies``, in order."""
        self._chat_queue.extend(replies)

    def queue_transcription(self, *replies: TranscriptionReply) -> None:
        """Answer the next transcription requests with ``replies``, in order."""
        self._transcription_queue.extend(replies)

    def recorded(self, endpoint: str) -> list[RecordedRequest]:
        """The requests to ``endpoint`` (``CHAT`` or ``TRANSCRIPTIONS``), oldest first."""
        return [r for r in self.requests if r.endpoint == endpoint]

    async def wait_for_requests(self, endpoint: str, count: int = 1) -> list[RecordedRequest]:
        """Wait until ``count`` requests to ``endpoint`` have arrived; returns them all."""
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: len(self.recorded(endpoint)) >= count)
        return self.recorded(endpoint)

    async def start(self) -> None:
        """Listen on a free loopback port."""
        if self._server is not None:
            raise RuntimeError("the server is already running")
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection (hung answers included); idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        # A dropped connection ends its handler: a pending read sees the end of
        # the stream, a hung answer sees the client "leave".
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections))
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------ connection

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            while await self._answer_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left between requests or mid-request
        except _BadRequestError as exc:
            with contextlib.suppress(ConnectionError):
                writer.write(_invalid(str(exc), exc.status))
                await writer.drain()
        finally:
            if task is not None:
                del self._connections[task]
            writer.close()  # after what is buffered: a stream cut mid-body keeps its chunks

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request; False when the connection is done."""
        request = await _read_request(reader)
        if request is None:
            return False
        self.requests.append(request)
        async with self._arrivals:
            self._arrivals.notify_all()
        exchange = _Exchange(reader, writer, request)
        try:
            await self._route(request, exchange)
        finally:
            await exchange.finish()
        return exchange.keep_alive

    async def _route(self, request: RecordedRequest, exchange: _Exchange) -> None:
        endpoint = request.endpoint
        if request.method != "POST" or endpoint not in (CHAT, TRANSCRIPTIONS):
            message = f"Unknown request URL: {request.method} {request.path}."
            await exchange.answer(
                _error_answer(404, message, "invalid_request_error", "unknown_url")
            )
            return
        authorization = request.headers.get("authorization", "")
        if authorization != f"Bearer {self.api_key}":
            await exchange.answer(_fault_answer(HttpFault(401), authorization, "", ""))
            return
        if endpoint == CHAT:
            await self._chat(request, exchange)
        else:
            await self._transcribe(request, exchange)

    # ------------------------------------------------------------------ chat

    async def _chat(self, request: RecordedRequest, exchange: _Exchange) -> None:
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            await exchange.answer(_invalid("'messages' is a required property"))
            return
        request.json = body
        reply = self._chat_queue.popleft() if self._chat_queue else self.chat
        plan = _ChatPlan.build(reply, body, next(self._ids), request.groq)
        fault = reply.fault
        streaming = bool(body.get("stream"))
        if isinstance(fault, HttpFault):
            answer = _fault_answer(
                fault, request.headers.get("authorization", ""), plan.last_user, plan.model
            )
            await exchange.answer(answer, plan.request_id)
        elif isinstance(fault, Hang) and not (fault.after_headers and streaming):
            await exchange.idle(None)
        elif streaming:
            await self._stream_chat(plan, reply, exchange)
        else:
            interval = 1.0 / reply.tokens_per_s if reply.tokens_per_s else 0.0
            if await exchange.idle(reply.first_token_s + interval * len(plan.pieces)):
                await exchange.answer(_json_answer(200, plan.completion()), plan.request_id)

    async def _stream_chat(self, plan: _ChatPlan, reply: ChatReply, exchange: _Exchange) -> None:
        head = _head(200, (*_SSE_HEADERS, ("x-request-id", plan.request_id)))
        if not await exchange.send(head):
            return
        fault = reply.fault
        if isinstance(fault, Hang):
            await exchange.idle(None)
            return
        for n, (delay, chunk) in enumerate(plan.chunks(reply)):
            if isinstance(fault, BreakStream) and n >= fault.after_chunks:
                if fault.clean:
                    await exchange.send(_LAST_CHUNK)
                else:
                    exchange.keep_alive = False  # the connection closes mid-body
                return
            if not await exchange.idle(delay):
                return
            if not await exchange.send(_sse(json.dumps(chunk))):
                return
        if await exchange.send(_sse("[DONE]") + _LAST_CHUNK):
            exchange.complete()

    # -------------------------------------------------------- transcriptions

    async def _transcribe(self, request: RecordedRequest, exchange: _Exchange) -> None:
        try:
            request.form, request.files = _parse_form(
                request.headers.get("content-type", ""), request.body
            )
        except ValueError:
            await exchange.answer(_invalid("request must be multipart/form-data"))
            return
        reply = (
            self._transcription_queue.popleft() if self._transcription_queue else self.transcription
        )
        request_id = f"req_loopback_{next(self._ids)}"
        upload = request.files.get("file")
        if isinstance(reply.fault, HttpFault):
            answer = _fault_answer(
                reply.fault,
                request.headers.get("authorization", ""),
                "",
                request.form.get("model", ""),
            )
            await exchange.answer(answer, request_id)
            return
        if isinstance(reply.fault, Hang):
            await exchange.idle(None)
            return
        if upload is None or not request.form.get("model"):
            await exchange.answer(_invalid("file and model are required"), request_id)
            return
        try:
            audio = read_wav(upload[1])
        except AudioFormatError:
            message = "could not process file - is it a valid media file?"
            await exchange.answer(_invalid(message), request_id)
            return
        if not await exchange.idle(reply.latency_s):
            return
        duration = audio.samples_per_channel / audio.sample_rate
        answer = _transcription_answer(reply, request.form, duration, request_id, request.groq)
        await exchange.answer(answer, request_id)


# ----------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class _ChatPlan:
    """Everything one chat answer says, derived from the script and the request."""

    request_id: str
    completion_id: str
    created: int
    model: str
    last_user: str
    pieces: tuple[str, ...]
    calls: tuple[ScriptedToolCall, ...]
    finish_reason: str
    usage: dict[str, int] | None
    include_usage: bool
    groq: bool

    @classmethod
    def build(cls, reply: ChatReply, body: dict[str, Any], n: int, groq: bool) -> _ChatPlan:
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
        last_user = users[-1] if users else ""
        text = reply.text(last_user) if callable(reply.text) else reply.text
        pieces: list[str] = _WORD.findall(text)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        truncated = isinstance(limit, int) and len(pieces) > limit
        if truncated:
            pieces = pieces[:limit]
        calls = tuple(
            ScriptedToolCall(c.name, c.arguments, c.id or f"call_{i}")
            for i, c in enumerate(reply.tool_calls)
        )
        finish = "tool_calls" if calls else "length" if truncated else "stop"
        usage: dict[str, int] | None = None
        if reply.report_usage:
            prompt = reply.prompt_tokens
            if prompt is None:
                prompt = sum(len(str(m.get("content") or "").split()) + 4 for m in messages)
            fragments = sum(1 + len(_pieces(c.arguments)) for c in calls)
            completion = len(pieces) + fragments
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        options = body.get("stream_options")
        return cls(
            request_id=f"req_loopback_{n}",
            completion_id=f"chatcmpl-loopback-{n}",
            created=int(time.time()),
            model=str(body.get("model", "")),
            last_user=last_user,
            pieces=tuple(pieces),
            calls=calls,
            finish_reason=finish,
            usage=usage,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            groq=groq,
        )

    def chunks(self, reply: ChatReply) -> list[tuple[float, dict[str, Any]]]:
        """The stream's chunks, each with the delay before it."""
        interval = 1.0 / reply.tokens_per_s if reply.tokens_per_s else 0.0
        deltas: list[dict[str, Any]] = [{"content": piece} for piece in self.pieces]
        for index, call in enumerate(self.calls):
            head = {"index": index, "id": call.id, "type": "function"}
            deltas.append(
                {"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]}
            )
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in _pieces(call.arguments)
            ]
        start = self._chunk({"role": "assistant", "content": ""}, x_groq={"id": self.request_id})
        out = [(reply.first_token_s, start)]
        out += [(interval if i else 0.0, self._chunk(d)) for i, d in enumerate(deltas)]
        end = {"id": self.request_id, **({"usage": self.usage} if self.usage else {})}
        out.append((0.0, self._chunk({}, self.finish_reason, x_groq=end)))
        if self.include_usage and self.usage is not None:
            out.append((0.0, {**self._chunk(None), "usage": self.usage}))
        return out

    def _chunk(
        self,
        delta: dict[str, Any] | None,
        finish_reason: str | None = None,
        x_groq: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A ``chat.completion.chunk``; ``delta=None``: the one without choices.

        ``x_groq`` goes out only on Groq's path.
        """
        choices = (
            []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_loopback",
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        if self.groq and x_groq is not None:
            chunk["x_groq"] = x_groq
        return chunk

    def completion(self) -> dict[str, Any]:
        """The non-streamed ``chat.completion`` object."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.pieces) or None,
            "refusal": None,
        }
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.calls
            ]
        answer: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_loopback",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
        }
        if self.usage is not None:
            answer["usage"] = self.usage
        if self.groq:
            answer["x_groq"] = {"id": self.request_id}
        return answer


def _transcription_answer(
    reply: TranscriptionReply, form: dict[str, str], duration: float, request_id: str, groq: bool
) -> bytes:
    response_format = form.get("response_format", "json")
    if response_format == "text":
        body = reply.text.encode()
        headers = (
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(body))),
        )
        return _head(200, headers) + body
    payload: dict[str, Any] = {"text": reply.text}
    if response_format == "verbose_json":
        span = duration / max(len(reply.segments), 1)
        temperature = float(form.get("temperature") or 0.0)
        segments = []
        for i, s in enumerate(reply.segments):
            tokens = [50364 + j for j in range(len(s.text.split()) + 1)]
            segments.append(
                {
                    "id": i,
                    "seek": 0,
                    "start": round(i * span, 2),
                    "end": round((i + 1) * span, 2),
                    "text": s.text,
                    "tokens": tokens,
                    "temperature": temperature,
                    "avg_logprob": s.avg_logprob,
                    "compression_ratio": 1.2,
                    "no_speech_prob": s.no_speech_prob,
                }
            )
        language = form.get("language", "en")
        payload = {
            "task": "transcribe",
            "language": _LANGUAGES.get(language, language),
            "duration": round(duration, 3),
            "text": reply.text,
            "segments": segments,
        }
    if groq:
        payload["x_groq"] = {"id": request_id}
    return _json_answer(200, payload)


def _fault_answer(fault: HttpFault, authorization: str, last_user: str, model: str) -> bytes:
    """The vendor's answer for ``fault``.

    Its message may quote the key or the prompt, as vendors' messages do.
    """
    status = fault.status
    kind, code, message = "api_error", fault.code, fault.message
    if status == 401:
        sent = authorization.removeprefix("Bearer ")
        kind, code = "invalid_request_error", code or "invalid_api_key"
        message = message or f"Incorrect API key provided: {sent}."
    elif status == 429:
        wait = f" Please try again in {fault.retry_after}s." if fault.retry_after else ""
        kind, code = "tokens", code or "rate_limit_exceeded"
        message = message or f"Rate limit reached for model `{model}`.{wait}"
    elif status == 404:
        kind, code = "invalid_request_error", code or "model_not_found"
        message = message or f"The model `{model}` does not exist or you do not have access to it."
    elif 400 <= status < 500:
        kind = "invalid_request_error"
        message = message or f"Invalid request near: {last_user!r}."
    else:
        message = message or "The server had an error while processing your request."
    headers = (("retry-after", fault.retry_after),) if fault.retry_after is not None else ()
    return _error_answer(status, message, kind, code, headers)


def _invalid(message: str, status: int = 400) -> bytes:
    """An ``invalid_request_error`` answer."""
    return _error_answer(status, message, "invalid_request_error", None)


def _error_answer(
    status: int,
    message: str,
    kind: str,
    code: str | None,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return _json_answer(status, payload, headers)


def _json_answer(
    status: int, payload: dict[str, Any], headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    body = json.dumps(payload).encode()
    base = (("content-type", "application/json"), ("content-length", str(len(body))))
    return _head(status, (*base, *headers)) + body


def _head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _sse(data: str) -> bytes:
    """One server-sent event as one HTTP chunk."""
    event = f"data: {data}\n\n".encode()
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def _pieces(text: str) -> list[str]:
    return [text[i : i + ARGUMENT_PIECE] for i in range(0, len(text), ARGUMENT_PIECE)]


# -------------------------------------------------------------------- HTTP


class _BadRequestError(Exception):
    """A request the server cannot read; answered, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    """The next request on the connection, or ``None`` when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequestError(400, "truncated request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequestError(431, "request head too large") from None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _BadRequestError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequestError(400, "malformed header")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequestError(411, "chunked request bodies are not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadRequestError(400, "malformed content-length") from None
    body = await reader.readexactly(length)
    return RecordedRequest(parts[0], parts[1].split("?", 1)[0], headers, body)


def _parse_form(
    content_type: str, body: bytes
) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """Fields and files of a ``multipart/form-data`` body; ``ValueError`` for anything else."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError("not a multipart form")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError("not a multipart form")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.walk():
        if part.is_multipart():
            continue
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            raise ValueError("a form part without a name")
        filename = part.get_filename()
        if filename is None:
            fields[name] = payload.decode()
        else:
            files[name] = (filename, payload)
    return fields, files


class _Exchange:
    """The answer to one request: writes it, and watches for the client leaving meanwhile."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RecordedRequest
    ) -> None:
        self._writer = writer
        self._request = request
        # Completes at EOF: the client closed the connection (or, unsupported, pipelined).
        self._gone: asyncio.Task[bytes] = asyncio.ensure_future(reader.read(1))
        self.keep_alive = True

    async def idle(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (``None``: until the client leaves); False when it left first."""
        if seconds is None or seconds > 0:
            await asyncio.wait({self._gone}, timeout=seconds)
        if self._gone.done():
            self._lost()
            return False
        return True

    async def send(self, data: bytes) -> bool:
        """Write ``data``; False when the client has left."""
        if self._gone.done():
            self._lost()
            return False
        try:
            self._writer.write(data)
            await self._writer.drain()
        except ConnectionError:
            self._lost()
            return False
        return True

    async def answer(self, response: bytes, request_id: str | None = None) -> None:
        """Send a whole response (adding ``x-request-id`` to its head)."""
        if request_id is not None:
            response = response.replace(
                b"\r\n\r\n", f"\r\nx-request-id: {request_id}\r\n\r\n".encode(), 1
            )
        if await self.send(response):
            self.complete()

    def complete(self) -> None:
        """The answer went out whole."""
        self._request.completed = True

    def _lost(self) -> None:
        self._request.disconnected.set()
        self.keep_alive = False

    async def finish(self) -> None:
        """Stop watching; the connection stays open only if the client is still there."""
        if self._gone.done():
            self.keep_alive = False
        else:
            self._gone.cancel()
            await asyncio.wait({self._gone})
