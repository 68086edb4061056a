"""Dedicated worker threads for CPU-bound inference.

Each local model gets its own small executor, so a long STT decode never
queues behind TTS synthesis (and vice versa), and the event loop never runs
inference. On a 2-core machine each stage gets one thread by default.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class InferenceExecutor:
    """A named thread pool that runs blocking inference calls for asyncio code."""

    def __init__(self, name: str, workers: int = 1) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in the pool and await its result."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    def shutdown(self) -> None:
        """Stop the worker threads once queued work is done."""
        self._pool.shutdown(wait=True, cancel_futures=True)
