"""The call ledger: caps and per-key quotas across workers, dead workers, hang-up requests.

The file ledger is shared by real processes here (two ``multiprocessing``
workers admitting at once); the Redis ledger runs against the real Redis
(``tests.backends.require_servers`` skips it where Redis is absent, and fails in CI).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling import ledger as ledger_mod
from signaling.ledger import (
    CallEntry,
    CallLedger,
    FileLedger,
    LedgerFullError,
    LocalLedger,
    RedisLedger,
)
from tests.backends import REDIS_HOST, REDIS_PORT, require_servers

KINDS = ["local", "file", "redis"]


@pytest.fixture(params=KINDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CallLedger]:
    """A fresh ledger of each kind."""
    made: CallLedger
    if request.param == "local":
        made = LocalLedger()
    elif request.param == "file":
        made = FileLedger(tmp_path / "calls.json")
    else:
        require_servers()
        prefix = f"test-ledger-{secrets.token_hex(4)}:"
        made = RedisLedger(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix)
    try:
        yield made
    finally:
        await made.aclose()


def entry(n: int, key: str | None = None, room: str | None = "room_a") -> CallEntry:
    """A call entry numbered ``n``."""
    return CallEntry(f"call_{n}", f"ses_{n}", "webrtc", room_id=room, key_id=key)


async def test_cap_counts_every_call_and_frees_on_release(ledger: CallLedger) -> None:
    await ledger.admit(entry(1), max_calls=2, key_max_calls=None)
    await ledger.admit(entry(2, room="room_b"), max_calls=2, key_max_calls=None)
    with pytest.raises(LedgerFullError) as full:
        await ledger.admit(entry(3), max_calls=2, key_max_calls=None)
    assert full.value.scope == "server"
    assert [e.call_id for e in await ledger.entries("room_a")] == ["call_1"]
    assert {e.call_id for e in await ledger.entries()} == {"call_1", "call_2"}
    await ledger.release("call_1")
    await ledger.release("call_1")  # idempotent
    await ledger.admit(entry(3), max_calls=2, key_max_calls=None)
    assert {e.call_id for e in await ledger.entries()} == {"call_2", "call_3"}


async def test_key_quota_is_per_key(ledger: CallLedger) -> None:
    await ledger.admit(entry(1, key="key_a"), max_calls=10, key_max_calls=1)
    with pytest.raises(LedgerFullError) as full:
        await ledger.admit(entry(2, key="key_a"), max_calls=10, key_max_calls=1)
    assert full.value.scope == "key"
    assert "1 concurrent calls" in str(full.value)
    await ledger.admit(entry(3, key="key_b"), max_calls=10, key_max_calls=1)
    await ledger.admit(entry(4), max_calls=10, key_max_calls=None)  # anonymous: cap only
    await ledger.release("call_1")
    await ledger.admit(entry(5, key="key_a"), max_calls=10, key_max_calls=1)


@pytest.mark.parametrize("kind", ["file", "redis"])
async def test_hang_up_request_reaches_the_holding_worker(kind: str, tmp_path: Path) -> None:
    """Two ledgers on one backend stand for two workers."""
    if kind == "file":
        holder: CallLedger = FileLedger(tmp_path / "calls.json")
        other: CallLedger = FileLedger(tmp_path / "calls.json")
    else:
        require_servers()
        prefix = f"test-ledger-{secrets.token_hex(4)}:"
        url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
        holder, other = RedisLedger(url, prefix), RedisLedger(url, prefix)
    try:
        await holder.admit(entry(1), max_calls=5, key_max_calls=None)
        await holder.admit(entry(2), max_calls=5, key_max_calls=None)
        assert await holder.heartbeat(["call_1", "call_2"]) == []
        assert await other.request_end("call_2")
        assert not await other.request_end("call_9")
        assert await holder.heartbeat(["call_1", "call_2"]) == ["call_2"]
        assert [e.call_id for e in await other.entries("room_a")] == ["call_1", "call_2"]
    finally:
        await holder.aclose()
        await other.aclose()


async def test_file_ledger_forgets_dead_and_silent_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = FileLedger(tmp_path / "calls.json")
    gone = CallEntry("call_gone", "ses_gone", "websocket", worker=f"{socket.gethostname()}:0")
    # pid 0 is never a worker's: its entries count as a dead process's.
    monkeypatch.setattr(ledger_mod, "_process_alive", lambda w: not w.endswith(":0"))
    await ledger.admit(gone, max_calls=1, key_max_calls=None)
    await ledger.admit(entry(1), max_calls=1, key_max_calls=None)  # the dead one did not count
    with pytest.raises(LedgerFullError):
        await ledger.admit(entry(2), max_calls=1, key_max_calls=None)
    # A worker whose heartbeat stopped (hung, or on another machine) stops counting too.
    later = time.time() + ledger_mod.STALE_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    await ledger.admit(entry(2), max_calls=1, key_max_calls=None)


def _admit_many(path: str, worker: int, count: int, results: multiprocessing.Queue[int]) -> None:
    """A worker process admitting ``count`` calls at once against a cap."""

    async def run() -> int:
        ledger = FileLedger(Path(path))
        admitted = 0
        for n in range(count):
            try:
                await ledger.admit(
                    CallEntry(f"call_{worker}_{n}", f"ses_{worker}_{n}", "webrtc"),
                    max_calls=7,
                    key_max_calls=None,
                )
                admitted += 1
            except LedgerFullError:
                pass
        return admitted

    results.put(asyncio.run(run()))


def test_file_ledger_is_atomic_across_processes(tmp_path: Path) -> None:
    """Two real processes racing for the last slots never exceed the cap together."""
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = ctx.Queue()
    path = str(tmp_path / "calls.json")
    procs = [ctx.Process(target=_admit_many, args=(path, w, 6, results)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    admitted = [results.get(timeout=5) for _ in procs]
    # The workers have exited, so their entries no longer count; the total admitted
    # while both were alive is exactly the cap.
    assert sum(admitted) == 7, admitted
