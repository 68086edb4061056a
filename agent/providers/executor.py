"""Dedicated worker threads for CPU-bound inference, with priorities and prompt cancellation.

Each local model gets its own small executor, so a long STT decode never
queues behind TTS synthesis (and vice versa), and the event loop never runs
inference. On a 2-core machine each stage gets one thread by default.

Unlike ``concurrent.futures.ThreadPoolExecutor``:

* jobs wait in a priority queue (lower number first, first-in first-out
  within a priority), so a final transcript overtakes queued partial ones;
* cancelling the future of a queued job (or the task awaiting ``run``)
  removes the job from the queue at once: it never runs;
* ``shutdown()`` never blocks the event loop: queued jobs fail with
  ``ExecutorClosedError`` at once, a running job finishes on its worker
  thread (models stop it through their own stop flags) and an optional
  finalizer (freeing the model) runs on that thread after it.

The workers are daemon threads, so a stuck native call can never keep the
process from exiting; an ``atexit`` hook still shuts every executor down and
gives running jobs a bounded time to end before the interpreter tears down.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, TypeVarTuple

from agent.errors import ProviderError

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

EXIT_JOIN_S = 10.0
"""At interpreter exit, how long running jobs get to finish before the process goes on."""

_LIVE: weakref.WeakSet[InferenceExecutor] = weakref.WeakSet()


class ExecutorClosedError(ProviderError):
    """The executor was shut down before the job could run (not retryable)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "inference executor is shut down", retryable=False)


@dataclass(eq=False, slots=True)
class _Job:
    """One queued call; ordered by (priority, sequence) in the heap."""

    priority: int
    seq: int
    call: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: JobFuture[Any] = field(init=False)
    started: bool = False

    def __lt__(self, other: _Job) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


class JobFuture(asyncio.Future[T]):
    """The asyncio future of a job; ``cancel()`` also takes a queued job off the queue.

    Cancelling the task that awaits this future cancels the future itself,
    so ``task.cancel()`` dequeues the job synchronously, before it returns.
    """

    def __init__(self, executor: InferenceExecutor, job: _Job) -> None:
        super().__init__(loop=job.loop)
        self._executor = executor
        self._job = job

    @property
    def started(self) -> bool:
        """Whether a worker thread has taken the job (it then runs to its end)."""
        with self._executor._cond:
            return self._job.started

    def cancel(self, msg: Any | None = None) -> bool:
        """Cancel the future; a job still queued is removed and never runs."""
        self._executor._discard(self._job)
        return super().cancel(msg)


class InferenceExecutor:
    """Worker threads that run blocking inference calls for asyncio code, by priority."""

    def __init__(self, name: str, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.name = name
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._closed = False
        self._running = 0
        self._finalizer: Callable[[], None] | None = None
        self._alive = workers
        self._threads = [
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------ API

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        with self._cond:
            return len(self._heap)

    @property
    def running(self) -> int:
        """Jobs a worker is executing now."""
        with self._cond:
            return self._running

    @property
    def closed(self) -> bool:
        """Whether ``shutdown()`` was called."""
        return self._closed

    def submit(self, fn: Callable[[*Ts], T], *args: *Ts, priority: int = 0) -> JobFuture[T]:
        """Queue ``fn(*args)`` and return its future (call from the event loop).

        The call runs in a copy of the caller's context (contextvars). Raises
        ``ExecutorClosedError`` after ``shutdown()``.
        """
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()

        def call() -> T:
            return ctx.run(fn, *args)

        with self._cond:
            if self._closed:
                raise ExecutorClosedError(self.name)
            job = _Job(priority, next(self._seq), call, loop)
            future: JobFuture[T] = JobFuture(self, job)
            job.future = future
            heapq.heappush(self._heap, job)
            self._cond.notify()
        return future

    async def run(self, fn: Callable[[*Ts], T], *args: *Ts, priority: int = 0) -> T:
        """Run ``fn(*args)`` on a worker thread and await its result.

        Lower ``priority`` numbers run first. If the awaiting task is
        cancelled while the job is still queued, the job is removed and never
        runs; once running, it finishes on its thread and its result is dropped.
        """
        return await self.submit(fn, *args, priority=priority)

    def shutdown(self, *, finalizer: Callable[[], None] | None = None, wait: bool = False) -> None:
        """Stop the workers; idempotent.

        Queued jobs fail with ``ExecutorClosedError`` at once; a running job
        finishes on its thread, then ``finalizer`` (e.g. freeing the model)
        runs there. Without ``wait`` this returns at once (safe on the event
        loop); ``wait=True`` joins the threads (for synchronous tools only).
        """
        with self._cond:
            first = not self._closed
            self._closed = True
            dropped = self._heap
            self._heap = []
            if first:
                self._finalizer = finalizer  # run by the last worker to exit
            self._cond.notify_all()
        for job in dropped:
            _settle(job, None, ExecutorClosedError(self.name))
        if wait:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        """Block until the worker threads have exited (after ``shutdown()``).

        Blocking: for synchronous tools and interpreter exit, never the event
        loop. Returns False when ``timeout`` ran out first.
        """
        me = threading.current_thread()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is me:
                continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
            if thread.is_alive():
                return False
        return True

    # ------------------------------------------------------------ internals

    def _discard(self, job: _Job) -> None:
        """Take ``job`` off the queue if no worker has started it."""
        with self._cond:
            if job.started:
                return
            try:
                self._heap.remove(job)
            except ValueError:
                return
            heapq.heapify(self._heap)

    def _worker(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._heap and not self._closed:
                        self._cond.wait()
                    if not self._heap:
                        return
                    job = heapq.heappop(self._heap)
                    job.started = True
                    self._running += 1
                try:
                    result = job.call()
                except Exception as exc:
                    _settle(job, None, exc)
                except BaseException as exc:  # SystemExit/KeyboardInterrupt raised by fn
                    _settle(job, None, RuntimeError(f"job raised {type(exc).__name__}"))
                else:
                    _settle(job, result, None)
                finally:
                    with self._cond:
                        self._running -= 1
                del job
        finally:
            with self._cond:
                self._alive -= 1
                last = self._alive == 0
            if last:
                self._run_finalizer()

    def _run_finalizer(self) -> None:
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is None:
            return
        try:
            finalizer()
        except Exception:
            log.exception("finalizer of executor %s failed", self.name)


def _settle(job: _Job, result: object, exc: BaseException | None) -> None:
    """Hand a job's outcome to its event loop (from any thread)."""

    def settle() -> None:
        future = job.future
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits the result
        job.loop.call_soon_threadsafe(settle)


@atexit.register
def _shutdown_all() -> None:
    """At interpreter exit: drop queued jobs and let running ones finish (bounded).

    The worker threads are daemons, so a stuck native call can never keep the
    process alive; this hook still gives running jobs (and the finalizers that
    free models) a bounded chance to end before the interpreter tears down.
    """
    executors = list(_LIVE)
    for executor in executors:
        executor.shutdown()
    deadline = time.monotonic() + EXIT_JOIN_S
    for executor in executors:
        executor.join(max(0.0, deadline - time.monotonic()))
