"""A Starlette app served by uvicorn on 127.0.0.1 inside the caller's event loop.

The vendor fakes that need no byte-level control (the music platforms) are
``LoopbackServer`` subclasses: they build ``self.app`` and are used as
``async with Fake() as fake:`` (an ephemeral port unless one is given).
No pytest dependency, so benchmarks use them too.

``VendorAPI`` is the plumbing the Web API fakes share: access tokens checked
on every request (``tokens``, or a ``token_check`` wired to a loopback OAuth
server), faults scripted per route (``fail(Fault(...))``), a latency added to
every answer, and the record of what arrived (``requests``). Each fake says
how its vendor names the token scheme and shapes an error (``error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, ClassVar, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class LoopbackServer:
    """Serves ``self.app`` on ``host:port`` for the life of an ``async with`` block."""

    def __init__(self, app: Starlette, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` once started."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return f"http://{self._host}:{self._port}"

    async def __aenter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._port = sock.getsockname()[1]
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
        self._task = asyncio.create_task(
            server.serve(sockets=[sock]), name=f"{type(self).__name__}:serve"
        )
        while not server.started:
            if self._task.done():
                sock.close()
                await self._task
                raise RuntimeError(f"{type(self).__name__} stopped while starting")
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
        try:
            await self._task
        finally:
            self._server = None
            self._task = None


@dataclass(frozen=True, slots=True)
class Fault:
    """Answer the next request whose path starts with ``path`` (any when empty) with
    ``status`` and the vendor's error object (``reason`` in it where the vendor has one,
    ``Retry-After`` when given), or with ``body`` as raw text instead (a 2xx that is not
    JSON: a proxy's page, a truncated answer)."""

    status: int
    path: str = ""
    retry_after: str | None = None
    reason: str | None = None
    body: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as it arrived, and the status it was answered with."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    token: str | None
    status: int


class VendorAPI(LoopbackServer, ABC):
    """A vendor Web API fake's shared plumbing (see the module docstring).

    A handler starts with ``refusal, body = await self.admit(request)``, returns the
    refusal when there is one, and passes its own answer through ``answer`` so the
    record holds the status sent.
    """

    auth_scheme: ClassVar[str] = "Bearer"
    """The ``Authorization`` scheme the vendor documents (compared case-insensitively)."""
    path_prefix: ClassVar[str] = ""
    """What ``recorded`` puts before a path (a versioned base URL's ``/v1``)."""

    def __init__(
        self,
        app: Starlette,
        *,
        tokens: Iterable[str],
        token_check: Callable[[str], bool] | None = None,
        latency_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.tokens = set(tokens)
        self.token_check = token_check or (lambda token: token in self.tokens)
        self.latency_s = latency_s
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        super().__init__(app, port=port)

    @abstractmethod
    def error(
        self, status: int, message: str, reason: str | None = None, **headers: str
    ) -> Response:
        """The vendor's error answer."""

    def unauthorized(self, token: str) -> Response:
        """The answer to a missing (``token`` empty) or refused token."""
        return self.error(401, "Unauthorized")

    def fail(self, *faults: Fault) -> None:
        """Answer the next matching requests with ``faults``, one each, in order."""
        self._faults.extend(faults)

    def recorded(self, method: str, path: str) -> list[RecordedRequest]:
        """Requests of ``method`` on ``path`` (after ``path_prefix``), in order."""
        full = self.path_prefix + path
        return [r for r in self.requests if r.method == method and r.path == full]

    async def admit(self, request: Request) -> tuple[Response | None, Any]:
        """Check the token and the scripted faults: the refusal, if any, and the JSON body
        (its text when it is not JSON)."""
        raw = await request.body()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == self.auth_scheme.lower() else ""
        refusal: Response | None = None
        if not token or not self.token_check(token):
            refusal = self.unauthorized(token)
        else:
            fault = next((f for f in self._faults if request.url.path.startswith(f.path)), None)
            if fault is not None:
                self._faults.remove(fault)
                refusal = self._fault_answer(fault)
        self.requests.append(
            RecordedRequest(
                request.method,
                request.url.path,
                dict(request.query_params),
                body,
                token or None,
                refusal.status_code if refusal is not None else 0,
            )
        )
        return refusal, body

    def answer(self, response: Response) -> Response:
        """``response``, with its status recorded on the request just admitted."""
        self.requests[-1] = replace(self.requests[-1], status=response.status_code)
        return response

    def _fault_answer(self, fault: Fault) -> Response:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        if fault.body is not None:
            return Response(fault.body, fault.status, headers, media_type="text/html")
        return self.error(fault.status, "scripted failure", fault.reason, **headers)
