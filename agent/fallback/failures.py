"""What went wrong with a provider, as far as fallback is concerned.

``classify_failure`` maps an exception raised by a provider to a
``FailureKind``; the kind alone decides whether the request is retried on the
same provider, how the provider's circuit breaker counts it, and what the
counters and ``AllProvidersFailedError`` report. Vendor messages never leave
this module: only kinds and exception class names do.

``ProviderAuthError`` is defined in ``agent.errors`` (the adapters raise it)
and re-exported here for the imports that predate the move.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.errors import (
    ModelLoadError,
    ProviderAuthError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
)

__all__ = [
    "AllProvidersFailedError",
    "FailureKind",
    "ProviderAuthError",
    "ProviderFailure",
    "classify_failure",
]


class FailureKind(StrEnum):
    """Why one provider did not serve a request (label values for metrics)."""

    TIMEOUT = "timeout"
    """No first output within its limit, no output within the idle limit, or a vendor time-out."""
    RATE_LIMITED = "rate_limited"
    """HTTP 429 / overloaded: ``RateLimitedError``."""
    UNAVAILABLE = "unavailable"
    """Any other retryable failure: HTTP 5xx, a dropped or refused connection."""
    AUTH = "auth"
    """Credentials refused (``ProviderAuthError``): opens the breaker at once, for longer."""
    MODEL = "model"
    """A local model that cannot be loaded (``ModelLoadError``): like ``AUTH``."""
    REJECTED = "rejected"
    """A non-retryable refusal of this request (HTTP 400 and the like)."""
    ERROR = "error"
    """An exception that is not a ``ProviderError`` (an adapter bug)."""
    CIRCUIT_OPEN = "circuit_open"
    """Not tried: its circuit breaker is open (or its half-open probe is taken)."""
    NO_BUDGET = "no_budget"
    """Not tried: the request's time budget was spent on the providers before it."""

    @property
    def retryable(self) -> bool:
        """Whether the same provider may be asked again within the request."""
        return self in _RETRYABLE

    @property
    def counts(self) -> bool:
        """Whether it counts toward the breaker's consecutive-failure threshold."""
        return self in _COUNTED

    @property
    def trips(self) -> bool:
        """Whether it opens the breaker at once (for the long cool-down)."""
        return self in _TRIPPING


_RETRYABLE = frozenset({FailureKind.TIMEOUT, FailureKind.RATE_LIMITED, FailureKind.UNAVAILABLE})
_COUNTED = _RETRYABLE | {FailureKind.ERROR}
_TRIPPING = frozenset({FailureKind.AUTH, FailureKind.MODEL})


def classify_failure(exc: BaseException) -> FailureKind:
    """The kind of a provider's exception.

    Typed agent errors decide by their class and ``retryable``; a bare
    ``TimeoutError`` or ``ConnectionError`` (an adapter that let one through)
    is transient; anything else is an adapter bug, not retried.
    """
    if isinstance(exc, ProviderAuthError):
        return FailureKind.AUTH
    if isinstance(exc, ModelLoadError):
        return FailureKind.MODEL
    if isinstance(exc, RateLimitedError):
        return FailureKind.RATE_LIMITED
    if isinstance(exc, ProviderTimeoutError | TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(exc, ProviderError):
        return FailureKind.UNAVAILABLE if exc.retryable else FailureKind.REJECTED
    if isinstance(exc, ConnectionError):
        return FailureKind.UNAVAILABLE
    return FailureKind.ERROR


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    """How one provider of a chain failed one request (no vendor message)."""

    provider: str
    """The provider's name in the chain."""
    kind: FailureKind
    attempts: int
    """How many times it was asked (0 when it was skipped)."""
    error: str | None = None
    """Class name of its last exception, if it raised one."""


class AllProvidersFailedError(ProviderError):
    """No provider of a chain served the request (non-retryable).

    ``failures`` says, in chain order, what happened with each provider; the
    message lists only provider names and failure kinds, so it is safe to log
    and to show. The session answers it with a spoken apology.
    """

    def __init__(self, service: str, failures: tuple[ProviderFailure, ...]) -> None:
        summary = ", ".join(f"{f.provider}={f.kind.value}" for f in failures) or "no providers"
        super().__init__(service, f"all providers failed ({summary})", retryable=False)
        self.service = service
        self.failures = failures

    @property
    def kinds(self) -> dict[str, FailureKind]:
        """Each provider's failure kind, by name."""
        return {f.provider: f.kind for f in self.failures}
