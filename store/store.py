"""The store facade: engine, tiers, repositories and the background workers, opened together."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from store.apikeys import ApiKeyRepository
from store.cache import HotCache, MemoryCache, RedisCache
from store.crypto import TokenCipher
from store.db import MAX_OVERFLOW, POOL_SIZE, ensure_schema, make_engine, migrate, sessionmaker
from store.library import LibraryRepository
from store.phrases import PhraseAudioCache
from store.platform_accounts import PlatformAccountRepository
from store.repositories import CacheRepository, SessionRepository, TtsAudioRepository
from store.retention import Retention
from store.rooms import RoomRepository
from store.session_state import SessionStateStore
from store.settings import StoreSettings
from store.tiered import TieredCache
from store.users import UserRepository
from store.writer import TurnWriter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Store:
    """Everything persistent of a process. Build with ``await Store.open(settings)``.

    Owns two background tasks: the turn writer's (``writer``) and the phrase
    cache's write-behind (``phrases``); ``close()`` drains and reaps them.
    ``purge()`` applies the clean-up and retention rules once; running it
    periodically is the server's job runner's work, on one worker only.
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
    keys: ApiKeyRepository
    """API keys (hashed), with a short per-process cache."""
    rooms: RoomRepository
    """Rooms, shared by every worker."""
    users: UserRepository
    """Users and their preferences (the sessions that name them)."""
    accounts: PlatformAccountRepository
    """Users' platform accounts, their tokens encrypted (``store.crypto``)."""
    library: LibraryRepository
    """Users' music libraries copied from the platforms (liked tracks, playlists)."""

    @classmethod
    async def open(
        cls,
        settings: StoreSettings | None = None,
        *,
        engine_args: dict[str, object] | None = None,
        migrate_schema: bool | None = None,
        pool_size: int = POOL_SIZE,
        max_overflow: int = MAX_OVERFLOW,
    ) -> Store:
        """Connect (SQLite file by default, created with its data directory), migrate if due.

        ``engine_args`` go to the database driver's connect call (asyncpg's
        ``server_settings`` are merged with the schema's search path);
        ``pool_size`` and ``max_overflow`` bound the engine's connections.
        """
        settings = settings or StoreSettings()
        if settings.embedded:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        # First: a wrong PARLEY_TOKEN_KEY stops the server before it serves anything.
        cipher = TokenCipher.from_config(
            settings.token_key.get_secret_value() if settings.token_key else None,
            settings.data_dir,
        )
        args = dict(engine_args or {})
        if settings.db_schema and not settings.embedded:
            given = args.get("server_settings")
            server_settings = dict(given) if isinstance(given, dict) else {}
            args["server_settings"] = {**server_settings, "search_path": settings.db_schema}
            await ensure_schema(settings.sqlalchemy_url(), settings.db_schema)
        engine = make_engine(
            settings.sqlalchemy_url(),
            connect_args=args,
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
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
            # a retention shorter than the cache's own age bound applies to phrase audio too
            max_age_s=min(
                settings.tts_cache_max_age_s,
                settings.retention_policy().retention_s or settings.tts_cache_max_age_s,
            ),
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
            keys=ApiKeyRepository(db),
            rooms=RoomRepository(db),
            users=UserRepository(db),
            accounts=PlatformAccountRepository(db, cipher),
            library=LibraryRepository(db),
        )
        writer.start()
        phrases.start()
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

    async def purge(
        self,
        *,
        keep_sessions: Collection[str] = (),
        rooms_created_before: dt.datetime | None = None,
    ) -> int:
        """Apply the clean-up and retention rules now; returns the rows removed.

        Old and oversize phrase audio, expired cache rows, and the settings'
        ``retention_policy`` (unused anonymous sessions; with
        ``PARLEY_RETENTION_DAYS``, old turns, logs, sessions and cache rows:
        ``store.retention``). ``keep_sessions`` (the live calls' sessions) are
        never deleted; rooms created before ``rooms_created_before`` (their
        join tokens expired) are deleted when it is given. Errors propagate.
        """
        phrases = await self.phrases.purge()
        expired = await self.cache.sql.purge_expired()
        kept = await Retention(self.db).apply(self.settings.retention_policy(), keep=keep_sessions)
        rooms = (
            await self.rooms.purge(rooms_created_before) if rooms_created_before is not None else 0
        )
        total = phrases.total + expired + kept.total + rooms
        if total:
            log.info(
                "store purge: %d phrase rows (%d unused, %d over size), %d expired cache rows, "
                "%d unused anonymous sessions, %d turns, %d interaction logs, %d sessions and "
                "%d cache rows past retention, %d rooms",
                phrases.total,
                phrases.expired,
                phrases.over_size,
                expired,
                kept.anonymous_sessions,
                kept.turns,
                kept.interaction_logs,
                kept.sessions,
                kept.cache_rows,
                rooms,
            )
        return total

    async def close(self) -> None:
        """Drain the writers and close connections."""
        await self.writer.close()
        await self.phrases.aclose()
        if self.phrase_hot is not self.hot:
            await self.phrase_hot.close()
        await self.hot.close()
        await self.engine.dispose()
