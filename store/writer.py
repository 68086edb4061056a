"""Background writer: durable writes off the audio path, retried while the database is down.

``submit`` never blocks and never raises: calls go on whatever the database
does. Operations are applied in order by one worker task. An operation that
fails for a transient reason (the connection was lost or refused, the
database is restarting, busy or out of connections, a deadlock; see
``is_transient``) is retried with exponential backoff at the head of the
queue, so order is kept, until the database answers again. One that fails
for any other reason (a constraint it violates, a value the column cannot
hold, a bug) is tried once more, since unique-key races resolve on a retry,
then parked: kept in a bounded list (``parked_ops``, oldest forgotten
first), logged with its type, session id and error class but never its
text, counted in ``parked``, and the queue goes on.

The queue is bounded (``max_pending``); past the bound new operations are
refused and counted in ``dropped`` (with an error log), which at the default
bound means hours of turns of a busy server with the database down. Nothing
queued is lost while the process lives; ``close()`` drains what it can
within its time-out.

A second lane keeps the latest chat context of each session for the hot
tier, coalesced per session, so a slow database never delays it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc

from store.repositories import SessionRepository, TurnRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """Create the session row if missing; record the transport of its new call."""

    session_id: str
    transport: str
    attributes: Mapping[str, str] | None = None
    """What the transport knows of the call (SIP: From URI, Call-ID); no secrets."""
    key_id: str | None = None
    """The API key that created the session (None: anonymous)."""


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """Mark a session ended, with the reason its call ended."""

    session_id: str
    status: str = "ended"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class InteractionLogged:
    """What the agent made of one user input."""

    session_id: str
    user_input: str
    raw_llm_output: str
    final_action: str


@dataclass(frozen=True, slots=True)
class SessionErrored:
    """Count a failed stage of a session."""

    session_id: str


WriteOp = TurnRecord | SessionStarted | SessionEnded | SessionErrored | InteractionLogged

ContextSaver = Callable[[str, list[dict[str, Any]]], Awaitable[None]]

_TRANSIENT_SQLSTATES = (
    "08",  # connection exception
    "53",  # insufficient resources (too many connections, disk full, out of memory)
    "57P",  # operator intervention: admin/crash shutdown, cannot connect now
    "57014",  # query cancelled (statement timeout)
    "40001",  # serialization failure
    "40P01",  # deadlock detected
    "55P03",  # lock not available
)
_TRANSIENT_SQLITE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (PostgreSQL drivers), if it has one."""
    orig = getattr(exc, "orig", None)
    for source in (orig, exc):
        code = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
        if isinstance(code, str) and code:
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed unchanged later (retry) or never will (park)."""
    if isinstance(exc, OSError | TimeoutError):  # ConnectionError is an OSError
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        state = sqlstate(exc)
        if state is not None:  # PostgreSQL says exactly what went wrong
            return state.startswith(_TRANSIENT_SQLSTATES)
        orig = exc.orig
        if isinstance(orig, OSError | TimeoutError):
            return True
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return (code & 0xFF) in _TRANSIENT_SQLITE_CODES  # extended codes keep the primary low
        if isinstance(
            exc,
            sa_exc.IntegrityError
            | sa_exc.DataError
            | sa_exc.ProgrammingError
            | sa_exc.NotSupportedError,
        ):
            return False
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError)


@dataclass(frozen=True, slots=True)
class ParkedWrite:
    """A write that failed for a reason a retry cannot fix, kept for inspection."""

    op: WriteOp
    error: str
    """Class name of the error (its message may quote the row's text)."""
    sqlstate: str | None
    parked_at: float
    """``time.time()`` when it was parked."""


class TurnWriter:
    """Owns one worker task per lane; ``start()`` before use, ``close()`` at shutdown."""

    def __init__(
        self,
        repo: SessionRepository,
        save_context: ContextSaver,
        *,
        max_pending: int = 50_000,
        max_parked: int = 1000,
        retry_base_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        self._repo = repo
        self._save_context = save_context
        self.max_pending = max_pending
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._ops: deque[WriteOp] = deque()
        self._parked: deque[ParkedWrite] = deque(maxlen=max_parked)
        self._contexts: dict[str, list[dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._context_wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._contexts_done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.written = 0
        self.retries = 0
        self.dropped = 0
        self.parked = 0
        """Writes parked since start (``parked_ops`` keeps the latest ``max_parked``)."""

    @property
    def parked_ops(self) -> tuple[ParkedWrite, ...]:
        """The most recently parked writes, oldest first."""
        return tuple(self._parked)

    @property
    def pending(self) -> int:
        """Operations not yet applied."""
        return len(self._ops)

    def start(self) -> None:
        """Start the worker tasks."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._run_ops(), name="store-writer"),
                asyncio.create_task(self._run_contexts(), name="store-context-writer"),
            ]

    def submit(self, op: WriteOp) -> bool:
        """Queue a write; False (and an error log) only past ``max_pending``."""
        if len(self._ops) >= self.max_pending:
            self.dropped += 1
            log.error(
                "store writer queue full (%d): a %s was refused",
                self.max_pending,
                type(op).__name__,
            )
            return False
        self._ops.append(op)
        self._idle.clear()
        self._wake.set()
        return True

    def save_context(self, session_id: str, messages: list[dict[str, Any]]) -> None:
        """Keep the latest chat context of a session (coalesced)."""
        self._contexts[session_id] = messages
        self._context_wake.set()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued operation is applied; False on time-out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        if self._contexts:
            self._contexts_done.clear()
            try:
                await asyncio.wait_for(self._contexts_done.wait(), timeout_s)
            except TimeoutError:
                return False
        return True

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Drain (bounded by the time-out), then stop the workers."""
        if self._tasks:
            await self.flush(drain_timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._ops:
            log.error("store writer closed with %d writes not applied", len(self._ops))

    async def _run_ops(self) -> None:
        while True:
            if not self._ops:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            op = self._ops[0]
            if await self._apply_with_retries(op):
                self.written += 1
            self._ops.popleft()

    async def _apply_with_retries(self, op: WriteOp) -> bool:
        """Apply ``op``: True once written, False when parked. Transient failures retry
        without limit; others get one more try, then the op is parked."""
        delay = self._retry_base_s
        permanent_failures = 0
        while True:
            try:
                await self._apply(op)
                return True
            except Exception as exc:
                if is_transient(exc):
                    self.retries += 1
                    log.warning(
                        "store write failed (%s); retrying in %.1f s", type(exc).__name__, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max_s)
                    continue
                permanent_failures += 1
                if permanent_failures < 2:
                    continue
                self._park(op, exc)
                return False

    def _park(self, op: WriteOp, exc: Exception) -> None:
        state = sqlstate(exc)
        self._parked.append(ParkedWrite(op, type(exc).__name__, state, time.time()))
        self.parked += 1
        # Never the exception's message: drivers quote the row's values (the caller's words).
        log.error(
            "store write parked: a %s of session %s failed with %s%s and will not be retried",
            type(op).__name__,
            op.session_id,
            type(exc).__name__,
            f" (SQLSTATE {state})" if state else "",
        )

    async def _apply(self, op: WriteOp) -> None:
        if isinstance(op, TurnRecord):
            await self._repo.add_turn(op)
        elif isinstance(op, SessionStarted):
            await self._repo.create(
                op.session_id, op.transport, attributes=op.attributes, key_id=op.key_id
            )
            await self._repo.set_transport(op.session_id, op.transport)
        elif isinstance(op, SessionEnded):
            await self._repo.end(op.session_id, op.status, op.reason)
        elif isinstance(op, InteractionLogged):
            await self._repo.log_interaction(
                op.session_id, op.user_input, op.raw_llm_output, op.final_action
            )
        else:
            await self._repo.add_error(op.session_id)

    async def _run_contexts(self) -> None:
        while True:
            if not self._contexts:
                self._contexts_done.set()
                self._context_wake.clear()
                await self._context_wake.wait()
                continue
            session_id = next(iter(self._contexts))
            messages = self._contexts[session_id]
            try:
                await self._save_context(session_id, messages)
            except Exception:
                log.exception("saving a session context to the hot tier failed")
            if self._contexts.get(session_id) is messages:
                del self._contexts[session_id]
