"""A small in-process runner of periodic jobs (store purge and retention, memory trim).

The app's lifespan owns one ``JobRunner`` per worker process: every worker
trims its own memory, and only worker 0 purges the shared store (several
workers must not all do it; see ``maintenance_jobs``). The runner is one task: it sleeps
until the earliest due job, runs the due jobs one after another, and
schedules each again ``interval_s`` after its run ended. A job is bounded by
its ``timeout_s``; a job that fails or times out is logged by exception class
only (never its message, which may hold data) and counted, and runs again at
its next turn: a failing job never stops the runner or the other jobs.
``aclose()`` cancels the task (a running job with it) and reaps it;
``CancelledError`` always propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from signaling import allocator
from signaling.library_sync import JOB_NAME as LIBRARY_SYNC_JOB
from signaling.library_sync import SCAN_INTERVAL_S, LibrarySync
from store.models import utcnow

if TYPE_CHECKING:
    from signaling.state import AppState

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    """A periodic job and what it did so far."""

    name: str
    interval_s: float
    run: Callable[[], Awaitable[object]]
    first_delay_s: float = 60.0
    """Delay of the first run after ``start`` (not on the start-up path)."""
    timeout_s: float | None = None
    """Longest a run may take (None: ``interval_s``)."""
    runs: int = 0
    failures: int = 0
    last_error: str | None = None
    """Exception class of the last failed run (None after a success)."""
    next_at: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.first_delay_s < 0:
            raise ValueError(f"job {self.name}: interval must be positive, first delay >= 0")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"job {self.name}: timeout must be positive")


class JobRunner:
    """Runs ``jobs`` periodically in one task (see the module docstring)."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique")
        self.jobs: dict[str, Job] = {job.name: job for job in jobs}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether the runner's task is alive."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Schedule every job's first run and start the task (idempotent)."""
        if self._task is not None:
            return
        now = time.monotonic()
        for job in self.jobs.values():
            job.next_at = now + job.first_delay_s
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="jobs")

    def run_soon(self, name: str) -> None:
        """Make a job due now (e.g. after a burst of work); ``KeyError`` for an unknown job."""
        self.jobs[name].next_at = time.monotonic()
        self._wake.set()

    async def run_once(self, name: str) -> bool:
        """Run one job now, outside the schedule; returns whether it succeeded."""
        return await self._run(self.jobs[name])

    async def _loop(self) -> None:
        if not self.jobs:
            return
        while True:
            now = time.monotonic()
            due = sorted(
                (job for job in self.jobs.values() if job.next_at <= now),
                key=lambda job: job.next_at,
            )
            for job in due:
                await self._run(job)
                job.next_at = time.monotonic() + job.interval_s
            wait = min(job.next_at for job in self.jobs.values()) - time.monotonic()
            if wait > 0:
                self._wake.clear()
                # Sleep until the next job is due, or until a job is added (``_wake``).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def _run(self, job: Job) -> bool:
        started = time.monotonic()
        try:
            async with asyncio.timeout(job.timeout_s or job.interval_s):
                await job.run()
        except Exception as exc:  # TimeoutError included; CancelledError propagates
            job.failures += 1
            job.last_error = type(exc).__name__
            log.warning(
                "job %s failed (%s); next run in %.0f s", job.name, job.last_error, job.interval_s
            )
            return False
        job.runs += 1
        job.last_error = None
        log.debug("job %s ran in %.2f s", job.name, time.monotonic() - started)
        return True

    async def aclose(self) -> None:
        """Cancel the task (and a job it runs) and reap it; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def describe(self) -> dict[str, dict[str, object]]:
        """Each job's counters, for ``/health``."""
        return {
            job.name: {"runs": job.runs, "failures": job.failures, "last_error": job.last_error}
            for job in self.jobs.values()
        }


def library_jobs(
    sync: LibrarySync, *, scan: bool, scan_interval_s: float = SCAN_INTERVAL_S
) -> list[Job]:
    """The in-process job of the library sync (embedded mode, no Redis).

    Each run syncs the accounts requested since the last (``LibrarySync.request``,
    then ``JobRunner.run_soon(LIBRARY_SYNC_JOB)``) and, with ``scan`` (worker 0 only:
    the accounts are shared), every account due for its periodic sync.
    """

    async def run() -> None:
        await sync.run_pending()
        if scan:
            await sync.sync_due()

    return [Job(LIBRARY_SYNC_JOB, scan_interval_s, run, first_delay_s=min(scan_interval_s, 30.0))]


ROOM_GRACE_S = 3600.0
"""Rooms are purged this long after their join tokens expired."""
MEMORY_TRIM_INTERVAL_S = 60.0
"""Period of the memory trim (each worker)."""


def maintenance_jobs(st: AppState) -> list[Job]:
    """The server's periodic jobs: this process's, plus the shared ones on worker 0.

    ``memory-trim`` (every worker, every ``MEMORY_TRIM_INTERVAL_S``): while the
    worker carries no call, collect garbage cycles and hand the memory freed
    back to the system (``signaling.allocator``), so RSS and threads return
    after a burst of calls or requests.

    ``store-purge`` (worker 0 only: the store is shared) applies ``Store.purge``
    every ``PARLEY_PURGE_INTERVAL_S``: phrase audio and cache clean-up,
    unused anonymous sessions, ``PARLEY_RETENTION_DAYS``, and rooms whose
    join tokens expired over ``ROOM_GRACE_S`` ago. The sessions of this
    worker's live calls are kept explicitly; another worker's live call keeps
    its session by the rules themselves unless it has run longer than the
    anonymous TTL without a single turn (the idle timeouts end such a call
    first) or longer than the retention.

    ``library-sync`` (embedded mode only; with Redis arq runs it, see
    ``signaling.sync_queue``): the library syncs requested when accounts were
    linked in this worker, and on worker 0 every account due for its periodic
    sync (``signaling.library_sync``).
    """
    jobs: list[Job] = []

    async def trim_memory() -> None:
        if st.calls.active:  # never stall a live call's loop or threads
            return
        # A full collection first, on the loop thread where the objects live: an
        # ended call's peer connection sits in reference cycles (aiortc's callbacks),
        # holding its codec contexts, their FFmpeg threads and buffers until the next
        # full collection, which an idle process may not reach for a long time.
        allocator.collect()
        await asyncio.to_thread(allocator.trim)

    jobs.append(Job("memory-trim", MEMORY_TRIM_INTERVAL_S, trim_memory))
    music = st.music
    if music is not None and music.queue is None and music.platforms:
        # In-process library sync (no Redis: arq runs it otherwise): every worker runs
        # the syncs its own connect hooks requested; worker 0 also scans for due accounts.
        jobs.extend(library_jobs(music.sync, scan=st.settings.worker_index == 0))
    if st.settings.worker_index == 0:
        interval = st.store.settings.purge_interval_s
        room_ttl_s = st.settings.token_ttl_s + ROOM_GRACE_S

        async def purge() -> None:
            live = {call.session.id for call in st.calls.calls()}
            rooms_before = utcnow() - dt.timedelta(seconds=room_ttl_s)
            await st.store.purge(keep_sessions=live, rooms_created_before=rooms_before)

        jobs.append(Job("store-purge", interval, purge, first_delay_s=min(interval, 60.0)))
    return jobs
