"""The engine of the fallback wrappers: one request through an ordered chain of providers.

``ProviderChain.first`` runs one request until some provider gives its first
output: providers are tried in order, skipping those whose circuit is open;
each attempt is cut at its time limit and at the request's budget; a
retryable failure is retried on the same provider (after a backoff, or the
provider's own retry-after) when that fits the budget, any other failure
moves on to the next provider; when none is left, ``AllProvidersFailedError``.

``ProviderChain.relay`` does the same for streams and then passes the rest of
the winning stream through: once a first output was yielded the request is
committed to that provider, and a later failure is raised, never retried (the
caller would hear the start of the reply twice).

Logs name the service, the provider, the failure kind and the exception
class; never the exception's message (a vendor's body may echo the prompt),
nor any text or audio of the request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from agent.errors import ConfigError, ProviderError, ProviderTimeoutError, RateLimitedError
from agent.fallback.breaker import (
    BreakerPermit,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    Clock,
)
from agent.fallback.failures import (
    AllProvidersFailedError,
    FailureKind,
    ProviderFailure,
    classify_failure,
)
from agent.fallback.policy import RetryPolicy
from agent.fallback.stats import FallbackStats

log = logging.getLogger("agent.fallback")

P = TypeVar("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True, eq=False)
class ChainEntry(Generic[P]):
    """One provider of a chain, under its chain name, with its circuit breaker."""

    name: str
    provider: P
    breaker: CircuitBreaker


class Attempt(Generic[P]):
    """One request's turn on one provider; holds the breaker permit until one verdict."""

    def __init__(
        self, chain: ProviderChain[P], entry: ChainEntry[P], permit: BreakerPermit
    ) -> None:
        self.entry = entry
        self._chain = chain
        self._permit = permit
        self.settled = False

    def succeed(self) -> None:
        """The provider served the request."""
        if not self.settled:
            self.settled = True
            self.entry.breaker.succeeded(self._permit)

    def release(self) -> None:
        """No verdict on the provider (the request was cancelled or cut by its budget)."""
        if not self.settled:
            self.settled = True
            self.entry.breaker.released(self._permit)

    def settle(self, served: bool) -> None:
        """End an attempt the consumer stopped: a success if output flowed, else no verdict."""
        if served:
            self.succeed()
        else:
            self.release()

    def fail(
        self,
        exc: BaseException,
        *,
        kind: FailureKind | None = None,
        blame: bool = True,
        then: str,
    ) -> FailureKind:
        """``record`` and ``log`` a failure; ``then`` says what the request does next."""
        kind = kind or classify_failure(exc)
        if not self.settled:
            self.log(exc, kind, opened=self.record(kind, blame=blame), then=then)
        return kind

    def record(self, kind: FailureKind, *, blame: bool = True) -> bool:
        """Count a failure and give the breaker its verdict; True when that opened the circuit.

        ``blame=False`` (the request's budget, not the provider's own limit,
        ran out) counts the failure but gives the breaker no verdict.
        """
        if self.settled:
            return False
        self.settled = True
        chain = self._chain
        chain.stats.failures[(chain.service, self.entry.name, kind)] += 1
        if blame:
            return self.entry.breaker.failed(self._permit, kind)
        self.entry.breaker.released(self._permit)
        return False

    def log(self, exc: BaseException, kind: FailureKind, *, opened: bool, then: str) -> None:
        """One line per failure: provider, kind, exception class, what happens next."""
        # A refused credential fails every request until someone fixes it: say so
        # once, when it opens the circuit, not once per request.
        level = logging.DEBUG if kind.trips and not opened else logging.WARNING
        log.log(
            level,
            "%s: provider %s failed (%s, %s); %s",
            self._chain.service,
            self.entry.name,
            kind.value,
            type(exc).__name__,
            then,
        )


@dataclass(frozen=True, slots=True)
class Opened(Generic[T]):
    """A stream that produced its first committing item (or ended without one)."""

    stream: AsyncGenerator[T, None]
    head: list[T]
    """Items read so far, the committing one last."""
    committed: bool
    """False when the stream ended before any committing item."""


@dataclass(frozen=True, slots=True)
class _Retry:
    """What a failed attempt was, and the wait before retrying it (None: do not)."""

    kind: FailureKind
    seconds: float | None


Commits = Callable[[T], bool]
"""Whether an item commits the request to its provider (audible text, a tool call, audio)."""


