"""Where the store keeps its data (environment variables, no prefix, as is customary)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.retention import DAY_S, RetentionPolicy

DEFAULT_DATA_DIR = Path("data")


class StoreSettings(BaseSettings):
    """``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` switch to the production backends.

    Without them the store is embedded: a SQLite file in ``PARLEY_DATA_DIR``
    (default ``./data``) and an in-process LRU cache.
    """

    model_config = SettingsConfigDict(
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,  # a rejected value may be a secret: never echo it
    )

    database_url: str | None = Field(None, alias="DATABASE_URL")
    redis_url: str | None = Field(None, alias="REDIS_URL")
    data_dir: Path = Field(DEFAULT_DATA_DIR, alias="PARLEY_DATA_DIR")
    session_ttl_s: int = Field(3600, alias="PARLEY_SESSION_TTL_S", ge=10)
    """How long a session's chat context stays in the hot tier after its last turn."""
    cache_ttl_s: int = Field(24 * 3600, alias="PARLEY_CACHE_TTL_S", ge=1)
    hot_cache_entries: int = Field(10_000, alias="PARLEY_HOT_CACHE_ENTRIES", ge=16)
    hot_cache_bytes: int = Field(64 * 1024 * 1024, alias="PARLEY_HOT_CACHE_BYTES", ge=1024 * 1024)
    """Byte bound of the in-process hot tier (Redis is bounded by its own ``maxmemory``)."""
    tts_cache_read_budget_ms: float = Field(
        10.0, alias="PARLEY_TTS_CACHE_READ_BUDGET_MS", ge=0, le=1000
    )
    """How long a phrase lookup may delay first audio; a slower lookup is a miss for this
    utterance and warms the hot tier in the background for the next one."""
    tts_cache_max_age_s: int = Field(30 * 24 * 3600, alias="PARLEY_TTS_CACHE_MAX_AGE_S", ge=60)
    """Phrase audio not used for this long is purged from the SQL tier."""
    tts_cache_max_bytes: int = Field(
        1024 * 1024 * 1024, alias="PARLEY_TTS_CACHE_MAX_BYTES", ge=1024 * 1024
    )
    """Total PCM kept in the SQL tier; past it the least recently used phrases are purged."""
    purge_interval_s: float = Field(900.0, alias="PARLEY_PURGE_INTERVAL_S", gt=0)
    """Period of the store's purge (``Store.purge``: old phrase audio, expired cache rows,
    unused anonymous sessions and, with a retention, old turns and sessions), run by the
    server's job runner on worker 0."""
    retention_days: float | None = Field(None, alias="PARLEY_RETENTION_DAYS", gt=0)
    """Turns, interaction logs, sessions and audio cache rows older than this many days are
    deleted (unset: kept forever)."""
    anonymous_session_ttl_s: float = Field(3600.0, alias="PARLEY_ANONYMOUS_SESSION_TTL_S", ge=60)
    """A session no API key created that has no turn is deleted this long after it started."""
    key_prefix: str = Field("parley:", alias="PARLEY_REDIS_PREFIX")
    db_schema: str | None = Field(None, alias="PARLEY_DB_SCHEMA", pattern=r"^[a-z_][a-z0-9_]*$")
    """PostgreSQL schema to use (created if missing); default: the server's search path."""
    auto_migrate: bool | None = Field(None, alias="PARLEY_AUTO_MIGRATE")
    """None: migrate automatically in embedded mode (SQLite) only."""
    token_key: SecretStr | None = Field(None, alias="PARLEY_TOKEN_KEY")
    """Fernet keys that encrypt platform tokens at rest, comma-separated: the first
    encrypts, all decrypt (rotation: list a new key first, then re-encrypt). Unset: a
    key generated once in ``PARLEY_DATA_DIR/token_key`` (mode 0600); servers on several
    machines must share one key list here instead (``store.crypto``)."""

    @field_validator("retention_days", mode="before")
    @classmethod
    def _blank_is_forever(cls, value: object) -> object:
        """``PARLEY_RETENTION_DAYS=`` (empty, as compose files pass it) keeps everything."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    def retention_policy(self) -> RetentionPolicy:
        """The retention rules these settings ask for (``store.retention``)."""
        return RetentionPolicy(
            anonymous_ttl_s=self.anonymous_session_ttl_s,
            retention_s=None if self.retention_days is None else self.retention_days * DAY_S,
        )

    @property
    def embedded(self) -> bool:
        """True when no database server is configured."""
        return self.database_url is None

    def sqlalchemy_url(self) -> str:
        """The async SQLAlchemy URL (``postgresql://`` becomes ``postgresql+asyncpg://``)."""
        if self.database_url is None:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'parley.db').resolve()}"
        url = self.database_url
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url[len(plain) :]
        return url

    def should_migrate(self) -> bool:
        """Whether ``Store.open`` runs the migrations itself."""
        return self.embedded if self.auto_migrate is None else self.auto_migrate
