"""The store facade: engine, tiers, repositories and the background writer, opened together."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
    """Everything persistent of a process. Build with ``await Store.open(settings)``."""

    settings: StoreSettings
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    hot: HotCache
    sessions: SessionRepository
    cache: TieredCache
    phrases: PhraseAudioCache
    state: SessionStateStore
    writer: TurnWriter

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
            else MemoryCache(settings.hot_cache_entries)
        )
        repo = SessionRepository(db)
        state = SessionStateStore(hot, repo, settings.session_ttl_s)
        writer = TurnWriter(repo, state.save)
        writer.start()
        store = cls(
            settings=settings,
            engine=engine,
            db=db,
            hot=hot,
            sessions=repo,
            cache=TieredCache(hot, CacheRepository(db), settings.cache_ttl_s),
            phrases=PhraseAudioCache(hot, TtsAudioRepository(db), settings.cache_ttl_s),
            state=state,
            writer=writer,
        )
        log.info("store open: %s", store.describe())
        return store

    def describe(self) -> dict[str, str]:
        """Which backends are in use (no credentials)."""
        return {
            "sql": self.engine.dialect.name,
            "hot": "redis" if isinstance(self.hot, RedisCache) else "memory",
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

    async def close(self) -> None:
        """Drain the writer and close connections."""
        await self.writer.close()
        await self.hot.close()
        await self.engine.dispose()
