"""Platform accounts in the store: tokens encrypted at rest (no plaintext in the database's
bytes, on SQLite and PostgreSQL), key rotation and re-encryption, the key file, typed
errors that never carry a token, users tied to sessions, and migration 0007."""

from __future__ import annotations

import datetime as dt
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Connection, inspect, text

from store.crypto import (
    KEY_FILE,
    TokenCipher,
    TokenDecryptError,
    TokenKeyError,
    generate_key,
    load_or_create_key,
)
from store.platform_accounts import AccountStatus, TokenGrant
from store.settings import StoreSettings
from store.store import Store
from tests.backends import drop_schema, empty_database, migrate, store_settings

ACCESS = "access-PLAINTEXT-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
REFRESH = "refresh-PLAINTEXT-a1b2c3d4e5f60718293a4b5c6d7e8f90"


def grant(access: str = ACCESS, refresh: str | None = REFRESH) -> TokenGrant:
    return TokenGrant(
        access_token=access,
        refresh_token=refresh,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        scopes=("user-library-read", "user-modify-playback-state"),
    )


def with_key(settings: StoreSettings, keys: str) -> StoreSettings:
    return settings.model_copy(update={"token_key": SecretStr(keys)})


async def test_tokens_roundtrip_and_status_changes(store: Store) -> None:
    info = await store.accounts.save("usr_a", "spotify", grant(), metadata={"display": "A"})
    assert info.connected and info.has_refresh_token
    assert info.scopes == ("user-library-read", "user-modify-playback-state")
    assert ACCESS not in repr(info)
    creds = await store.accounts.credentials("usr_a", "spotify")
    assert creds is not None
    assert (creds.access_token, creds.refresh_token) == (ACCESS, REFRESH)
    assert ACCESS not in repr(creds) and REFRESH not in repr(creds)
    assert ACCESS not in repr(grant())

    # A refresh without a new refresh token or scopes keeps the stored ones.
    assert await store.accounts.refreshed(
        "usr_a", "spotify", TokenGrant("access-2", None, None, None), read=creds.revision
    )
    creds = await store.accounts.credentials("usr_a", "spotify")
    assert creds is not None
    assert (creds.access_token, creds.refresh_token) == ("access-2", REFRESH)
    assert creds.info.scopes == info.scopes and creds.info.expires_at is None

    assert await store.accounts.mark_disconnected("usr_a", "spotify")
    info2 = await store.accounts.info("usr_a", "spotify")
    assert info2 is not None and info2.status is AccountStatus.DISCONNECTED
    assert [a.platform for a in await store.accounts.connected()] == []
    assert await store.accounts.mark_synced("usr_a", "spotify")
    # Linking again reconnects the same row.
    await store.accounts.save("usr_a", "spotify", grant("access-3"))
    info3 = await store.accounts.info("usr_a", "spotify")
    assert info3 is not None and info3.connected and info3.last_sync_at is not None
    assert info3.metadata == {"display": "A"}
    assert [a.user_id for a in await store.accounts.connected("spotify")] == ["usr_a"]

    assert await store.accounts.delete("usr_a", "spotify")
    assert await store.accounts.credentials("usr_a", "spotify") is None
    assert not await store.accounts.delete("usr_a", "spotify")


