"""The library sync: liked songs and playlists copied into the store, on connect and on a
schedule, in process (JobRunner) and on arq (Redis), on both store backends."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from agent.platforms.base import MusicPlatform, NotConnectedError, Track
from agent.platforms.spotify import SpotifyPlatform
from signaling.jobs import JobRunner, library_jobs
from signaling.library_sync import JOB_NAME, LibrarySync
from signaling.music import Music
from signaling.music_search import TieredMusicResolver
from signaling.sync_queue import SyncQueue
from store.library import (
    LibraryCounts,
    LibraryPlaylistRecord,
    LibraryRepository,
    LibraryTrackRecord,
)
from store.platform_accounts import TokenGrant
from store.store import Store
from tests.backends import (
    REDIS_HOST,
    REDIS_PORT,
    SERVER_BACKEND,
    drop_schema,
    empty_database,
    migrate,
    store_settings,
)
from tests.music import MemoryTokens
from tests.proxy import TcpProxy
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
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import Connection, inspect

    from store.models import Base

    settings = store_settings(backend, tmp_path / "m")
    engine = await empty_database(settings)
    ours = {"library_tracks", "library_playlists"}

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


class UnlinkedDuringTheWrite(LibraryRepository):
    """The real repository, with the account unlinked (its row and its library deleted,
    as ``DELETE /v1/platforms/{name}`` does) just before a copy is written: the moment
    between the sync's check of the account and its write."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.db)
        self.store = store

    async def replace(
        self,
        user_id: str,
        platform: str,
        tracks: Sequence[LibraryTrackRecord],
        playlists: Sequence[LibraryPlaylistRecord],
    ) -> LibraryCounts:
        assert await self.store.accounts.delete(user_id, platform)
        await self.store.library.forget(user_id, platform)
        return await super().replace(user_id, platform, tracks, playlists)


async def test_an_unlink_between_the_check_and_the_write_keeps_nothing(rig: Rig) -> None:
    await link(rig.store)
    sync = LibrarySync(
        {"spotify": rig.spotify}, UnlinkedDuringTheWrite(rig.store), rig.store.accounts
    )
    with pytest.raises(NotConnectedError):
        await sync.sync(USER, "spotify")
    counts = await rig.store.library.counts(USER, "spotify")
    assert (counts.tracks, counts.playlists) == (0, 0)
    assert sync.synced == 0


class FailingFor:
    """The real adapter, except that one user's library read fails with an error no
    adapter should raise (a bug, a parser's KeyError): the sync's last line of defence."""

    def __init__(self, adapter: SpotifyPlatform, user_id: str) -> None:
        self.adapter = adapter
        self.user_id = user_id
        self.name = adapter.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.adapter, name)

    async def liked_tracks(self, user_id: str, limit: int = 500) -> list[Track]:
        if user_id == self.user_id:
            raise KeyError("items")
        return await self.adapter.liked_tracks(user_id, limit)