class ProviderChain(Generic[P]):
    """Ordered providers of one service with their breakers, retry policy and counters."""

    def __init__(
        self,
        service: str,
        chain: Sequence[tuple[str, P]],
        *,
        policy: RetryPolicy,
        breaker: BreakerSettings,
        clock: Clock = time.monotonic,
        stats: FallbackStats | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        names = [name for name, _ in chain]
        if not names:
            raise ConfigError(f"{service}: a fallback chain needs at least one provider")
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"{service}: chain names must be unique and non-empty: {names}")
        self.service = service
        self.policy = policy
        self.stats = stats if stats is not None else FallbackStats()
        self._draw = draw
        self.entries: tuple[ChainEntry[P], ...] = tuple(
            ChainEntry(
                name,
                provider,
                CircuitBreaker(
                    f"{service}/{name}", breaker, clock=clock, on_transition=self._transition
                ),
            )
            for name, provider in chain
        )

    def entry(self, name: str) -> ChainEntry[P]:
        """The entry of that chain name (``ConfigError`` when there is none)."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise ConfigError(f"{self.service}: no provider named {name!r} in the chain")

    def begin(self, entry: ChainEntry[P]) -> Attempt[P] | None:
        """Start an attempt on ``entry``; None when its circuit says skip it."""
        permit = entry.breaker.acquire()
        if permit is None:
            return None
        self.stats.attempts[(self.service, entry.name)] += 1
        return Attempt(self, entry, permit)

    def skipped(self, entry: ChainEntry[P]) -> None:
        """Count a request that skipped ``entry`` because its circuit is open."""
        self.stats.failures[(self.service, entry.name, FailureKind.CIRCUIT_OPEN)] += 1
        log.debug("%s: provider %s skipped (circuit open)", self.service, entry.name)

    async def first(
        self,
        call: Callable[[P], Awaitable[T]],
        *,
        limit_s: float,
        budget_s: float,
        entries: Sequence[ChainEntry[P]] | None = None,
        max_attempts: int | None = None,
    ) -> tuple[Attempt[P], T]:
        """Run ``call`` on the chain until one provider answers; see the module docstring.

        Returns the winning attempt (its verdict is the caller's to give) and
        the answer. Cancelling the caller cancels the call in flight (or the
        backoff sleep) at once and gives its breaker no verdict.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        chain = self.entries if entries is None else tuple(entries)
        max_attempts = self.policy.max_attempts if max_attempts is None else max_attempts
        failures: list[ProviderFailure] = []
        for index, entry in enumerate(chain):
            tries, last_kind, last_error = 0, FailureKind.CIRCUIT_OPEN, None
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    failures.append(
                        ProviderFailure(entry.name, last_kind, tries, last_error)
                        if tries
                        else ProviderFailure(entry.name, FailureKind.NO_BUDGET, 0)
                    )
                    failures += [
                        ProviderFailure(e.name, FailureKind.NO_BUDGET, 0)
                        for e in chain[index + 1 :]
                    ]
                    raise self._exhausted(failures)
                attempt = self.begin(entry)
                if attempt is None:
                    if not tries:
                        self.skipped(entry)
                    failures.append(ProviderFailure(entry.name, last_kind, tries, last_error))
                    break
                if tries:
                    self.stats.retries[(self.service, entry.name)] += 1
                elif failures:
                    self.stats.fallbacks[(self.service, entry.name)] += 1
                tries += 1
                timer = asyncio.timeout(min(limit_s, remaining))
                try:
                    async with timer:
                        value = await call(entry.provider)
                except Exception as exc:
                    retry = self._after_failure(
                        attempt,
                        exc,
                        expired=timer.expired(),
                        cut_by_budget=remaining < limit_s,
                        tries=tries,
                        max_attempts=max_attempts,
                        remaining=deadline - loop.time(),
                        limit_s=limit_s,
                        later=chain[index + 1 :],
                    )
                    last_kind, last_error = retry.kind, type(exc).__name__
                    if retry.seconds is None:
                        failures.append(ProviderFailure(entry.name, retry.kind, tries, last_error))
                        break
                    await asyncio.sleep(retry.seconds)
                    continue
                except BaseException:
                    attempt.release()
                    raise
                self.stats.served[(self.service, entry.name)] += 1
                return attempt, value
        raise self._exhausted(failures)

    async def relay(
        self,
        open_stream: Callable[[P], AsyncGenerator[T, None]],
        *,
        commits: Commits[T],
        limit_s: float,
        idle_s: float,
        budget_s: float,
        trailer: Callable[[ChainEntry[P]], Iterable[T]] | None = None,
        entries: Sequence[ChainEntry[P]] | None = None,
    ) -> AsyncGenerator[T, None]:
        """Stream from the first provider that commits; see the module docstring.

        ``trailer(entry)`` gives items to yield after the winning stream ended
        normally. Closing or cancelling this generator closes the provider's
        stream at once.
        """
        attempt, opened = await self.first(
            lambda provider: open_until_commit(open_stream(provider), commits),
            limit_s=limit_s,
            budget_s=budget_s,
            entries=entries,
        )
        stream, name = opened.stream, attempt.entry.name
        try:
            for item in opened.head:
                yield item
            while opened.committed:
                try:
                    item = await next_within(stream, idle_s, name)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    attempt.fail(exc, then="stream cut short after output, not repeated")
                    if isinstance(exc, ProviderError):
                        raise
                    raise ProviderError(name, f"stream failed: {type(exc).__name__}") from exc
                yield item
            attempt.succeed()
            if trailer is not None:
                for item in trailer(attempt.entry):
                    yield item
        finally:
            attempt.settle(opened.committed)
            await stream.aclose()

    # ------------------------------------------------------------------ private

    def _after_failure(
        self,
        attempt: Attempt[P],
        exc: Exception,
        *,
        expired: bool,
        cut_by_budget: bool,
        tries: int,
        max_attempts: int,
        remaining: float,
        limit_s: float,
        later: Sequence[ChainEntry[P]],
    ) -> _Retry:
        """Judge a failed attempt, log it, and say whether to ask the same provider again."""
        kind = FailureKind.TIMEOUT if expired else classify_failure(exc)
        # Cut by the request's budget rather than its own limit: not the provider's fault.
        opened = attempt.record(kind, blame=not (expired and cut_by_budget))
        last_resort = not any(e.breaker.available for e in later)
        delay: float | None = None
        if attempt.entry.breaker.available and kind.retryable and tries < max_attempts:
            delay = self._retry_delay(exc, tries, remaining, limit_s, expired, last_resort)
        if delay is not None:
            then = f"retrying in {delay:.2f} s"
        else:
            then = "giving up" if last_resort else "falling back to the next provider"
        attempt.log(exc, kind, opened=opened, then=then)
        return _Retry(kind, delay)

    def _retry_delay(
        self,
        exc: Exception,
        tries: int,
        remaining: float,
        limit_s: float,
        spent_limit: bool,
        last_resort: bool,
    ) -> float | None:
        """Seconds to wait before a retry that fits the budget; None: move on."""
        if spent_limit and not last_resort:
            return None  # it used its whole limit: another provider is the better bet
        if isinstance(exc, RateLimitedError) and exc.retry_after_s is not None:
            delay = max(exc.retry_after_s, 0.0)
        else:
            delay = self.policy.backoff(tries, self._draw())
        if delay + limit_s <= remaining or (last_resort and delay < remaining):
            return delay
        return None

    def _exhausted(self, failures: list[ProviderFailure]) -> AllProvidersFailedError:
        self.stats.exhausted[self.service] += 1
        error = AllProvidersFailedError(self.service, tuple(failures))
        log.warning("%s: %s", self.service, error)
        return error

    def _transition(
        self,
        breaker: CircuitBreaker,
        old: BreakerState,
        new: BreakerState,
        cause: FailureKind | None,
    ) -> None:
        self.stats.transitions[(breaker.name, old, new)] += 1
        if new is BreakerState.OPEN:
            reason = cause.value if cause is not None else "unknown"
            log.warning("circuit %s opened (%s): requests skip it", breaker.name, reason)
        else:
            log.info("circuit %s: %s -> %s", breaker.name, old.value, new.value)


async def open_until_commit(stream: AsyncGenerator[T, None], commits: Commits[T]) -> Opened[T]:
    """Read ``stream`` up to its first committing item; closes it when that fails."""
    head: list[T] = []
    try:
        while True:
            try:
                item = await anext(stream)
            except StopAsyncIteration:
                return Opened(stream, head, committed=False)
            head.append(item)
            if commits(item):
                return Opened(stream, head, committed=True)
    except BaseException:
        await stream.aclose()
        raise


async def next_within(stream: AsyncGenerator[T, None], limit_s: float, provider: str) -> T:
    """The next item of ``stream``; ``ProviderTimeoutError`` when none comes within the limit."""
    timer = asyncio.timeout(limit_s)
    try:
        async with timer:
            return await anext(stream)
    except TimeoutError:
        if timer.expired():
            raise ProviderTimeoutError(provider, f"no output for {limit_s:g} s") from None
        raise
