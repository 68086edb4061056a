"""The periodic job runner: runs jobs on schedule, survives failing and hanging jobs
(logged by class, never by message), is reaped at close, and in the app runs the
store's purge on worker 0 only.

No assert depends on how long anything took: the tests wait for counts, and the
``GUARD_S`` timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signaling import allocator
from signaling.app import create_app
from signaling.jobs import Job, JobRunner
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from tests.fakes import fake_models
from tests.server import TEST_SECRET, app_state

GUARD_S = 30.0


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD_S):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def _running() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def test_jobs_run_on_their_schedule_and_the_task_is_reaped() -> None:
    before = _running()
    ticks: list[str] = []

    async def tick(name: str) -> None:
        ticks.append(name)

    runner = JobRunner(
        [
            Job("fast", 0.01, lambda: tick("fast"), first_delay_s=0),
            Job("slow", 3600.0, lambda: tick("slow"), first_delay_s=3600.0),
        ]
    )
    runner.start()
    await _until(lambda: ticks.count("fast") >= 3)
    assert "slow" not in ticks  # not due for an hour
    runner.run_soon("slow")
    await _until(lambda: "slow" in ticks)
    assert runner.jobs["fast"].runs >= 3 and runner.jobs["slow"].runs == 1
    await runner.aclose()
    assert not runner.running
    assert _running() - before - {asyncio.current_task()} == set()


async def test_a_failing_job_is_logged_by_class_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks = 0

    async def fail() -> None:
        raise ValueError("secret transcript text")

    async def tick() -> None:
        nonlocal ticks
        ticks += 1

    runner = JobRunner(
        [Job("bad", 0.01, fail, first_delay_s=0), Job("good", 0.01, tick, first_delay_s=0)]
    )
    with caplog.at_level(logging.WARNING, logger="signaling.jobs"):
        runner.start()
        await _until(lambda: runner.jobs["bad"].failures >= 3 and ticks >= 3)
        await runner.aclose()
    assert runner.jobs["bad"].last_error == "ValueError"
    assert runner.jobs["bad"].runs == 0
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "job bad failed (ValueError)" in logged
    assert "secret transcript text" not in logged


async def test_a_hanging_job_times_out_and_is_run_again() -> None:
    started = 0

    async def hang() -> None:
        nonlocal started
        started += 1
        await asyncio.Event().wait()

    runner = JobRunner([Job("hang", 0.01, hang, first_delay_s=0, timeout_s=0.02)])
    runner.start()
    await _until(lambda: runner.jobs["hang"].failures >= 2)
    await runner.aclose()
    assert runner.jobs["hang"].last_error == "TimeoutError"
    assert started >= 2


async def test_close_cancels_a_running_job() -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def long_job() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = JobRunner([Job("long", 3600.0, long_job, first_delay_s=0)])
    runner.start()
    async with asyncio.timeout(GUARD_S):
        await entered.wait()
    await runner.aclose()
    assert cancelled.is_set() and not runner.running


def test_job_names_and_intervals_are_checked() -> None:
    async def noop() -> None:
        return None

    with pytest.raises(ValueError, match="unique"):
        JobRunner([Job("a", 1.0, noop), Job("a", 2.0, noop)])
    with pytest.raises(ValueError, match="interval must be positive"):
        Job("b", 0.0, noop)


class _Node:
    """An object in a reference cycle (as an ended call's peer connection is)."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.parametrize(("worker", "purges"), [(0, True), (1, False)])
async def test_the_app_purges_the_store_on_worker_zero_only(
    tmp_path: Path, worker: int, purges: bool
) -> None:
    settings = ServerSettings(
        host="127.0.0.1", jwt_secret=TEST_SECRET, worker_index=worker, worker_count=2
    )
    store = StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)
    app = create_app(settings, models=fake_models(), store_settings=store)
    async with app.router.lifespan_context(app):
        st = app_state(app)
        assert st.jobs is not None
        assert ("store-purge" in st.jobs.jobs) is purges
        if purges:
            await st.store.sessions.create("ses_unused", "text")
            assert await st.jobs.run_once("store-purge")
            assert st.jobs.jobs["store-purge"].runs == 1
        # every worker collects its garbage cycles and trims its own heap (glibc)
        trims, collections = allocator.STATS.trims, allocator.STATS.collections
        gc.disable()  # only the job may free the cycle
        try:
            held = weakref.ref(_Node())
            assert held() is not None
            assert await st.jobs.run_once("memory-trim")
            assert held() is None  # no call is live: the cycle was collected
        finally:
            gc.enable()
        assert allocator.STATS.collections == collections + 1
        assert allocator.STATS.trims == trims + allocator.available()
        jobs = st.jobs
    assert not jobs.running  # the lifespan reaped it
