"""The store facade: engine, tiers, repositories and the background workers, opened together."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from store.cache import HotCache, MemoryCache, RedisCache
from store.db import ensure_schema, make_engine, migrate, sessionmaker
from store.phrases import PhraseAudioCache
from store.repositories import CacheRepository, SessionRepository, TtsAudioRepository
from store.session_state import SessionStateStore
from store.settings import StoreSettings
from store.tiered import TieredCache
from store.writer import TurnWriter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Store:
    """Everything persistent of a process. Build with ``await Store.open(settings)``.

    Owns three background tasks: the turn writer's (``writer``), the phrase
    cache's write-behind (``phrases``) and the periodic purge of old phrase
    audio and expired cache rows; ``close()`` drains and reaps them.
    """

    settings: StoreSettings
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    hot: HotCache
    phrase_hot: HotCache
    """The phrase cache's hot tier: its own in-process LRU, or the same Redis."""
    sessions: SessionRepository
    cache: TieredCache
    phrases: PhraseAudioCache
    state: SessionStateStore
    writer: TurnWriter
    _purge_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def open(
        cls,
        settings: StoreSettings | None = None,
        *,
        engine_args: dict[str, object] | None = None,
        migrate_schema: bool | None = None,
    ) -> Store:
        """Connect (SQLite file by default, created with its data directory), migrate if due."""
        settings = settings or StoreSettings()
        if settings.embedded:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        args = dict(engine_args or {})
        if settings.db_schema and not settings.embedded:
            args["server_settings"] = {"search_path": settings.db_schema}
            await ensure_schema(settings.sqlalchemy_url(), settings.db_schema)
        engine = make_engine(settings.sqlalchemy_url(), connect_args=args)
        if migrate_schema if migrate_schema is not None else settings.should_migrate():
            await migrate(engine)
        db = sessionmaker(engine)
        hot: HotCache = (
            RedisCache(settings.redis_url, prefix=settings.key_prefix)
            if settings.redis_url
            else MemoryCache(settings.hot_cache_entries, settings.hot_cache_bytes)
        )
        repo = SessionRepository(db)
        state = SessionStateStore(hot, repo, settings.session_ttl_s)
        writer = TurnWriter(repo, state.save)
        # In-process, phrase audio (hundreds of KB a phrase) gets its own LRU so it
        # can never evict session contexts and small cache entries; Redis is one
        # server whose own maxmemory policy governs all keys.
        phrase_hot: HotCache = (
            hot
            if settings.redis_url
            else MemoryCache(settings.hot_cache_entries, settings.hot_cache_bytes)
        )
        phrases = PhraseAudioCache(
            phrase_hot,
            TtsAudioRepository(db),
            settings.cache_ttl_s,
            read_budget_s=settings.tts_cache_read_budget_ms / 1000,
            max_age_s=settings.tts_cache_max_age_s,
            max_sql_bytes=settings.tts_cache_max_bytes,
        )
        store = cls(
            settings=settings,
            engine=engine,
            db=db,
            hot=hot,
            phrase_hot=phrase_hot,
            sessions=repo,
            cache=TieredCache(hot, CacheRepository(db), settings.cache_ttl_s),
            phrases=phrases,
            state=state,
            writer=writer,
        )
        writer.start()
        phrases.start()
        store._purge_task = asyncio.create_task(store._run_purges(), name="store-purge")
        log.info("store open: %s", store.describe())
        return store

    def describe(self) -> dict[str, str]:
        """Which backends are in use (no credentials)."""
        return {
            "sql": self.engine.dialect.name,
            "hot": "redis" if isinstance(self.hot, RedisCache) else "memory",
        }

    def stats(self) -> dict[str, int]:
        """Counters of the background workers, for ``/health`` and metrics."""
        p = self.phrases.stats
        return {
            "writes_pending": self.writer.pending,
            "writes_applied": self.writer.written,
            "write_retries": self.writer.retries,
            "writes_dropped": self.writer.dropped,
            "writes_parked": self.writer.parked,
            "tts_cache_hot_hits": p.hot_hits,
            "tts_cache_sql_hits": p.sql_hits,
            "tts_cache_misses": p.misses,
            "tts_cache_slow_lookups": p.slow_lookups,
            "tts_cache_lookups_shed": p.lookups_shed,
            "tts_cache_sql_errors": p.sql_errors,
            "tts_cache_writes": p.writes,
            "tts_cache_writes_dropped": p.writes_dropped,
            "tts_cache_write_errors": p.write_errors,
            "tts_cache_purged": p.purged,
        }

    async def healthy(self) -> dict[str, bool]:
        """Whether each tier answers now."""
        sql_ok = True
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            sql_ok = False
        hot_ok = await self.hot.ping() if isinstance(self.hot, RedisCache) else True
        return {"sql": sql_ok, "hot": hot_ok}

    async def purge(self) -> int:
        """Purge old and oversize phrase audio and expired cache rows now; rows removed."""
        phrases = await self.phrases.purge()
        expired = await self.cache.sql.purge_expired()
        if phrases.total or expired:
            log.info(
                "store purge: %d phrase rows (%d unused, %d over size), %d expired cache rows",
                phrases.total,
                phrases.expired,
                phrases.over_size,
                expired,
            )
        return phrases.total + expired

    async def _run_purges(self) -> None:
        """Purge a minute after opening (not on the start-up path), then every
        ``purge_interval_s``; a failed purge waits for the next."""
        interval = self.settings.purge_interval_s
        await asyncio.sleep(min(interval, 60.0))
        while True:
            try:
                await self.purge()
            except Exception as exc:
                log.warning("store purge failed (%s); next in %.0f s", type(exc).__name__, interval)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop the purge, drain the writers and close connections."""
        if self._purge_task is not None:
            self._purge_task.cancel()
            await asyncio.gather(self._purge_task, return_exceptions=True)
            self._purge_task = None
        await self.writer.close()
        await self.phrases.aclose()
        if self.phrase_hot is not self.hot:
            await self.phrase_hot.close()
        await self.hot.close()
        await self.engine.dispose()
