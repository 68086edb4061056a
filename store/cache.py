"""The hot tier: Redis when configured, else an in-process LRU with TTL, behind one interface.

Values are bytes; callers serialise. A Redis outage never fails a caller:
``RedisCache`` answers misses and drops writes while Redis is unreachable
(counted in ``errors``), so the tiered cache falls through to SQL.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol, runtime_checkable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@runtime_checkable
class HotCache(Protocol):
    """Key-value store with per-key time-to-live."""

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent, expired or unreachable."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        """Store a value (best effort)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a key (best effort)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryCache:
    """In-process LRU with TTL, bounded in entries and in bytes.

    When either bound is exceeded the least recently used entries are evicted
    first (expired or not); a single value larger than ``max_bytes`` is not
    stored at all (and replaces nothing). ``nbytes`` counts keys and values,
    not Python's per-object overhead, which is small next to audio values.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a memory cache needs room for at least one entry and one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.evictions = 0
        self._nbytes = 0
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes held (keys and values)."""
        return self._nbytes

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value)

    def _remove(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self._nbytes -= self._size(key, item[0])

    async def get(self, key: str) -> bytes | None:
        """See ``HotCache.get``."""
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            self._remove(key)
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        """See ``HotCache.set``."""
        self._remove(key)
        size = self._size(key, value)
        if size > self.max_bytes:
            self.evictions += 1
            return
        expires = time.monotonic() + ttl_s if ttl_s is not None else None
        self._data[key] = (value, expires)
        self._nbytes += size
        while len(self._data) > self.max_entries or self._nbytes > self.max_bytes:
            old_key, (old_value, _) = self._data.popitem(last=False)
            self._nbytes -= self._size(old_key, old_value)
            self.evictions += 1

    async def delete(self, key: str) -> None:
        """See ``HotCache.delete``."""
        self._remove(key)

    async def close(self) -> None:
        """Nothing to release."""
        self._data.clear()
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._data)


class RedisCache:
    """Redis-backed hot tier with short timeouts; errors degrade to misses."""

    def __init__(self, url: str, prefix: str = "parley:", timeout_s: float = 0.5) -> None:
        self.prefix = prefix
        self.errors = 0
        self._client = aioredis.from_url(  # type: ignore[no-untyped-call]
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self._last_log = 0.0

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_log > 10:  # one line per 10 s while Redis is down
            self._last_log = now
            log.warning(
                "redis %s failed (%s); falling back to the SQL tier", op, type(exc).__name__
            )

    async def get(self, key: str) -> bytes | None:
        """See ``HotCache.get``."""
        try:
            value = await self._client.get(self.prefix + key)
            return value if isinstance(value, bytes) or value is None else value.encode()
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return None

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        """See ``HotCache.set``."""
        try:
            px = int(ttl_s * 1000) if ttl_s is not None else None
            await self._client.set(self.prefix + key, value, px=px)
        except (RedisError, OSError) as exc:
            self._failed("set", exc)

    async def delete(self, key: str) -> None:
        """See ``HotCache.delete``."""
        try:
            await self._client.delete(self.prefix + key)
        except (RedisError, OSError) as exc:
            self._failed("delete", exc)

    async def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
