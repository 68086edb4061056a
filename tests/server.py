"""A real server on a loopback port, run by uvicorn in a background thread, for tests."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from agent.runtime import AgentModels
from signaling.app import create_app
from signaling.settings import ServerSettings
from signaling.state import AppState
from store.settings import StoreSettings

TEST_SECRET = "test-secret-0123456789abcdef-0123456789"


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_server(
    models: AgentModels,
    store: StoreSettings | None = None,
    *,
    close_models: bool = False,
    log_config: dict[str, Any] | None = None,
    log_level: str = "warning",
    **settings: object,
) -> Iterator[str]:
    """Serve the app with shared ``models``; yields its base URL.

    ``log_config`` and ``log_level`` go to uvicorn (default: uvicorn's own
    logging set-up, at ``warning``); the log config applies to the whole process.

    The store defaults to a fresh embedded one (SQLite in a temp directory).
    With ``close_models`` the models are closed on the server's event loop when
    it stops: cloud providers' connections belong to the loop that used them.
    """
    port = free_port()
    cfg = ServerSettings(host="127.0.0.1", port=port, jwt_secret=TEST_SECRET, **settings)  # type: ignore[arg-type]
    tmp = None
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="parley-store-")
        store = StoreSettings(PARLEY_DATA_DIR=Path(tmp.name), DATABASE_URL=None, REDIS_URL=None)
    app = create_app(cfg, models=models, store_settings=store)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level=log_level,
            log_config=LOGGING_CONFIG if log_config is None else log_config,
            lifespan="on",
        )
    )

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            if close_models:
                await models.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if tmp is not None:
            tmp.cleanup()


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling ``app`` in process (no socket)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://parley.test") as c:
        yield c


def app_state(app: FastAPI) -> AppState:
    """The running app's state (call manager, store, metrics)."""
    st: AppState = app.state.parley
    return st


def bearer(token: str) -> dict[str, str]:
    """An ``Authorization`` header for ``token``."""
    return {"Authorization": f"Bearer {token}"}
