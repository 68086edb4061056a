"""Counters of fallback chains, for metrics (a Prometheus collector reads them at scrape time).

One ``FallbackStats`` may be shared by several chains: every key starts with
the chain's service (``"llm"``, ``"stt"``, ``"tts"``) or its breaker's name
(``"llm/groq"``). The counters only ever grow; they live on the event loop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from agent.fallback.breaker import BreakerState
from agent.fallback.failures import FailureKind


@dataclass(slots=True)
class FallbackStats:
    """Attempts, failures, retries, fallbacks and breaker transitions."""

    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(service, provider): requests sent to a provider, retries included."""
    failures: Counter[tuple[str, str, FailureKind]] = field(default_factory=Counter)
    """(service, provider, kind): failed attempts and skipped providers."""
    retries: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(service, provider): attempts that were a retry on the same provider."""
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(service, provider): requests it took over after earlier providers failed or were skipped."""
    reroutes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(service, provider): TTS input streams moved off a provider before any audio."""
    served: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(service, provider): requests a provider began to serve."""
    exhausted: Counter[str] = field(default_factory=Counter)
    """service: requests no provider served (``AllProvidersFailedError``)."""
    transitions: Counter[tuple[str, BreakerState, BreakerState]] = field(default_factory=Counter)
    """(breaker, from, to): circuit breaker transitions."""

    def failures_of(self, service: str, provider: str) -> dict[FailureKind, int]:
        """One provider's failures by kind."""
        return {
            kind: n
            for (svc, name, kind), n in self.failures.items()
            if svc == service and name == provider
        }
