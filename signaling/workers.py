"""Several server processes on one port: the supervisor of ``python -m signaling --workers N``.

One Python process tops out at about one core (its event loop and interpreter
lock carry every call's WebRTC, RTP and session work), so the server runs N
worker processes on one port. The supervisor binds one listening socket per
worker with ``SO_REUSEPORT`` before any worker starts, so the kernel spreads new
connections evenly over them by address hash (a shared accept queue would
hand most connections to whichever worker happens to be idle in ``accept``),
and a worker being restarted keeps its socket: connections wait in its backlog
instead of being refused. A call stays in the process that answered its offer
or WebSocket. What the workers must agree on is shared:

- the store (SQLite file in WAL mode or PostgreSQL) and its hot tier (Redis
  when ``REDIS_URL`` is set): sessions, turns, rooms, API keys;
- the token key (``PARLEY_JWT_SECRET`` or the key file in the data directory) and
  the platform-token encryption key (``PARLEY_TOKEN_KEY`` or its key file);
- the call ledger (``signaling.ledger``: a file for one machine, Redis for
  many): the server-wide call cap, per-key quotas, room listings, hang-ups;
- rate limits (in Redis when ``REDIS_URL`` is set; per worker otherwise).

Worker 0 also runs the SIP listener and the periodic jobs. The supervisor
prepares the shared state once (migrations, token key) before any worker
starts, restarts a worker that dies (at most ``MAX_RESTARTS`` a minute), and
on SIGTERM or SIGINT asks every worker to shut down gracefully (their calls
are ended with a reason), killing those still running after
``SHUTDOWN_GRACE_S``.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from signaling.settings import ServerSettings
from signaling.tokens import load_or_create_secret
from store.crypto import load_or_create_key
from store.settings import StoreSettings
from store.store import Store

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
"""Worker restarts allowed within a minute before the supervisor gives up."""
SHUTDOWN_GRACE_S = 30.0
"""How long workers get to end their calls and exit after SIGTERM."""
WS_MAX_SIZE = 1024 * 1024
"""Largest WebSocket message accepted (audio frames are a few KB)."""


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How to run uvicorn in each worker (picklable: it crosses into spawned processes)."""

    overrides: dict[str, Any]
    """``ServerSettings`` fields given on the command line (the rest come from the env)."""
    log_level: str = "info"
    log_config: dict[str, Any] | None = None
    """uvicorn's ``log_config`` (None: keep the logging configured by the caller)."""


def uvicorn_config(app: Any, settings: ServerSettings, options: ServeOptions) -> uvicorn.Config:
    """The uvicorn configuration of one worker (or of the single process)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=options.log_level,
        log_config=options.log_config,
        ws_max_size=WS_MAX_SIZE,
        # Client addresses (rate limits) come from the socket; X-Forwarded-For is
        # honoured only from PARLEY_TRUSTED_PROXIES, by the rate limiter itself.
        proxy_headers=False,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S) - 5,
    )


def prepare_shared_state(settings: ServerSettings, store_settings: StoreSettings) -> None:
    """What must exist once before several workers start: the schema and the token keys.

    Migrating here keeps N workers from racing to migrate the same database; the
    join-token key and the platform-token encryption key (``store.crypto``) are
    generated here, when the environment names none, so every worker reads the same.
    """
    if settings.jwt_secret is None:
        load_or_create_secret(store_settings.data_dir)
    if store_settings.token_key is None:
        load_or_create_key(store_settings.data_dir)

    async def migrate() -> None:
        store = await Store.open(store_settings)
        await store.close()

    asyncio.run(migrate())


def _worker_main(index: int, count: int, options: ServeOptions, sock: socket.socket) -> None:
    """Entry point of a spawned worker: build the app and serve on the shared socket."""
    from signaling.app import create_app  # imported here: the supervisor never loads models

    if options.log_config is not None:
        logging.config.dictConfig(options.log_config)
    else:
        logging.basicConfig(level=options.log_level.upper())
    settings = ServerSettings(**options.overrides, worker_index=index, worker_count=count)
    # The schema is already migrated by the supervisor: workers never race on it.
    store_settings = StoreSettings(PARLEY_AUTO_MIGRATE=False)
    app = create_app(settings, store_settings=store_settings)
    server = uvicorn.Server(uvicorn_config(app, settings, options))
    server.run(sockets=[sock])


@dataclass(slots=True)
class _Worker:
    index: int
    process: BaseProcess
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, settings: ServerSettings, count: int, options: ServeOptions) -> None:
        if count < 2:
            raise ValueError("a supervisor runs at least two workers")
        self.settings = settings
        self.count = count
        self.options = options
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._restarts: deque[float] = deque()
        self._stop = threading.Event()
        self._failed = False

    def _spawn(self, index: int, sock: socket.socket) -> None:
        process = self._ctx.Process(
            target=_worker_main,
            args=(index, self.count, self.options, sock),
            name=f"parley-worker-{index}",
        )
        process.start()
        self._workers[index] = _Worker(index, process)
        log.info("worker %d started (pid %s)", index, process.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop.set()

    def run(self, sockets: list[socket.socket]) -> int:
        """Run worker ``i`` on ``sockets[i]`` until a signal asks to stop; returns the exit code."""
        if len(sockets) != self.count:
            raise ValueError(f"{self.count} workers need {self.count} sockets")
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for index in range(self.count):
            self._spawn(index, sockets[index])
        try:
            while not self._stop.wait(0.5):
                self._reap(sockets)
        finally:
            self._shutdown()
        return 1 if self._failed else 0

    def _reap(self, sockets: list[socket.socket]) -> None:
        for worker in list(self._workers.values()):
            if worker.process.is_alive():
                continue
            code = worker.process.exitcode
            log.error("worker %d exited unexpectedly (code %s)", worker.index, code)
            now = time.monotonic()
            self._restarts.append(now)
            while self._restarts and now - self._restarts[0] > 60:
                self._restarts.popleft()
            if len(self._restarts) > MAX_RESTARTS:
                log.error("workers keep dying (%d restarts in a minute): stopping", MAX_RESTARTS)
                self._failed = True
                self._stop.set()
                return
            self._spawn(worker.index, sockets[worker.index])

    def _shutdown(self) -> None:
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                worker.process.join(5)
        log.info("all workers stopped")


def serve(settings: ServerSettings, options: ServeOptions) -> int:
    """Serve with ``settings.workers`` processes (default: one per core); returns the exit code."""
    count = settings.workers or default_workers()
    if count == 1:
        from signaling.app import create_app

        app = create_app(settings)
        uvicorn.Server(uvicorn_config(app, settings, options)).run()
        return 0
    prepare_shared_state(settings, StoreSettings())
    first = bind_reuse_port(settings.host, settings.port)
    port = first.getsockname()[1]  # the one a port of 0 was given
    sockets = [first, *(bind_reuse_port(settings.host, port) for _ in range(count - 1))]
    log.info("serving with %d workers on %s:%d", count, settings.host, port)
    try:
        return Supervisor(settings, count, options).run(sockets)
    finally:
        for sock in sockets:
            sock.close()


def bind_reuse_port(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` that other ``SO_REUSEPORT`` sockets share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock
