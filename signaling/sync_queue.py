"""The library sync on arq (Redis), for servers that have ``REDIS_URL``.

Every server process runs one arq ``Worker`` in an owned task, all on one
queue (``<PARLEY_REDIS_PREFIX>arq:library``), so a job runs in exactly one
process, whichever is free:

* ``sync_library(user_id, platform)``: one account, enqueued by the
  ``on_connected`` hook with the job id ``library-sync:<platform>:<user>``
  (arq refuses a second job with an id that is queued or running, so a burst of
  re-links makes one sync);
* ``sync_due``: a cron job (``unique``: one run per tick across every process)
  that syncs the accounts whose last sync is older than the interval.

Jobs keep no result (``keep_result=0``): a later link may request the same
account again at once. The worker never handles signals (the server does);
``aclose`` stops it, waits for a running job and closes its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, Final

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.cron import CronJob, cron
from arq.worker import Worker, func

from signaling.library_sync import SCAN_INTERVAL_S, LibrarySync

log = logging.getLogger(__name__)

QUEUE_SUFFIX: Final = "arq:library"
JOB_TIMEOUT_S: Final = 600.0


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
    ) -> None:
        self.sync = sync
        self.queue_name = prefix + QUEUE_SUFFIX
        # One retry: a Redis that is down at start-up must not hold the server's start.
        self._settings = dataclasses.replace(
            RedisSettings.from_dsn(redis_url), conn_retries=1, conn_retry_delay=1
        )
        self._scan_interval_s = scan_interval_s
        self._poll_delay_s = poll_delay_s
        self._pool: ArqRedis | None = None
        self._worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and start this process's worker (idempotent)."""
        if self._task is not None:
            return
        self._pool = await create_pool(self._settings, default_queue_name=self.queue_name)

        async def sync_library(ctx: dict[str, Any], user_id: str, platform: str) -> bool:
            return await self.sync.try_sync(user_id, platform)

        async def sync_due(ctx: dict[str, Any]) -> int:
            return await self.sync.sync_due()

        crons: list[CronJob] = [
            cron(
                sync_due,
                name="sync_due",
                unique=True,
                timeout=JOB_TIMEOUT_S,
                **_schedule(self._scan_interval_s),
            )
        ]
        self._worker = Worker(
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
            redis_pool=self._pool,
            handle_signals=False,
            poll_delay=self._poll_delay_s,
            max_jobs=2,
            keep_result=0,
            log_results=False,
        )
        self._task = asyncio.get_running_loop().create_task(
            self._worker.async_run(), name="library-sync:arq"
        )

    async def request(self, user_id: str, platform: str) -> bool:
        """Enqueue a sync of one account; False when one is already queued or running."""
        if self._pool is None:
            raise RuntimeError("the sync queue is not started")
        if platform not in self.sync.platforms:
            return False
        job = await self._pool.enqueue_job(
            "sync_library", user_id, platform, _job_id=f"library-sync:{platform}:{user_id}"
        )
        return job is not None

    async def aclose(self) -> None:
        """Stop the worker (a running job finishes or is cancelled with it), close Redis."""
        task, self._task = self._task, None
        worker, self._worker = self._worker, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if worker is not None:
            for job_task in list(worker.tasks.values()):
                job_task.cancel()
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await pool.aclose()
