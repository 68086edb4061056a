"""The call ledger: every live call of every worker, for the caps, quotas and listings.

Calls stay in the process that answered them, but admission must see all of
them: the server-wide cap (``PARLEY_MAX_CALLS``) and each API key's quota
count calls across workers, a room lists calls held by other workers, and a
hang-up that lands on another worker must reach the one holding the call.

Three backends share one protocol:

- ``LocalLedger``: one process (the default with one worker).
- ``FileLedger``: several workers on one machine without Redis. A small JSON
  file in the data directory under an exclusive ``flock``; a worker's entries
  vanish when its process is gone or its heartbeat is stale.
- ``RedisLedger``: workers on any number of machines sharing ``REDIS_URL``.
  Sorted sets scored by expiry, admitted atomically by a Lua script.

Every worker refreshes its entries every ``HEARTBEAT_S`` (``CallManager``'s
heartbeat task); an entry not refreshed for ``STALE_S`` belongs to a worker that
died and no longer counts. The heartbeat also returns the hang-ups other
workers asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Awaitable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from redis.asyncio import Redis

HEARTBEAT_S = 5.0
"""How often a worker refreshes its calls' entries and reads hang-up requests."""
STALE_S = 20.0
"""An entry not refreshed for this long belongs to a dead worker and no longer counts."""


def worker_name() -> str:
    """This process, as entries name their worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class CallEntry:
    """A live call as the ledger knows it (no transcript, no token)."""

    call_id: str
    session_id: str
    transport: str
    room_id: str | None = None
    key_id: str | None = None
    worker: str = field(default_factory=worker_name)
    started_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        """The entry as stored."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> CallEntry:
        """An entry read back (``ValueError``/``TypeError`` when it is not one)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a call entry")
        return cls(**data)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary, as the room listing shows calls of other workers."""
        return {
            "id": self.call_id,
            "room_id": self.room_id,
            "transport": self.transport,
            "session_id": self.session_id,
            "started_at": self.started_at,
            "worker": self.worker,
        }


class LedgerFullError(Exception):
    """Admission refused: ``scope`` is ``"server"`` (the cap) or ``"key"`` (its quota)."""

    def __init__(self, scope: str, limit: int) -> None:
        what = "the server carries" if scope == "server" else "this API key holds"
        super().__init__(f"{what} its maximum of {limit} concurrent calls")
        self.scope = scope
        self.limit = limit


class CallLedger(Protocol):
    """Where the workers count and find each other's calls."""

    kind: str
    """``local``, ``file`` or ``redis`` (shown by ``/health``)."""

    async def admit(self, entry: CallEntry, *, max_calls: int, key_max_calls: int | None) -> None:
        """Record ``entry`` if the server-wide cap and its key's quota allow it.

        Raises ``LedgerFullError`` otherwise. Check and record are atomic
        across workers.
        """
        ...

    async def release(self, call_id: str) -> None:
        """Forget a call that ended (idempotent)."""
        ...

    async def entries(self, room_id: str | None = None) -> list[CallEntry]:
        """Live calls of every worker (of one room when ``room_id`` is set)."""
        ...

    async def request_end(self, call_id: str) -> bool:
        """Ask the worker holding ``call_id`` to end it; False when no such call is live."""
        ...

    async def heartbeat(self, call_ids: list[str]) -> list[str]:
        """Refresh this worker's calls; returns those other workers asked to end."""
        ...

    async def aclose(self) -> None:
        """Release connections (entries expire on their own)."""
        ...


class LocalLedger:
    """The calls of one process: nothing to share, nothing to expire."""

    kind = "local"

    def __init__(self) -> None:
        self._entries: dict[str, CallEntry] = {}

    async def admit(self, entry: CallEntry, *, max_calls: int, key_max_calls: int | None) -> None:
        """See ``CallLedger.admit``."""
        _check(list(self._entries.values()), entry, max_calls, key_max_calls)
        self._entries[entry.call_id] = entry

    async def release(self, call_id: str) -> None:
        """See ``CallLedger.release``."""
        self._entries.pop(call_id, None)

    async def entries(self, room_id: str | None = None) -> list[CallEntry]:
        """See ``CallLedger.entries``."""
        return [e for e in self._entries.values() if room_id is None or e.room_id == room_id]

    async def request_end(self, call_id: str) -> bool:
        """Local calls are ended directly by the call manager; nothing is pending here."""
        return False

    async def heartbeat(self, call_ids: list[str]) -> list[str]:
        """Nothing to refresh in one process."""
        return []

    async def aclose(self) -> None:
        """Nothing to release."""


