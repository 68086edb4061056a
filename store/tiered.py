"""Tiered cache: hot tier (Redis / in-process) -> SQL tier -> the source.

A hit in the SQL tier is written back to the hot tier; a value loaded from
the source is written to both. Keys are normalized (``store.keys``), so
equivalent requests share one entry.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from store.cache import HotCache
from store.keys import normalize_key
from store.repositories import CacheRepository

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CacheStats:
    """Where lookups were answered."""

    hot_hits: int = 0
    sql_hits: int = 0
    misses: int = 0
    sql_errors: int = 0


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """One lookup: the value, the tier that answered it, and each tier's time."""

    value: dict[str, Any] | None
    tier: str | None
    """``"hot"``, ``"sql"``, or None (a miss in both)."""
    hot_s: float
    sql_s: float | None
    """None when the hot tier answered (the SQL tier was not asked)."""


class TieredCache:
    """JSON values by (namespace, normalized key) over a hot and a SQL tier."""

    def __init__(self, hot: HotCache, sql: CacheRepository, ttl_s: float) -> None:
        self.hot = hot
        self.sql = sql
        self.ttl_s = ttl_s
        self.stats = CacheStats()

    @staticmethod
    def key(namespace: str, raw_key: str) -> str:
        """The hot-tier key of a request."""
        return f"cache:{namespace}:{normalize_key(raw_key)}"

    async def get(self, namespace: str, raw_key: str) -> dict[str, Any] | None:
        """Look a value up in the hot tier, then the SQL tier."""
        return (await self.lookup(namespace, raw_key)).value

    async def lookup(
        self, namespace: str, raw_key: str, *, normalized: bool = False
    ) -> CacheLookup:
        """Like ``get``, saying which tier answered and how long each took.

        ``normalized``: ``raw_key`` is already a canonical key (a caller with a
        normalization of its own, such as ``store.library.music_key``).
        """
        norm = raw_key if normalized else normalize_key(raw_key)
        hot_key = f"cache:{namespace}:{norm}"
        started = time.perf_counter()
        cached = await self.hot.get(hot_key)
        hot_s = time.perf_counter() - started
        if cached is not None:
            self.stats.hot_hits += 1
            value: dict[str, Any] = json.loads(cached)
            return CacheLookup(value, "hot", hot_s, None)
        started = time.perf_counter()
        try:
            stored = await self.sql.get(namespace, norm)
        except (SQLAlchemyError, OSError) as exc:
            self.stats.sql_errors += 1
            log.warning("cache SQL tier unavailable: %s", type(exc).__name__)
            stored = None
        sql_s = time.perf_counter() - started
        if stored is not None:
            self.stats.sql_hits += 1
            await self.hot.set(hot_key, json.dumps(stored).encode(), self.ttl_s)
            return CacheLookup(stored, "sql", hot_s, sql_s)
        return CacheLookup(None, None, hot_s, sql_s)

    async def put(
        self, namespace: str, raw_key: str, value: dict[str, Any], *, normalized: bool = False
    ) -> None:
        """Write a value to both tiers (a SQL failure is logged, not raised)."""
        norm = raw_key if normalized else normalize_key(raw_key)
        await self.hot.set(f"cache:{namespace}:{norm}", json.dumps(value).encode(), self.ttl_s)
        try:
            await self.sql.put(namespace, norm, value, self.ttl_s)
        except (SQLAlchemyError, OSError) as exc:
            self.stats.sql_errors += 1
            log.warning("cache SQL tier unavailable: %s", type(exc).__name__)

    async def get_or_load(
        self,
        namespace: str,
        raw_key: str,
        loader: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """The cached value, or ``loader()``'s result written back to both tiers."""
        value = await self.get(namespace, raw_key)
        if value is not None:
            return value
        self.stats.misses += 1
        value = await loader()
        await self.put(namespace, raw_key, value)
        return value
