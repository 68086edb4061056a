"""What the fallback wrappers share: their chain engine, limits, counters, breakers, close."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from agent.fallback.breaker import BreakerSettings, CircuitBreaker, Clock
from agent.fallback.chain import ProviderChain
from agent.fallback.policy import Limits, RetryPolicy
from agent.fallback.stats import FallbackStats

log = logging.getLogger("agent.fallback")


class Closable(Protocol):
    """Anything with the providers' ``aclose()``."""

    async def aclose(self) -> None:
        """Release it; idempotent."""
        ...


async def close_all(service: str, providers: Sequence[tuple[str, Closable]]) -> None:
    """Close every provider, each even when another one fails; then raise the first failure."""
    first: Exception | None = None
    for name, provider in providers:
        try:
            await provider.aclose()
        except Exception as exc:
            log.warning("%s: closing provider %s failed (%s)", service, name, type(exc).__name__)
            first = first or exc
    if first is not None:
        raise first


P = TypeVar("P", bound=Closable)


class ChainWrapper(Generic[P]):
    """The base of ``FallbackLLM``, ``FallbackSTT`` and ``FallbackTTS``.

    Holds the chain's engine (``ProviderChain``: entries, breakers, retries,
    counters) and its limits; the wrapper owns its providers: ``aclose()``
    closes them all, once.
    """

    def __init__(
        self,
        service: str,
        chain: Sequence[tuple[str, P]],
        limits: Limits | None,
        policy: RetryPolicy | None,
        *,
        breaker: BreakerSettings | None,
        clock: Clock = time.monotonic,
        stats: FallbackStats | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.limits = limits or Limits()
        self.engine: ProviderChain[P] = ProviderChain(
            service,
            chain,
            policy=policy or RetryPolicy(),
            breaker=breaker or BreakerSettings(),
            clock=clock,
            stats=stats,
            draw=draw,
        )
        """The chain's engine (entries, breakers, counters)."""
        self._service = service
        self._closed = False

    @property
    def stats(self) -> FallbackStats:
        """The counters this chain writes to."""
        return self.engine.stats

    @property
    def breakers(self) -> Mapping[str, CircuitBreaker]:
        """Each provider's circuit breaker, by chain name (for health and metrics)."""
        return {e.name: e.breaker for e in self.engine.entries}

    async def aclose(self) -> None:
        """Close every provider of the chain; idempotent."""
        if self._closed:
            return
        self._closed = True
        await close_all(self._service, [(e.name, e.provider) for e in self.engine.entries])
