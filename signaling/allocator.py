"""Giving freed memory back to the system, for the memory-trim job (``signaling.jobs``).

Two things keep memory (and threads) after the work that needed them is over:

* **reference cycles**: an ended call's aiortc peer connection sits in cycles
  (its event callbacks), with its codec contexts, their FFmpeg threads (two a
  call on 2 cores) and buffers, until a full garbage collection, which an idle
  process may not reach for a long time (measured: 44 threads and ~1 MB a call
  held after 100 calls). ``collect()`` runs one, on the event loop's thread.
* **glibc's heaps**: memory a request freed (a 10 MB upload, decoded audio, a
  long reply's arrays) goes back to malloc, not to the system, so RSS stays at
  the busiest moment's high-water mark, spread over per-thread arenas.
  ``trim()`` (``malloc_trim(0)``) releases the free pages of every arena; it
  walks each arena under its lock, so the server calls it from a worker thread
  and only while no call is live. ``limit_arenas(n)`` caps the arenas
  (``mallopt(M_ARENA_MAX)``, as ``MALLOC_ARENA_MAX`` does): glibc's default of
  8 per core lets each of the server's threads strand freed memory in an arena
  of its own (measured with ``bench.memory``: RSS settled +22 % over the start
  with the default, +9 to +15 % with 2). The app calls it at creation, before
  the model and executor threads exist, unless ``MALLOC_ARENA_MAX`` is set.

Elsewhere than glibc (musl, macOS) ``trim()`` and ``limit_arenas()`` return
False and do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TrimStats:
    """What the trims did (for ``/health`` and the benchmarks)."""

    trims: int = 0
    released: int = 0
    """Trims after which glibc reported memory released."""
    last_ms: float | None = None
    """Duration of the last trim."""
    collections: int = 0
    last_collect_ms: float | None = None
    """Duration of the last forced garbage collection."""


STATS = TrimStats()

M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number of the arena cap (``malloc.h``)."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def available() -> bool:
    """Whether this C library has ``malloc_trim`` (glibc)."""
    return _libc() is not None


def limit_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` for the threads created from now on.

    Does nothing (False) where ``MALLOC_ARENA_MAX`` is set in the environment (the
    operator's choice wins) or the C library is not glibc; True once set.
    """
    if arenas < 1:
        raise ValueError("arenas must be at least 1")
    libc = _libc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    done = bool(libc.mallopt(M_ARENA_MAX, arenas))
    if done:
        log.debug("malloc arenas capped at %d", arenas)
    return done


def collect() -> int:
    """A full garbage collection (on the caller's thread: call it on the event loop, where
    the objects in cycles live); returns the objects collected and counts it."""
    started = time.perf_counter()
    found = gc.collect()
    STATS.collections += 1
    STATS.last_collect_ms = round((time.perf_counter() - started) * 1000, 2)
    return found


def trim() -> bool:
    """Release free heap memory to the system (blocking; see the module doc).

    Returns whether glibc released any; False where there is no ``malloc_trim``.
    No garbage collection here (``collect`` does it): the trim runs on a worker
    thread, and a collection there would run finalizers off the event loop.
    """
    libc = _libc()
    if libc is None:
        return False
    started = time.perf_counter()
    released = bool(libc.malloc_trim(0))
    STATS.trims += 1
    STATS.released += released
    STATS.last_ms = round((time.perf_counter() - started) * 1000, 2)
    log.debug("malloc_trim: released=%s in %.1f ms", released, STATS.last_ms)
    return released
