"""Store backends for tests: PostgreSQL + Redis (CI has both) and SQLite + in-process cache.

The server backends are used where 127.0.0.1:5432 / 6379 answer. Where they
do not, those tests are skipped with the reason shown in the summary; in CI
(``CI`` set) they fail instead, so a CI run can never pass without them.

Test modules use the ``backend``, ``settings`` and ``store`` fixtures by
importing ``backend_fixture``, ``settings_fixture`` and ``store_fixture``.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from store.settings import StoreSettings
from store.store import Store

PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
SERVER_BACKEND = "postgres+redis"
EMBEDDED_BACKEND = "sqlite+memory"
BACKENDS = [SERVER_BACKEND, EMBEDDED_BACKEND]

RESULTS: dict[str, str] = {}
"""What each backend did in this run (printed in the terminal summary)."""


def reachable(host: str, port: int) -> bool:
    """Whether a TCP server answers."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_servers() -> None:
    """Skip (fail in CI) when PostgreSQL or Redis is not reachable."""
    missing = [
        name
        for name, (h, p) in {
            "PostgreSQL": (PG_HOST, PG_PORT),
            "Redis": (REDIS_HOST, REDIS_PORT),
        }.items()
        if not reachable(h, p)
    ]
    if not missing:
        RESULTS[SERVER_BACKEND] = (
            "ran against PostgreSQL 127.0.0.1:5432/test + Redis 127.0.0.1:6379"
        )
        return
    reason = f"{' and '.join(missing)} not reachable on 127.0.0.1"
    RESULTS[SERVER_BACKEND] = f"SKIPPED: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"CI must test the server backends: {reason}")
    pytest.skip(reason)


def store_settings(
    backend: str,
    data_dir: Path,
    *,
    pg_port: int = PG_PORT,
    redis_port: int = REDIS_PORT,
    schema: str | None = None,
    prefix: str | None = None,
) -> StoreSettings:
    """Settings of a fresh, isolated store on ``backend``.

    PostgreSQL gets its own schema and Redis its own key prefix, so runs never
    see each other's data (pass ``schema``/``prefix`` to share them between
    two app instances).
    """
    if backend == SERVER_BACKEND:
        require_servers()
        run = secrets.token_hex(4)
        return StoreSettings(
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{pg_port}/{PG_DB}",
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            PARLEY_DB_SCHEMA=schema or f"t_{run}",
            PARLEY_REDIS_PREFIX=prefix or f"parley-test-{run}:",
            PARLEY_AUTO_MIGRATE=True,
            PARLEY_DATA_DIR=data_dir,
        )
    RESULTS.setdefault(EMBEDDED_BACKEND, f"ran against SQLite files under {data_dir.parent}")
    return StoreSettings(PARLEY_DATA_DIR=data_dir, DATABASE_URL=None, REDIS_URL=None)


async def drop_schema(settings: StoreSettings) -> None:
    """Remove a test schema (PostgreSQL only)."""
    if settings.embedded or not settings.db_schema:
        return
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(settings.sqlalchemy_url())
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE'))
    finally:
        await engine.dispose()


@pytest.fixture(name="backend", params=BACKENDS)
def backend_fixture(request: pytest.FixtureRequest) -> str:
    """Each store test runs once per backend."""
    name: str = request.param
    return name


@pytest.fixture(name="settings")
async def settings_fixture(backend: str, tmp_path: Path) -> AsyncIterator[StoreSettings]:
    """Settings of a fresh, isolated store on the backend (its schema dropped afterwards)."""
    s = store_settings(backend, tmp_path / "data")
    yield s
    await drop_schema(s)


@pytest.fixture(name="store")
async def store_fixture(settings: StoreSettings) -> AsyncIterator[Store]:
    """An open store on the backend, closed afterwards."""
    st = await Store.open(settings)
    yield st
    await st.close()


async def empty_database(settings: StoreSettings) -> AsyncEngine:
    """An engine on the fresh, empty database of ``settings`` (from ``store_settings``: a new
    schema on PostgreSQL, a new SQLite file) for migration tests; dispose it and
    ``drop_schema(settings)`` when done."""
    from store.db import ensure_schema, make_engine

    args: dict[str, object] = {}
    if settings.db_schema:
        await ensure_schema(settings.sqlalchemy_url(), settings.db_schema)
        args["server_settings"] = {"search_path": settings.db_schema}
    else:
        settings.data_dir.mkdir(parents=True)
    return make_engine(settings.sqlalchemy_url(), connect_args=args)


def migrate(conn: Connection, revision: str, down: bool = False) -> None:
    """Upgrade (or downgrade) the database on ``conn`` to ``revision`` with Alembic
    (run it through ``AsyncConnection.run_sync``)."""
    from alembic import command

    from store.db import alembic_config

    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    (command.downgrade if down else command.upgrade)(cfg, revision)
