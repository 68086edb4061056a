"""Correlation ids: one per HTTP request or WebSocket, one per call, carried in contextvars.

``RequestIdMiddleware`` (pure ASGI, so streaming responses and WebSockets
pass through untouched) gives every ``http`` and ``websocket`` scope a request
id: the client's ``X-Request-Id`` when it is sane (``REQUEST_ID_PATTERN``),
else a fresh one; it is returned in the ``X-Request-Id`` response header (on
the WebSocket handshake too) and set in ``request_id_var`` while the app
handles the request.

The call manager binds a call's ``CallContext`` (``call_scope``) while it
starts the call's session and creates the call's tasks, so every task of the
call inherits it (asyncio tasks copy the context they are created in). The
logging setup (``signaling.logs``) stamps both ids on every record, and the
tracing sink (``signaling.tracing``) reads the call's ids from here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
"""An incoming request id is kept only if it is 1-64 plain characters: never a
token, never a line break, never anything that needs escaping in a log line."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """The ids of the call whose work runs in the current context."""

    call_id: str
    session_id: str
    transport: str
    """The transport's kind (``"websocket"``, ``"webrtc"``, ``"sip"``...)."""


request_id_var: ContextVar[str | None] = ContextVar("parley_request_id", default=None)
"""The id of the HTTP request or WebSocket being handled (None outside one)."""
call_var: ContextVar[CallContext | None] = ContextVar("parley_call", default=None)
"""The call being served (None outside a call)."""


def current_request_id() -> str | None:
    """The request id of the current context, if any."""
    return request_id_var.get()


def current_call() -> CallContext | None:
    """The call of the current context, if any."""
    return call_var.get()


def new_request_id() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """``value`` if it is a sane request id (see ``REQUEST_ID_PATTERN``), else a new one."""
    if value is not None and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return new_request_id()


@contextmanager
def call_scope(call: CallContext) -> Iterator[CallContext]:
    """Bind ``call`` to the current context for the block (tasks created inside keep it)."""
    token = call_var.set(call)
    try:
        yield call
    finally:
        call_var.reset(token)


def bind_call(call: CallContext) -> None:
    """Bind ``call`` to the current context until it ends (no reset).

    For a request handler that admitted a call: the rest of the request (its
    access-log line, the transport objects it creates) carries the call's id;
    ``RequestIdMiddleware`` unbinds it when the request is over.
    """
    call_var.set(call)


class RequestIdMiddleware:
    """Sets ``request_id_var`` for each HTTP request and WebSocket, and echoes the id.

    Pure ASGI (no ``BaseHTTPMiddleware``): the request and response messages
    pass through unbuffered; only the response start (``http.response.start``,
    ``websocket.accept`` and a WebSocket's HTTP denial) gains the header.
    A call bound while handling the request (``bind_call``) is unbound with it.
    When the app raises, the ids stay bound so that the server's error line
    about the failure still carries them (the request's task ends right after).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = accept_request_id(incoming)
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = request_id_var.set(request_id)
        call_token = call_var.set(None)  # a call bound by the handler ends with the request
        await self.app(scope, receive, send_with_id)
        call_var.reset(call_token)
        request_id_var.reset(token)