async def test_one_failing_account_never_stops_the_others(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    await link(rig.store, "usr_broken")
    await link(rig.store)
    sync = LibrarySync(
        {"spotify": cast(MusicPlatform, FailingFor(rig.spotify, "usr_broken"))},
        rig.store.library,
        rig.store.accounts,
    )
    assert await sync.sync_due() == 1
    assert (sync.synced, sync.failures) == (1, 1)
    assert (await rig.store.library.counts(USER, "spotify")).tracks == 3
    sync.request("usr_broken", "spotify")
    sync.request(USER, "spotify")
    assert await sync.run_pending() == 1 and sync.failures == 2 and sync.pending == 0
    failures = [r for r in caplog.records if "unexpectedly" in r.getMessage()]
    assert failures and all("KeyError" in r.getMessage() for r in failures)
    assert all("usr_broken" not in r.getMessage() for r in caplog.records)


async def test_a_cancelled_sync_is_not_counted_as_a_failure(rig: Rig) -> None:
    await link(rig.store)
    rig.api.latency_s = 1.0
    syncing = asyncio.create_task(rig.sync.sync_due())
    await asyncio.sleep(0.2)
    syncing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await syncing
    assert rig.sync.failures == 0


async def test_the_arq_scan_enqueues_a_job_per_due_account(rig: Rig, backend: str) -> None:
    if backend != SERVER_BACKEND:
        pytest.skip("arq runs on Redis")
    for user in (USER, "usr_second", "usr_third"):
        await link(rig.store, user)
    settings = rig.store.settings
    assert settings.redis_url is not None
    queue = SyncQueue(rig.sync, settings.redis_url, prefix=settings.key_prefix, poll_delay_s=0.1)
    rig.api.latency_s = 0.3  # each sync takes a while: the scan must not wait for them
    await queue.start()
    try:
        started = asyncio.get_running_loop().time()
        assert await queue.enqueue_due() == 3
        assert asyncio.get_running_loop().time() - started < 0.3
        assert rig.sync.synced == 0  # nothing ran inline: three jobs for the workers
        assert await queue.enqueue_due() == 0  # queued or running: not doubled
        await wait_for(lambda: _true(rig.sync.synced == 3))
        assert queue.enqueued == 3 and rig.sync.failures == 0
    finally:
        await queue.aclose()


async def test_the_arq_worker_restarts_after_a_redis_outage(
    rig: Rig, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend != SERVER_BACKEND:
        pytest.skip("arq runs on Redis")
    await link(rig.store)
    settings = rig.store.settings
    assert settings.redis_url is not None
    proxy = TcpProxy(REDIS_HOST, REDIS_PORT)
    await proxy.start()
    through_proxy = settings.redis_url.replace(f":{REDIS_PORT}", f":{proxy.port}")
    queue = SyncQueue(
        rig.sync,
        through_proxy,
        prefix=settings.key_prefix,
        poll_delay_s=0.1,
        restart_delay_s=0.2,
    )
    await queue.start()
    try:
        assert queue.healthy
        proxy.cut()  # Redis goes away under the running worker
        await wait_for(lambda: _true(not queue.healthy and queue.last_error is not None))
        assert queue.stats()["healthy"] is False
        stopped = [r for r in caplog.records if "arq worker stopped" in r.getMessage()]
        assert stopped and str(queue.last_error) in stopped[0].getMessage()
        await asyncio.sleep(0.5)  # restarts keep failing, with a growing back-off
        proxy.restore()
        await wait_for(lambda: _true(queue.healthy), timeout_s=15.0)
        assert queue.restarts >= 1
        # The restarted worker takes jobs again.
        assert await queue.request(USER, "spotify")
        await wait_for(lambda: _counts_at_least(rig.store, USER, 3))
    finally:
        await queue.aclose()
        await proxy.close()


async def test_queues_under_other_prefixes_do_not_block_each_other(rig: Rig, backend: str) -> None:
    """arq keeps job keys outside any queue: a job of one deployment (or one left queued by
    a stopped worker) must not refuse the same account's sync in another on the same Redis."""
    if backend != SERVER_BACKEND:
        pytest.skip("arq runs on Redis; the embedded store schedules in process")
    await link(rig.store)
    settings = rig.store.settings
    assert settings.redis_url is not None
    left = SyncQueue(rig.sync, settings.redis_url, prefix=settings.key_prefix + "a:")
    await left.start()
    try:
        assert await left.request(USER, "spotify")
    finally:
        await left.aclose()  # its job may stay queued, with its key, for a day
    other = SyncQueue(
        rig.sync, settings.redis_url, prefix=settings.key_prefix + "b:", poll_delay_s=0.1
    )
    assert other.job_id(USER, "spotify") != left.job_id(USER, "spotify")
    await other.start()
    try:
        assert await other.request(USER, "spotify")
        await wait_for(lambda: _counts_at_least(rig.store, USER, 3))
    finally:
        await other.aclose()
