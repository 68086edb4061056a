"""A Starlette app served by uvicorn on 127.0.0.1 inside the caller's event loop.

The vendor fakes that need no byte-level control (the music platforms) are
``LoopbackServer`` subclasses: they build ``self.app`` and are used as
``async with Fake() as fake:`` (an ephemeral port unless one is given).
No pytest dependency, so benchmarks use them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from types import TracebackType
from typing import Self

import uvicorn
from starlette.applications import Starlette


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
