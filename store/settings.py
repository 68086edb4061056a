"""Where the store keeps its data (environment variables, no prefix, as is customary)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("data")


class StoreSettings(BaseSettings):
    """``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` switch to the production backends.

    Without them the store is embedded: a SQLite file in ``PARLEY_DATA_DIR``
    (default ``./data``) and an in-process LRU cache.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str | None = Field(None, alias="DATABASE_URL")
    redis_url: str | None = Field(None, alias="REDIS_URL")
    data_dir: Path = Field(DEFAULT_DATA_DIR, alias="PARLEY_DATA_DIR")
    session_ttl_s: int = Field(3600, alias="PARLEY_SESSION_TTL_S", ge=10)
    """How long a session's chat context stays in the hot tier after its last turn."""
    cache_ttl_s: int = Field(24 * 3600, alias="PARLEY_CACHE_TTL_S", ge=1)
    hot_cache_entries: int = Field(10_000, alias="PARLEY_HOT_CACHE_ENTRIES", ge=16)
    key_prefix: str = Field("parley:", alias="PARLEY_REDIS_PREFIX")
    db_schema: str | None = Field(None, alias="PARLEY_DB_SCHEMA", pattern=r"^[a-z_][a-z0-9_]*$")
    """PostgreSQL schema to use (created if missing); default: the server's search path."""
    auto_migrate: bool | None = Field(None, alias="PARLEY_AUTO_MIGRATE")
    """None: migrate automatically in embedded mode (SQLite) only."""

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
