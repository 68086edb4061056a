"""TTS phrase cache: synthesized audio by (voice, text), kept off the audio's critical path.

Reads are time-boxed. A lookup (pending writes, then the hot tier, then SQL)
runs as a task owned by the cache; the caller waits for it at most
``read_budget_s`` (a few ms). A slower lookup, such as a SQL tier that is
down or hangs, is a miss for that caller, who synthesizes at once; the
lookup goes on in the background and, if SQL had the phrase, warms the hot
tier for the next caller. At most ``max_lookups`` run at a time (one per
phrase, shared by concurrent callers); past that, lookups are shed (a miss),
so a hung database cannot pile up tasks.

Writes are write-behind. ``put`` never waits: the phrase joins a bounded
queue (``max_pending_writes`` phrases, ``max_pending_bytes`` of audio) that
one writer task owned by the cache drains into the hot tier and then SQL;
until written, queued phrases answer lookups themselves. Drop policy: when
the queue is full the new phrase is refused (counted in
``stats.writes_dropped``); it is only a cache, and the phrase is offered
again the next time it is synthesized. A failed SQL write is counted and
not retried. ``aclose`` drains the queue within its time-out.

Use is recorded in SQL (``last_used_at``) in batches by the same writer, so
the store's periodic ``purge`` keeps phrases in use and removes those unused
for ``max_age_s`` and, past ``max_sql_bytes``, the least recently used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from store.cache import HotCache, MemoryCache
from store.repositories import PurgeResult

log = logging.getLogger(__name__)

_LOG_EVERY_S = 10.0


def phrase_hash(voice: str, text: str) -> str:
    """Stable hash of a phrase (whitespace and case normalised) for one voice."""
    canonical = " ".join(text.split()).casefold()
    return hashlib.sha256(f"{voice}\n{canonical}".encode()).hexdigest()


def hot_key(digest: str) -> str:
    """The hot-tier key of a phrase hash."""
    return f"tts:{digest}"


class PhraseRepository(Protocol):
    """The SQL tier (``store.repositories.TtsAudioRepository``)."""

    async def get(self, voice: str, text_hash: str) -> tuple[int, bytes] | None:
        """``(sample_rate, pcm bytes)`` of a stored phrase."""
        ...

    async def put(self, voice: str, text_hash: str, sample_rate: int, audio: bytes) -> None:
        """Store or replace a phrase."""
        ...

    async def touch(self, text_hashes: list[str]) -> None:
        """Mark phrases used now."""
        ...

    async def purge(self, max_age_s: float, max_bytes: int) -> PurgeResult:
        """Remove old phrases, then the least recently used past the byte bound."""
        ...


@dataclass(slots=True)
class PhraseCacheStats:
    """What the cache did (caller-visible outcomes and background work)."""

    hot_hits: int = 0
    """Lookups answered by the hot tier or a queued write."""
    sql_hits: int = 0
    """Lookups answered by the SQL tier within the budget."""
    misses: int = 0
    """Lookups the caller saw as misses (including slow and shed ones)."""
    slow_lookups: int = 0
    """Lookups that ran past the budget (finished in the background)."""
    lookups_shed: int = 0
    """Lookups not even started: ``max_lookups`` were already in flight."""
    sql_errors: int = 0
    """Failed or timed-out SQL reads and use updates."""
    writes: int = 0
    """Phrases written to the SQL tier."""
    writes_dropped: int = 0
    """Phrases refused because the write-behind queue was full (or the cache closed)."""
    write_errors: int = 0
    """Phrases whose SQL write failed (not retried)."""
    purged: int = 0
    """SQL rows removed by purges."""


@dataclass(frozen=True, slots=True)
class _Write:
    voice: str
    sample_rate: int
    audio: bytes


def _encode(sample_rate: int, audio: bytes) -> bytes:
    return sample_rate.to_bytes(4, "little") + audio


def _decode(value: bytes) -> tuple[int, bytes] | None:
    return None if len(value) < 4 else (int.from_bytes(value[:4], "little"), value[4:])


class PhraseAudioCache:
    """Implements the agent's ``PhraseCache`` protocol over the store's tiers.

    Values are ``(sample_rate, int16 little-endian PCM bytes)``. ``start()``
    before use (inside the event loop), ``aclose()`` at shutdown.
    """

    def __init__(
        self,
        hot: HotCache,
        sql: PhraseRepository,
        ttl_s: float,
        *,
        read_budget_s: float = 0.010,
        sql_timeout_s: float = 5.0,
        max_lookups: int = 8,
        max_pending_writes: int = 64,
        max_pending_bytes: int = 32 * 1024 * 1024,
        max_touches: int = 4096,
        touch_interval_s: float = 60.0,
        max_age_s: float = 30 * 24 * 3600,
        max_sql_bytes: int = 1024 * 1024 * 1024,
    ) -> None:
        self._hot = hot
        self._sql = sql
        self._ttl_s = ttl_s
        self.read_budget_s = read_budget_s
        self.sql_timeout_s = sql_timeout_s
        self.max_lookups = max_lookups
        self.max_pending_writes = max_pending_writes
        self.max_pending_bytes = max_pending_bytes
        self.max_touches = max_touches
        self.touch_interval_s = touch_interval_s
        self.max_age_s = max_age_s
        self.max_sql_bytes = max_sql_bytes
        self.stats = PhraseCacheStats()
        self._pending: OrderedDict[str, _Write] = OrderedDict()
        self._pending_bytes = 0
        self._lookups: dict[str, asyncio.Task[tuple[int, bytes, bool] | None]] = {}
        self._touched: set[str] = set()
        self._last_touch_flush = time.monotonic()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._last_log = 0.0

    @property
    def pending_writes(self) -> int:
        """Phrases queued for writing."""
        return len(self._pending)

    @property
    def inflight_lookups(self) -> int:
        """Lookups still running (some possibly past their caller's budget)."""
        return len(self._lookups)

    def start(self) -> None:
        """Start the writer task."""
        if self._writer is None and not self._closing:
            self._writer = asyncio.create_task(self._run_writes(), name="tts-cache-writer")

    # -- reads --------------------------------------------------------------

    async def get(self, voice: str, text: str) -> tuple[int, bytes] | None:
        """Cached audio of a phrase, or None; waits at most ``read_budget_s``."""
        digest = phrase_hash(voice, text)
        queued = self._pending.get(digest)
        if queued is not None:
            self.stats.hot_hits += 1
            return queued.sample_rate, queued.audio
        if isinstance(self._hot, MemoryCache):
            # The in-process tier answers without waiting for anything: read it
            # here, so a hit never depends on a task being scheduled in time.
            cached = await self._hot.get(hot_key(digest))
            decoded = _decode(cached) if cached is not None else None
            if decoded is not None:
                self._touch(digest)
                self.stats.hot_hits += 1
                return decoded
        task = self._lookups.get(digest)
        if task is None:
            if self._closing or len(self._lookups) >= self.max_lookups:
                self.stats.lookups_shed += 1
                self.stats.misses += 1
                return None
            task = asyncio.create_task(self._lookup(voice, digest), name="tts-cache-lookup")
            self._lookups[digest] = task
            task.add_done_callback(self._lookup_done)
        done, _ = await asyncio.wait({task}, timeout=self.read_budget_s)
        if not done:
            self.stats.slow_lookups += 1
            self.stats.misses += 1
            return None
        found = None if task.cancelled() else task.result()
        if found is None:
            self.stats.misses += 1
            return None
        rate, audio, from_sql = found
        if from_sql:
            self.stats.sql_hits += 1
        else:
            self.stats.hot_hits += 1
        return rate, audio

    def _lookup_done(self, task: asyncio.Task[tuple[int, bytes, bool] | None]) -> None:
        for digest, owned in list(self._lookups.items()):
            if owned is task:
                del self._lookups[digest]
        if not task.cancelled():
            task.exception()  # _lookup handles its errors; this only marks it retrieved

    async def _lookup(self, voice: str, digest: str) -> tuple[int, bytes, bool] | None:
        """Hot tier, then SQL; a SQL hit warms the hot tier. Never raises an ``Exception``."""
        try:
            cached = await self._hot.get(hot_key(digest))
        except Exception as exc:  # a HotCache should not raise; a miss if one does
            self._failed("hot tier read", exc)
            cached = None
        decoded = _decode(cached) if cached is not None else None
        if decoded is not None:
            self._touch(digest)
            return decoded[0], decoded[1], False
        try:
            stored = await asyncio.wait_for(self._sql.get(voice, digest), self.sql_timeout_s)
        except Exception as exc:
            self.stats.sql_errors += 1
            self._failed("SQL read", exc)
            return None
        if stored is None:
            return None
        rate, audio = stored
        with contextlib.suppress(Exception):
            await self._hot.set(hot_key(digest), _encode(rate, audio), self._ttl_s)
        self._touch(digest)
        return rate, audio, True

    async def settle(self, timeout_s: float = 10.0) -> bool:
        """Wait for the lookups in flight (including those past their caller's budget) to
        finish; False if some still run after ``timeout_s``."""
        running = list(self._lookups.values())
        if running:
            await asyncio.wait(running, timeout=timeout_s)
        return not self._lookups

    def _touch(self, digest: str) -> None:
        """Record a use for the next batched ``last_used_at`` update (dropped when full)."""
        if len(self._touched) < self.max_touches:
            if not self._touched:
                self._wake.set()  # the writer arms its flush timer
            self._touched.add(digest)

    # -- writes -------------------------------------------------------------

    async def put(self, voice: str, text: str, sample_rate: int, audio: bytes) -> None:
        """Queue a phrase for both tiers; returns at once (see the module's drop policy)."""
        digest = phrase_hash(voice, text)
        if self._closing:
            self.stats.writes_dropped += 1
            return
        size = len(audio)
        old = self._pending.get(digest)
        held = len(self._pending) - (old is not None)
        held_bytes = self._pending_bytes - (len(old.audio) if old is not None else 0)
        if held >= self.max_pending_writes or held_bytes + size > self.max_pending_bytes:
            self.stats.writes_dropped += 1
            log.debug("TTS cache write queue full: a phrase was not cached")
            return
        self._pending[digest] = _Write(voice, sample_rate, audio)
        self._pending_bytes = held_bytes + size
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued phrase is written (or failed); False on time-out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _run_writes(self) -> None:
        while True:
            if self._pending:
                await self._write_oldest()
                continue
            due = self._last_touch_flush + self.touch_interval_s - time.monotonic()
            if self._touched and (self._closing or due <= 0):
                await self._flush_touches()
                continue
            self._idle.set()
            self._wake.clear()
            timeout = max(due, 0.0) if self._touched else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _write_oldest(self) -> None:
        digest, write = next(iter(self._pending.items()))
        try:
            with contextlib.suppress(Exception):
                await self._hot.set(
                    hot_key(digest), _encode(write.sample_rate, write.audio), self._ttl_s
                )
            try:
                await asyncio.wait_for(
                    self._sql.put(write.voice, digest, write.sample_rate, write.audio),
                    self.sql_timeout_s,
                )
                self.stats.writes += 1
            except Exception as exc:
                self.stats.write_errors += 1
                self._failed("SQL write", exc)
        finally:
            # A newer put of the same phrase while this one was written stays queued.
            if self._pending.get(digest) is write:
                del self._pending[digest]
                self._pending_bytes -= len(write.audio)

    async def _flush_touches(self) -> None:
        hashes = sorted(self._touched)
        self._touched.clear()
        self._last_touch_flush = time.monotonic()
        try:
            await asyncio.wait_for(self._sql.touch(hashes), self.sql_timeout_s)
        except Exception as exc:
            self.stats.sql_errors += 1
            self._failed("SQL use update", exc)

    # -- maintenance --------------------------------------------------------

    async def purge(self) -> PurgeResult:
        """Remove phrases unused for ``max_age_s``, then the least recently used past
        ``max_sql_bytes``. Errors propagate (the store's purge task logs them)."""
        result = await self._sql.purge(self.max_age_s, self.max_sql_bytes)
        self.stats.purged += result.total
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_log > _LOG_EVERY_S:  # one line per 10 s while a tier is down
            self._last_log = now
            log.warning("TTS cache %s failed (%s)", what, type(exc).__name__)

    async def aclose(self, drain_timeout_s: float = 5.0) -> None:
        """Refuse new work, write what is queued (bounded by the time-out), reap the tasks."""
        self._closing = True
        if self._touched:
            self._idle.clear()  # the writer flushes use updates at once when closing
        self._wake.set()
        if self._writer is not None and not await self.flush(drain_timeout_s):
            log.warning("TTS cache closed with %d phrases not written", len(self._pending))
        tasks: list[asyncio.Task[Any]] = [*self._lookups.values()]
        if self._writer is not None:
            tasks.append(self._writer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._writer = None
        self._lookups.clear()
