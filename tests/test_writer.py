"""The turn writer retries transient failures and parks a write no retry can fix."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from signaling.metrics import ServerMetrics
from store.repositories import SessionRepository, TurnRecord
from store.store import Store
from store.writer import SessionEnded, TurnWriter, is_transient, sqlstate
from tests.backends import SERVER_BACKEND

SECRET_WORDS = "my card number is 4111 1111"


async def test_a_bad_row_is_parked_and_the_next_ones_are_written(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    w = store.writer
    await store.sessions.create("ses_p", "webrtc")
    caplog.set_level(logging.DEBUG, logger="store")
    w.submit(TurnRecord("ses_p", "t1", "user", "first words"))
    # NOT NULL violated on both backends (text is required), with words that must not leak
    bad = TurnRecord("ses_p", "t2", "user", None, heard_text=SECRET_WORDS)  # type: ignore[arg-type]
    w.submit(bad)
    w.submit(TurnRecord("ses_p", "t3", "user", "third words"))
    w.submit(SessionEnded("ses_p"))
    assert await w.flush(10)
    turns = await store.sessions.turns("ses_p")
    assert [t.text for t in turns] == ["first words", "third words"]
    row = await store.sessions.get("ses_p")
    assert row is not None and row.status == "ended"
    assert w.parked == 1 and w.written == 3 and w.pending == 0
    (parked,) = w.parked_ops
    assert parked.op is bad and parked.error == "IntegrityError"
    assert store.stats()["writes_parked"] == 1
    metrics = ServerMetrics()
    metrics.watch_store(store.stats)
    exposition = metrics.render().decode()
    assert "parley_store_writes_parked_total 1.0" in exposition
    assert "parley_store_writes_applied_total 3.0" in exposition
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("store"))
    assert "parked" in ours and "ses_p" in ours and "TurnRecord" in ours
    assert "4111" not in ours and "4111" not in caplog.text


async def test_a_value_the_column_cannot_hold_is_parked(store: Store, backend: str) -> None:
    w = store.writer
    # JSON that cannot be encoded fails in the driver layer on both backends
    w.submit(TurnRecord("ses_j", "t1", "user", "hi", latencies={"x": {1, 2}}))
    if backend == SERVER_BACKEND:  # PostgreSQL enforces varchar(16): a DataError, 22001
        w.submit(TurnRecord("ses_j", "t2", "x" * 40, "hi"))
    w.submit(TurnRecord("ses_j", "t3", "user", "still written"))
    assert await w.flush(10)
    assert [t.text for t in await store.sessions.turns("ses_j")] == ["still written"]
    errors = [(p.error, p.sqlstate) for p in w.parked_ops]
    assert errors[0][0] == "StatementError"
    if backend == SERVER_BACKEND:
        assert errors[1][1] == "22001"  # string data right truncation (asyncpg: a DBAPIError)
    assert w.parked == len(errors)


class RacingRepository(SessionRepository):
    """Fails its first ``add_turn`` with the unique-key error a concurrent writer causes."""

    def __init__(self, inner: SessionRepository) -> None:
        super().__init__(inner._sessions)
        self.failures_left = 1

    async def add_turn(self, record: TurnRecord) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise sa_exc.IntegrityError("INSERT INTO turns ...", {}, Exception("uq_turns"))
        await super().add_turn(record)


async def test_a_lost_unique_key_race_is_retried_once_not_parked(store: Store) -> None:
    repo = RacingRepository(store.sessions)
    writer = TurnWriter(repo, store.state.save)
    writer.start()
    try:
        writer.submit(TurnRecord("ses_u", "t1", "user", "hello"))
        assert await writer.flush(10)
    finally:
        await writer.close()
    assert writer.parked == 0 and writer.written == 1
    assert [t.text for t in await store.sessions.turns("ses_u")] == ["hello"]


def _sqlite_error(code: int) -> sa_exc.OperationalError:
    orig = sqlite3.OperationalError("boom")
    orig.sqlite_errorcode = code
    return sa_exc.OperationalError("SELECT 1", {}, orig)


class _PgError(Exception):
    def __init__(self, state: str) -> None:
        super().__init__("pg")
        self.sqlstate = state


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (OSError("network unreachable"), True),
        (sa_exc.OperationalError("x", {}, _PgError("08006")), True),  # connection failure
        (sa_exc.DBAPIError("x", {}, _PgError("57P01")), True),  # admin shutdown
        (sa_exc.OperationalError("x", {}, _PgError("22012")), False),  # division by zero
        (sa_exc.DBAPIError("x", {}, _PgError("40P01")), True),  # deadlock
        (sa_exc.InterfaceError("x", {}, Exception("connection is closed")), True),
        (sa_exc.DBAPIError("x", {}, Exception(), connection_invalidated=True), True),
        (sa_exc.TimeoutError(), True),  # pool exhausted
        (_sqlite_error(sqlite3.SQLITE_BUSY), True),  # database is locked
        (_sqlite_error(sqlite3.SQLITE_IOERR | (3 << 8)), True),  # an extended I/O error
        (_sqlite_error(sqlite3.SQLITE_ERROR), False),  # e.g. no such table
        (sa_exc.IntegrityError("x", {}, _PgError("23502")), False),
        (sa_exc.DataError("x", {}, _PgError("22001")), False),
        (sa_exc.ProgrammingError("x", {}, _PgError("42P01")), False),
        (sa_exc.StatementError("x", "SELECT 1", {}, TypeError()), False),
        (TypeError("a bug"), False),
    ],
)
def test_transient_errors_are_told_from_permanent_ones(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_sqlstate_is_read_from_the_driver_error() -> None:
    assert sqlstate(sa_exc.DataError("x", {}, _PgError("22001"))) == "22001"
    assert sqlstate(sa_exc.DataError("x", {}, Exception())) is None
