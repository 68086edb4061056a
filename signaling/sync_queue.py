"""The library sync on arq (Redis), for servers that have ``REDIS_URL``.

Every server process runs one arq ``Worker`` in an owned task, all on one
queue (``<PARLEY_REDIS_PREFIX>arq:library``), so a job runs in exactly one
process, whichever is free:

* ``sync_library(user_id, platform)``: one account, enqueued by the
  ``on_connected`` hook with the job id ``<queue>:library-sync:<platform>:<user>``
  (arq refuses a second job with an id that is queued or running, so a burst of
  re-links makes one sync);
* ``sync_due``: a cron job (``unique``: one run per tick across every process)
  that enqueues one ``sync_library`` job per account whose last sync is older
  than the interval, so the syncs spread over every process's worker and one
  slow or failing account holds up no other.

Jobs keep no result (``keep_result=0``): a later link may request the same
account again at once. The worker never handles signals (the server does);
``aclose`` stops it, waits for a running job and closes its connections.

The worker runs under a supervisor (the owned task): when it stops on an
error (Redis unreachable, a connection dropped) the error's class is logged,
the queue reports itself unhealthy (``healthy``, ``stats()`` in ``/health``)
and a new worker is started after a back-off (``restart_delay_s``, doubled
per consecutive failure up to ``MAX_RESTART_DELAY_S``); the queue is healthy
again once a worker has run ``HEALTHY_AFTER_S`` without failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any, Final

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.cron import CronJob, cron
from arq.worker import Worker, func

from signaling.library_sync import SCAN_INTERVAL_S, LibrarySync

log = logging.getLogger(__name__)

QUEUE_SUFFIX: Final = "arq:library"
JOB_TIMEOUT_S: Final = 600.0
RESTART_DELAY_S: Final = 1.0
"""Wait before restarting a worker that stopped on an error (doubled per failure in a row)."""
MAX_RESTART_DELAY_S: Final = 60.0
HEALTHY_AFTER_S: Final = 5.0
"""A (re)started worker that has polled this long without failing is healthy."""


def _schedule(scan_interval_s: float) -> dict[str, Any]:
    """arq cron fields for a scan every ``scan_interval_s`` (whole seconds under a minute,
    whole minutes under an hour, else hours)."""
    step = max(1, round(scan_interval_s))
    if step < 60:
        return {"second": set(range(0, 60, step))}
    if step < 3600:
        return {"minute": set(range(0, 60, max(1, step // 60))), "second": 0}
    return {"hour": set(range(0, 24, max(1, step // 3600))), "minute": 0, "second": 0}


class SyncQueue:
    """The library sync's arq queue and this process's worker (see the module docstring)."""

    def __init__(
        self,
        sync: LibrarySync,
        redis_url: str,
        *,
        prefix: str = "parley:",
        scan_interval_s: float = SCAN_INTERVAL_S,
        poll_delay_s: float = 0.5,
        restart_delay_s: float = RESTART_DELAY_S,
    ) -> None:
        self.sync = sync
        self.queue_name = prefix + QUEUE_SUFFIX
        # One retry: a Redis that is down at start-up must not hold the server's start.
        self._settings = dataclasses.replace(
            RedisSettings.from_dsn(redis_url), conn_retries=1, conn_retry_delay=1
        )
        self._scan_interval_s = scan_interval_s
        self._poll_delay_s = poll_delay_s
        self._restart_delay_s = restart_delay_s
        self._pool: ArqRedis | None = None
        self._worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._failing = False
        self.restarts = 0
        """Workers started again after one stopped on an error."""
        self.last_error: str | None = None
        """The exception class that last stopped a worker."""
        self.enqueued = 0
        """``sync_library`` jobs this process enqueued (connect requests and scans)."""

    @property
    def healthy(self) -> bool:
        """Whether this process's worker is running and has not failed lately."""
        if self._task is None or self._task.done() or self._failing:
            return False
        return self.restarts == 0 or time.monotonic() - self._started_at >= HEALTHY_AFTER_S

    def stats(self) -> dict[str, Any]:
        """The queue's state for ``/health``."""
        return {
            "healthy": self.healthy,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "enqueued": self.enqueued,
        }

    async def start(self) -> None:
        """Connect and start this process's worker (idempotent)."""
        if self._task is not None:
            return
        self._pool = await create_pool(self._settings, default_queue_name=self.queue_name)
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(self._pool), name="library-sync:arq"
        )

    async def _supervise(self, pool: ArqRedis) -> None:
        """Run a worker; when it stops on an error, log it and start another after a
        back-off (see the module docstring). Ends only when cancelled."""
        delay = self._restart_delay_s
        while True:
            worker = self._new_worker(pool)
            self._worker = worker
            self._started_at = time.monotonic()
            try:
                await worker.async_run()
                raise RuntimeError("the arq worker returned")  # it polls until cancelled
            except Exception as exc:
                if time.monotonic() - self._started_at > MAX_RESTART_DELAY_S:
                    delay = self._restart_delay_s  # it had run a good while: not a failure loop
                self._failing = True
                self.last_error = type(exc).__name__
                log.error(
                    "library sync: the arq worker stopped (%s); restarting in %.1f s",
                    type(exc).__name__,
                    delay,
                )
            finally:
                await _reap_jobs(worker)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
            self.restarts += 1
            self._failing = False

    def _new_worker(self, pool: ArqRedis) -> Worker:
        async def sync_library(ctx: dict[str, Any], user_id: str, platform: str) -> bool:
            return await self.sync.try_sync(user_id, platform)

        async def sync_due(ctx: dict[str, Any]) -> int:
            return await self.enqueue_due()

        crons: list[CronJob] = [
            cron(
                sync_due,
                name="sync_due",
                unique=True,
                timeout=JOB_TIMEOUT_S,
                **_schedule(self._scan_interval_s),
            )
        ]
        return Worker(
            functions=[
                func(
                    sync_library,
                    name="sync_library",
                    keep_result=0,
                    timeout=JOB_TIMEOUT_S,
                    max_tries=1,
                )
            ],
            cron_jobs=crons,
            queue_name=self.queue_name,
            redis_pool=pool,
            handle_signals=False,
            poll_delay=self._poll_delay_s,
            max_jobs=2,
            keep_result=0,
            log_results=False,
        )

    def job_id(self, user_id: str, platform: str) -> str:
        """The arq job id of one account's sync, under this queue's name: arq keeps job
        keys outside any queue (``arq:job:<id>``), so without it two deployments sharing
        a Redis, or a job left queued by a stopped worker, would block each other's."""
        return f"{self.queue_name}:library-sync:{platform}:{user_id}"

    async def request(self, user_id: str, platform: str) -> bool:
        """Enqueue a sync of one account; False when one is already queued or running."""
        if self._pool is None:
            raise RuntimeError("the sync queue is not started")
        if platform not in self.sync.platforms:
            return False
        job = await self._pool.enqueue_job(
            "sync_library", user_id, platform, _job_id=self.job_id(user_id, platform)
        )
        if job is None:
            return False
        self.enqueued += 1
        return True

    async def enqueue_due(self) -> int:
        """Enqueue a sync of every account due for one (``LibrarySync.due``); returns how
        many jobs were enqueued (an account whose job is queued or running is not)."""
        enqueued = 0
        for user_id, platform in await self.sync.due():
            enqueued += await self.request(user_id, platform)
        return enqueued

    async def aclose(self) -> None:
        """Stop the worker (a running job finishes or is cancelled with it), close Redis."""
        task, self._task = self._task, None
        worker, self._worker = self._worker, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if worker is not None:
            await _reap_jobs(worker)
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await pool.aclose()


async def _reap_jobs(worker: Worker) -> None:
    """Cancel a stopped worker's running jobs and wait for them."""
    jobs = list(worker.tasks.values())
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