async def test_a_refresh_never_overwrites_an_account_linked_again(store: Store) -> None:
    """The tokens of a refresh are stored only over the tokens it was made with: a re-link
    (or another worker's refresh) since they were read wins."""
    await store.accounts.save("usr_l", "spotify", grant("access-old", "refresh-old"))
    read = await store.accounts.credentials("usr_l", "spotify")
    assert read is not None
    # While the refresh made with the old tokens is under way, the user links again.
    await store.accounts.save("usr_l", "spotify", grant("access-new", "refresh-new"))
    late = TokenGrant("access-from-old-refresh", "refresh-from-old-refresh", None, None)
    assert not await store.accounts.refreshed("usr_l", "spotify", late, read=read.revision)
    kept = await store.accounts.credentials("usr_l", "spotify")
    assert kept is not None
    assert (kept.access_token, kept.refresh_token) == ("access-new", "refresh-new")
    # Made with the current tokens, it is stored; the same read cannot be used twice.
    assert await store.accounts.refreshed("usr_l", "spotify", late, read=kept.revision)
    assert not await store.accounts.refreshed("usr_l", "spotify", late, read=kept.revision)
    stored = await store.accounts.credentials("usr_l", "spotify")
    assert stored is not None and stored.access_token == "access-from-old-refresh"
    # An account without a refresh token is matched on its access token alone.
    await store.accounts.save("usr_n", "spotify", grant("access-n", None))
    bare = await store.accounts.credentials("usr_n", "spotify")
    assert bare is not None and bare.revision.refresh is None
    assert await store.accounts.refreshed("usr_n", "spotify", late, read=bare.revision)
    assert not await store.accounts.refreshed("usr_gone", "spotify", late, read=bare.revision)
    assert "access-n" not in repr(bare) and repr(bare.revision) == "AccountRevision()"


async def test_users_are_tied_to_sessions_once(store: Store) -> None:
    await store.sessions.create("ses_u1", transport="none")
    assert await store.users.of_session("ses_u1") is None
    assert await store.users.for_session("ses_missing") is None
    first, second = await store.users.for_session("ses_u1"), await store.users.for_session("ses_u1")
    assert first is not None and first == second and first.startswith("usr_")
    await store.users.set_preferred_platform(first, "soundcloud")
    assert await store.users.preferred_platform(first) == "soundcloud"


async def test_database_bytes_hold_no_token(store: Store, settings: StoreSettings) -> None:
    await store.accounts.save("usr_raw", "spotify", grant())
    if settings.embedded:
        await store.close()  # checkpoints the WAL into the file
        raw = b"".join(
            p.read_bytes() for p in settings.data_dir.iterdir() if p.name.startswith("parley.db")
        )
        assert b"usr_raw" in raw  # the row is there...
        store_reopened = await Store.open(settings)
        await store_reopened.close()
    else:
        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT access_token, refresh_token, scopes, metadata"
                        " FROM platform_accounts WHERE user_id = 'usr_raw'"
                    )
                )
            ).all()
        assert len(rows) == 1
        raw = b"".join(
            bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in rows[0]
        )
        assert bytes(rows[0][0]).startswith(b"gAAAAA")  # a Fernet token
    for plain in (ACCESS, REFRESH, "PLAINTEXT"):  # ...but neither token, in any form
        assert plain.encode() not in raw
        assert plain.encode("utf-16-le") not in raw


async def test_key_rotation_and_reencryption(settings: StoreSettings) -> None:
    old, new = generate_key(), generate_key()
    first = await Store.open(with_key(settings, old))
    try:
        await first.accounts.save("usr_r", "spotify", grant())
        await first.accounts.save("usr_r2", "soundcloud", grant("second", None))
    finally:
        await first.close()

    rotated = await Store.open(with_key(settings, f"{new},{old}"))
    try:
        creds = await rotated.accounts.credentials("usr_r", "spotify")  # old rows readable
        assert creds is not None and creds.access_token == ACCESS
        assert await rotated.accounts.reencrypt(batch=1) == 2
        assert await rotated.accounts.reencrypt() == 0  # nothing left on the old key
    finally:
        await rotated.close()

    only_new = await Store.open(with_key(settings, new))
    try:
        creds = await only_new.accounts.credentials("usr_r", "spotify")
        assert creds is not None and creds.refresh_token == REFRESH
        second = await only_new.accounts.credentials("usr_r2", "soundcloud")
        assert second is not None and second.access_token == "second"
    finally:
        await only_new.close()

    only_old = await Store.open(with_key(settings, old))
    try:
        with pytest.raises(TokenDecryptError) as caught:
            await only_old.accounts.credentials("usr_r", "spotify")
        message = str(caught.value)
        assert "PARLEY_TOKEN_KEY" in message
        for secret in (ACCESS, REFRESH, old, new):
            assert secret not in message
    finally:
        await only_old.close()


