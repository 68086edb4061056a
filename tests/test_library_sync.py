"""The library sync: liked songs and playlists copied into the store, on connect and on a
schedule, in process (JobRunner) and on arq (Redis), on both store backends."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.platforms.spotify import SpotifyPlatform
from signaling.jobs import JobRunner, library_jobs
from signaling.library_sync import JOB_NAME, LibrarySync
from signaling.music import Music
from signaling.music_search import TieredMusicResolver
from signaling.sync_queue import SyncQueue
from store.platform_accounts import TokenGrant
from store.store import Store
from tests.backends import SERVER_BACKEND, drop_schema, store_settings
from tests.music import MemoryTokens
from tests.vendors.spotify_api import FakePlaylist, SpotifyAPI

USER = "usr_sync"


@dataclass
class Rig:
    store: Store
    api: SpotifyAPI
    spotify: SpotifyPlatform
    sync: LibrarySync


async def link(store: Store, user: str = USER) -> None:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    await store.accounts.save(user, "spotify", TokenGrant("spotify-token-1", "refresh", expires))


@pytest.fixture(name="rig")
async def rig_fixture(store: Store) -> AsyncIterator[Rig]:
    async with SpotifyAPI(tokens={"spotify-token-1"}) as api:
        api.like(api.song("Shape of You"), api.song("Yellow"), api.song("Halo"))
        api.add_playlist(
            FakePlaylist("Workout", uris=[f"spotify:track:{api.song('Believer').spotify_id}"])
        )
        api.add_playlist(FakePlaylist("Theirs", owner="someone-else"))
        spotify = SpotifyPlatform(MemoryTokens("spotify-token-1"), base_url=api.base_url)
        sync = LibrarySync({"spotify": spotify}, store.library, store.accounts)
        try:
            yield Rig(store, api, spotify, sync)
        finally:
            await spotify.aclose()


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll ``condition()`` until it is true."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_sync_writes_the_library_and_replaces_it(rig: Rig) -> None:
    await link(rig.store)
    counts = await rig.sync.sync(USER, "spotify")
    assert (counts.tracks, counts.playlists) == (3, 2)
    stored = await rig.store.library.counts(USER, "spotify")
    assert (stored.tracks, stored.playlists) == (3, 2)
    info = await rig.store.accounts.info(USER, "spotify")
    assert info is not None and info.last_sync_at is not None
    found = await rig.store.library.find_tracks(USER, "spotify", "play halo by beyonce")
    assert [t.name for t in found] == ["Halo"]
    playlists = {p.name: p.owned for p in await rig.store.library.playlists(USER, "spotify")}
    assert playlists == {"Workout": True, "Theirs": False}
    # The user unlikes a song on the platform: the next sync drops it.
    rig.api.liked.remove(f"spotify:track:{rig.api.song('Halo').spotify_id}")
    await rig.sync.sync(USER, "spotify")
    assert await rig.store.library.find_tracks(USER, "spotify", "halo") == []
    assert (await rig.store.library.counts(USER, "spotify")).tracks == 2
    assert await rig.store.library.forget(USER, "spotify") == 4


async def test_the_in_process_job_syncs_on_connect_and_on_schedule(rig: Rig) -> None:
    await link(rig.store)
    short = LibrarySync(
        {"spotify": rig.spotify}, rig.store.library, rig.store.accounts, interval_s=0.6
    )
    runner = JobRunner(library_jobs(short, scan=True, scan_interval_s=0.2))
    runner.start()
    try:
        # Never synced: due at the first scan; then again every 0.6 s.
        await wait_for(lambda: _true(short.synced >= 1))
        first = await rig.store.accounts.info(USER, "spotify")
        await wait_for(lambda: _true(short.synced >= 3))
        later = await rig.store.accounts.info(USER, "spotify")
        assert first is not None and later is not None
        assert first.last_sync_at is not None and later.last_sync_at is not None
        assert later.last_sync_at > first.last_sync_at
        # A newly linked account is synced at once through the hook, not at the next scan.
        await link(rig.store, "usr_new")
        music = Music({"spotify": rig.spotify}, _resolver(rig), short)
        music.wake = lambda: runner.run_soon(JOB_NAME)
        info = await rig.store.accounts.info("usr_new", "spotify")
        assert info is not None
        await music.connected(info)
        await wait_for(
            lambda: _counts_at_least(rig.store, "usr_new", 3),
            timeout_s=5.0,
        )
        assert short.pending == 0
    finally:
        await runner.aclose()
    assert runner.jobs[JOB_NAME].failures == 0


async def test_a_failing_platform_is_counted_and_retried_later(rig: Rig) -> None:
    await link(rig.store)
    rig.api.tokens.clear()  # the token is refused and the refresh mints one the fake refuses
    assert not await rig.sync.try_sync(USER, "spotify")
    assert rig.sync.failures == 1
    assert (await rig.store.library.counts(USER, "spotify")).tracks == 0


async def test_arq_runs_connect_requests_and_the_periodic_scan(rig: Rig, backend: str) -> None:
    if backend != SERVER_BACKEND:
        pytest.skip("arq runs on Redis; the embedded store schedules in process")
    await link(rig.store)
    settings = rig.store.settings
    assert settings.redis_url is not None
    queue = SyncQueue(
        rig.sync,
        settings.redis_url,
        prefix=settings.key_prefix,
        scan_interval_s=1,
        poll_delay_s=0.1,
    )
    await queue.start()
    try:
        assert await queue.request(USER, "spotify")
        await wait_for(lambda: _counts_at_least(rig.store, USER, 3))
        synced = rig.sync.synced
        # The cron scan (every second here) finds the account due once the interval passed.
        rig.sync.interval_s = 0.5
        await wait_for(lambda: _true(rig.sync.synced > synced), timeout_s=10.0)
        assert not await queue.request(USER, "tidal")  # not a configured platform
    finally:
        await queue.aclose()


async def _true(value: bool) -> bool:
    return value


async def _counts_at_least(store: Store, user: str, tracks: int) -> bool:
    return (await store.library.counts(user, "spotify")).tracks >= tracks


def _resolver(rig: Rig) -> TieredMusicResolver:
    return TieredMusicResolver({"spotify": rig.spotify}, rig.store.cache, rig.store.library)


async def test_migration_0008_matches_the_models(backend: str, tmp_path: Path) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import Connection, inspect

    from store.db import alembic_config, ensure_schema, make_engine
    from store.models import Base

    settings = store_settings(backend, tmp_path / "m")
    args: dict[str, object] = {}
    if settings.db_schema:
        await ensure_schema(settings.sqlalchemy_url(), settings.db_schema)
        args["server_settings"] = {"search_path": settings.db_schema}
    else:
        settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.sqlalchemy_url(), connect_args=args)
    ours = {"library_tracks", "library_playlists"}

    def migrate(conn: Connection, revision: str, down: bool = False) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)

    def tables(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    def differences(conn: Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})

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

        return [d for d in compare_metadata(ctx, Base.metadata) if table_of(d) in ours]

    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0007")
            assert not ours & await conn.run_sync(tables)
            assert await conn.run_sync(differences)  # the check sees what 0008 adds
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0008")
            assert ours <= await conn.run_sync(tables)
            assert await conn.run_sync(differences) == []
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0007", True)
            assert not ours & await conn.run_sync(tables)
    finally:
        await engine.dispose()
        await drop_schema(settings)


async def test_unlinking_forgets_the_library_and_the_pending_sync(rig: Rig) -> None:
    await link(rig.store)
    await link(rig.store, "usr_kept")
    await rig.sync.sync(USER, "spotify")
    await rig.sync.sync("usr_kept", "spotify")
    rig.sync.request(USER, "spotify")
    rig.sync.request("usr_kept", "spotify")
    assert await rig.store.accounts.delete(USER, "spotify")
    removed = await rig.sync.forget(USER, "spotify")
    assert removed == 5  # 3 liked tracks, 2 playlists
    assert rig.sync.pending == 1  # the other account's request stays
    gone = await rig.store.library.counts(USER, "spotify")
    kept = await rig.store.library.counts("usr_kept", "spotify")
    assert (gone.tracks, gone.playlists) == (0, 0)
    assert (kept.tracks, kept.playlists) == (3, 2)
    assert await rig.sync.run_pending() == 1
    assert (await rig.store.library.counts(USER, "spotify")).tracks == 0


async def test_a_sync_racing_an_unlink_keeps_nothing(rig: Rig) -> None:
    await link(rig.store)
    rig.api.latency_s = 0.3  # the sync is still reading when the account goes
    syncing = asyncio.create_task(rig.sync.try_sync(USER, "spotify"))
    await asyncio.sleep(0.1)
    assert await rig.store.accounts.delete(USER, "spotify")
    await rig.sync.forget(USER, "spotify")
    assert await syncing is False
    counts = await rig.store.library.counts(USER, "spotify")
    assert (counts.tracks, counts.playlists) == (0, 0)
