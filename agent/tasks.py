"""Owned tasks: every task has an owner that reaps it and reads its outcome."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

FailureHandler = Callable[[asyncio.Task[Any], BaseException], None]


def describe_failure(exc: BaseException) -> str:
    """An exception's class and where it was raised, without its message.

    Messages may carry what a caller said or a provider's response body, so
    logs get only this (transcripts and secrets never go to logs).
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
    return f"{type(exc).__name__} at {where} in {last.name}"


class TaskOwner:
    """A set of tasks that ends together.

    ``spawn`` names and tracks a task; when one fails (raises anything but
    ``CancelledError``), ``on_failure`` is called with it; ``aclose`` cancels
    whatever still runs and waits for all of it. Nothing is fire-and-forget.
    """

    def __init__(self, owner: str, on_failure: FailureHandler | None = None) -> None:
        self.owner = owner
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Start ``coro`` as a task owned here (refused once closed)."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.owner}: cannot start {name!r} after close")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if self._on_failure is not None:
            self._on_failure(task, exc)
        else:
            log.error("%s: task %s failed: %s", self.owner, task.get_name(), describe_failure(exc))

    @property
    def active(self) -> int:
        """Tasks still running."""
        return sum(1 for t in self._tasks if not t.done())

    def running(self, name: str) -> list[asyncio.Task[Any]]:
        """Running tasks of that name."""
        return [t for t in self._tasks if t.get_name() == name and not t.done()]

    def tasks(self) -> list[asyncio.Task[Any]]:
        """Every task still tracked."""
        return list(self._tasks)

    async def aclose(self) -> None:
        """Cancel every task and wait for all of them (the caller's own task excepted)."""
        self._closed = True
        current = asyncio.current_task()
        while pending := [t for t in self._tasks if t is not current and not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