def test_bad_keys_are_refused_without_echo() -> None:
    with pytest.raises(TokenKeyError, match="#2") as caught:
        TokenCipher([generate_key(), "not-a-key-but-a-secret-value"])
    assert "not-a-key-but-a-secret-value" not in str(caught.value)
    with pytest.raises(TokenKeyError):
        TokenCipher([])
    with pytest.raises(TokenDecryptError):
        TokenCipher([generate_key()]).decrypt(b"gAAAAAtampered")
    cipher = TokenCipher([generate_key()])
    token = cipher.encrypt("x")
    assert cipher.is_current(token) and cipher.decrypt(token) == "x"


async def test_a_wrong_environment_key_stops_the_store(tmp_path: Path) -> None:
    settings = StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)
    with pytest.raises(TokenKeyError):
        await Store.open(with_key(settings, "short"))


def test_key_file_is_private_and_generated_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    key = load_or_create_key(data_dir)
    path = data_dir / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in data_dir.iterdir()] == [KEY_FILE]
    assert load_or_create_key(data_dir) == key
    TokenCipher([key])  # a valid Fernet key
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert load_or_create_key(data_dir) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "0600" in caplog.text and key not in caplog.text


async def test_embedded_store_generates_its_key_file(tmp_path: Path) -> None:
    settings = StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)
    store = await Store.open(settings)
    try:
        await store.accounts.save("usr_k", "spotify", grant())
    finally:
        await store.close()
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    again = await Store.open(settings)  # the same key opens the rows after a restart
    try:
        creds = await again.accounts.credentials("usr_k", "spotify")
        assert creds is not None and creds.access_token == ACCESS
    finally:
        await again.close()


async def test_migration_0007_matches_the_models(backend: str, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from store.models import Base

    settings = store_settings(backend, tmp_path / "m")
    engine = await empty_database(settings)

    def tables(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    def user_columns(conn: Connection) -> set[str]:
        return {c["name"] for c in inspect(conn).get_columns("users")}

    def differences(conn: Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        ours = {"platform_accounts", "users"}
        diffs = compare_metadata(ctx, Base.metadata)

        def table_of(diff: Any) -> str | None:
            item = diff[0] if isinstance(diff, list) else diff
            kind = item[0]
            if kind in ("add_table", "remove_table"):
                return str(item[1].name)
            if kind in ("add_column", "remove_column") or kind.startswith("modify_"):
                return str(item[2])
            if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
                return str(item[1].table.name)
            if kind in ("add_fk", "remove_fk"):
                return str(item[1].parent.name)
            return None

        return [d for d in diffs if table_of(d) in ours]

    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0006")
            assert "platform_accounts" not in await conn.run_sync(tables)
            assert await conn.run_sync(differences)  # the check sees what 0007 adds
            await conn.execute(
                text("INSERT INTO users (id, created_at) VALUES ('u1', CURRENT_TIMESTAMP)")
            )
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0007")
            assert "platform_accounts" in await conn.run_sync(tables)
            assert "preferred_platform" in await conn.run_sync(user_columns)
            assert await conn.run_sync(differences) == []
            await conn.execute(
                text(
                    "INSERT INTO platform_accounts (user_id, platform, access_token, scopes,"
                    " status, created_at, updated_at) VALUES ('u1', 'spotify', :t, '[]',"
                    " 'connected', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"t": b"gAAAAA-opaque"},
            )
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0006", True)
            assert "platform_accounts" not in await conn.run_sync(tables)
            assert "preferred_platform" not in await conn.run_sync(user_columns)
            assert await conn.scalar(text("SELECT id FROM users")) == "u1"  # users survive
    finally:
        await engine.dispose()
        await drop_schema(settings)