def _check(live: list[CallEntry], entry: CallEntry, max_calls: int, key_max: int | None) -> None:
    if len(live) >= max_calls:
        raise LedgerFullError("server", max_calls)
    key = entry.key_id
    if key is not None and key_max is not None and sum(e.key_id == key for e in live) >= key_max:
        raise LedgerFullError("key", key_max)


class FileLedger:
    """Workers of one machine: a JSON file under ``flock`` in the data directory.

    The file maps call ids to ``{"entry": ..., "seen": heartbeat time, "end": bool}``.
    Each operation takes the lock, drops entries of processes that are gone or
    stale, and rewrites the file (a few hundred bytes per call; the lock is held
    for well under a millisecond). The blocking work runs in a thread.
    """

    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = path.with_suffix(path.suffix + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            table = self._read()
            before = json.dumps(table, sort_keys=True)
            yield table
            if json.dumps(table, sort_keys=True) != before:
                self._write(table)
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        now = time.time()
        table: dict[str, dict[str, Any]] = {}
        for call_id, row in data.items():
            try:
                entry = CallEntry.from_json(row["entry"])
                alive = now - float(row["seen"]) < STALE_S and _process_alive(entry.worker)
            except (KeyError, ValueError, TypeError):
                continue
            if alive:
                table[call_id] = row
        return table

    def _write(self, table: dict[str, dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table), encoding="utf-8")
        os.replace(tmp, self.path)

    def _live(self, table: dict[str, dict[str, Any]]) -> list[CallEntry]:
        return [CallEntry.from_json(row["entry"]) for row in table.values()]

    def _admit(self, entry: CallEntry, max_calls: int, key_max: int | None) -> None:
        with self._locked() as table:
            _check(self._live(table), entry, max_calls, key_max)
            table[entry.call_id] = {"entry": entry.to_json(), "seen": time.time(), "end": False}

    async def admit(self, entry: CallEntry, *, max_calls: int, key_max_calls: int | None) -> None:
        """See ``CallLedger.admit``."""
        await asyncio.to_thread(self._admit, entry, max_calls, key_max_calls)

    def _release(self, call_id: str) -> None:
        with self._locked() as table:
            table.pop(call_id, None)

    async def release(self, call_id: str) -> None:
        """See ``CallLedger.release``."""
        await asyncio.to_thread(self._release, call_id)

    def _entries(self) -> list[CallEntry]:
        with self._locked() as table:
            return self._live(table)

    async def entries(self, room_id: str | None = None) -> list[CallEntry]:
        """See ``CallLedger.entries``."""
        live = await asyncio.to_thread(self._entries)
        return [e for e in live if room_id is None or e.room_id == room_id]

    def _request_end(self, call_id: str) -> bool:
        with self._locked() as table:
            row = table.get(call_id)
            if row is None:
                return False
            row["end"] = True
            return True

    async def request_end(self, call_id: str) -> bool:
        """See ``CallLedger.request_end``."""
        return await asyncio.to_thread(self._request_end, call_id)

    def _heartbeat(self, call_ids: list[str]) -> list[str]:
        now = time.time()
        wanted: list[str] = []
        with self._locked() as table:
            for call_id in call_ids:
                row = table.get(call_id)
                if row is None:
                    continue
                row["seen"] = now
                if row.get("end"):
                    wanted.append(call_id)
        return wanted

    async def heartbeat(self, call_ids: list[str]) -> list[str]:
        """See ``CallLedger.heartbeat``."""
        if not call_ids:
            return []
        return await asyncio.to_thread(self._heartbeat, call_ids)

    async def aclose(self) -> None:
        """Nothing to release (entries of a stopped worker vanish with its process)."""


def _process_alive(worker: str) -> bool:
    """Whether the worker ``host:pid`` of this machine still runs."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # not ours to judge: the heartbeat's age decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# KEYS: live zset, key zset (or the live one again), entries hash.
# ARGV: now, expiry, call id, entry json, max calls, key max (-1: none).
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 1 end
local key_max = tonumber(ARGV[6])
if key_max >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  if redis.call('ZCARD', KEYS[2]) >= key_max then return 2 end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], 86400)
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return 0
"""


class RedisLedger:
    """Workers on many machines: sorted sets in Redis scored by each entry's expiry.

    ``{prefix}calls:live`` holds every live call id, ``{prefix}calls:key:{id}`` those
    of one API key, ``{prefix}calls:entries`` their entries, and
    ``{prefix}calls:end:{call}`` a hang-up request for another worker.
    """

    kind = "redis"

    def __init__(self, url: str, prefix: str = "parley:") -> None:
        self._redis: Redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._live = f"{prefix}calls:live"
        self._entries_key = f"{prefix}calls:entries"
        self._prefix = prefix
        self._admit_script = self._redis.register_script(_ADMIT)
        self._keys: dict[str, str | None] = {}

    def _key_set(self, key_id: str) -> str:
        return f"{self._prefix}calls:key:{key_id}"

    async def admit(self, entry: CallEntry, *, max_calls: int, key_max_calls: int | None) -> None:
        """See ``CallLedger.admit``."""
        now = time.time()
        quota = entry.key_id is not None and key_max_calls is not None
        key_set = self._key_set(entry.key_id) if quota and entry.key_id else self._live
        refused = await self._admit_script(
            keys=[self._live, key_set, self._entries_key],
            args=[
                now,
                now + STALE_S,
                entry.call_id,
                entry.to_json(),
                max_calls,
                key_max_calls if quota and key_max_calls is not None else -1,
            ],
        )
        if refused == 1:
            raise LedgerFullError("server", max_calls)
        if refused == 2 and key_max_calls is not None:
            raise LedgerFullError("key", key_max_calls)
        self._keys[entry.call_id] = key_set if quota else None

    async def release(self, call_id: str) -> None:
        """See ``CallLedger.release``."""
        key_set = self._keys.pop(call_id, None)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._live, call_id)
            if key_set is not None:
                pipe.zrem(key_set, call_id)
            pipe.hdel(self._entries_key, call_id)
            pipe.delete(f"{self._prefix}calls:end:{call_id}")
            await pipe.execute()

    async def entries(self, room_id: str | None = None) -> list[CallEntry]:
        """See ``CallLedger.entries``."""
        ids = cast(list[bytes], await self._redis.zrangebyscore(self._live, time.time(), "+inf"))
        if not ids:
            return []
        rows = await cast(
            Awaitable[list[bytes | None]], self._redis.hmget(self._entries_key, list(ids))
        )
        out: list[CallEntry] = []
        for row in rows:
            if row is None:
                continue
            try:
                entry = CallEntry.from_json(row)
            except (ValueError, TypeError):
                continue
            if room_id is None or entry.room_id == room_id:
                out.append(entry)
        return out

    async def request_end(self, call_id: str) -> bool:
        """See ``CallLedger.request_end``."""
        if await self._redis.zscore(self._live, call_id) is None:
            return False
        await self._redis.set(f"{self._prefix}calls:end:{call_id}", b"1", ex=int(STALE_S))
        return True

    async def heartbeat(self, call_ids: list[str]) -> list[str]:
        """See ``CallLedger.heartbeat``."""
        if not call_ids:
            return []
        expiry = time.time() + STALE_S
        async with self._redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.zadd(self._live, {call_id: expiry}, xx=True)
                key_set = self._keys.get(call_id)
                if key_set is not None:
                    pipe.zadd(key_set, {call_id: expiry}, xx=True)
            for call_id in call_ids:
                pipe.exists(f"{self._prefix}calls:end:{call_id}")
            results = await pipe.execute()
        flags = results[-len(call_ids) :]
        return [c for c, wanted in zip(call_ids, flags, strict=True) if wanted]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def open_ledger(*, redis_url: str | None, prefix: str, data_dir: Path, workers: int) -> CallLedger:
    """The ledger for this deployment: Redis when shared, a file for workers of one
    machine, in-process for one worker."""
    if redis_url:
        return RedisLedger(redis_url, prefix)
    if workers > 1:
        return FileLedger(data_dir / "calls.json")
    return LocalLedger()
