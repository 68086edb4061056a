"""A circuit breaker per provider: stop asking a provider that keeps failing.

States and transitions (all of them in ``CircuitBreaker``)::

    CLOSED    --N consecutive counted failures------------>  OPEN (cool-down)
    CLOSED    --one tripping failure (auth, broken model)-->  OPEN (auth cool-down)
    OPEN      --cool-down elapsed (read lazily)------------>  HALF_OPEN
    HALF_OPEN --the single probe succeeds------------------>  CLOSED
    HALF_OPEN --the probe fails---------------------------->  OPEN (cool-down doubled, capped)

A request asks ``acquire()`` for a ``BreakerPermit`` and reports exactly one
verdict with it: ``succeeded``, ``failed`` or ``released`` (no verdict: the
request was cancelled, or failed in a way that says nothing about the
provider). In HALF_OPEN only one permit (the probe) is out at a time. Every
transition starts a new epoch; verdicts on permits of an older epoch are
ignored, so a slow request started before the circuit opened cannot close it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from agent.errors import ConfigError
from agent.fallback.failures import FailureKind

Clock = Callable[[], float]
"""Seconds from an arbitrary origin, never going back (``time.monotonic``)."""


class BreakerState(StrEnum):
    """State of a circuit breaker (label values for metrics and health)."""

    CLOSED = "closed"
    """Requests go through; consecutive counted failures are tallied."""
    OPEN = "open"
    """Requests skip the provider until the cool-down has elapsed."""
    HALF_OPEN = "half_open"
    """One probe request may go through; its outcome closes or re-opens the circuit."""


TransitionListener = Callable[
    ["CircuitBreaker", BreakerState, BreakerState, FailureKind | None], None
]
"""Called with the breaker, its old and new state, and the failure kind that caused it."""


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a circuit opens and for how long."""

    failure_threshold: int = 3
    """Consecutive counted failures (time-outs, 429, 5xx, dropped connections) that open it."""
    cooldown_s: float = 10.0
    """How long it stays open before letting a probe through."""
    max_cooldown_s: float = 120.0
    """Each failed probe doubles the cool-down, up to this."""
    auth_cooldown_s: float = 300.0
    """Cool-down after a tripping failure (credentials refused, model not loadable)."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigError("breaker failure_threshold must be >= 1")
        if not 0 < self.cooldown_s <= self.max_cooldown_s:
            raise ConfigError("breaker cool-downs must satisfy 0 < cooldown_s <= max_cooldown_s")
        if self.auth_cooldown_s <= 0:
            raise ConfigError("breaker auth_cooldown_s must be > 0")


@dataclass(frozen=True, slots=True)
class BreakerPermit:
    """Leave to send one request to the provider; report its verdict with it."""

    epoch: int
    probe: bool
    """Whether this is the half-open probe."""


class CircuitBreaker:
    """Tracks one provider's health; see the module docstring for the state machine."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._failures = 0
        self._open_until = 0.0
        self._cooldown_s = self.settings.cooldown_s
        self._probe_out = False
        self.last_failure: FailureKind | None = None
        """The kind of the last failure it counted or tripped on (for health)."""

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        """The state now (an OPEN circuit whose cool-down elapsed reads HALF_OPEN)."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._move(BreakerState.HALF_OPEN, None)
        return self._state

    @property
    def available(self) -> bool:
        """Whether ``acquire()`` would give a permit now (takes none)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probe_out
        )

    @property
    def consecutive_failures(self) -> int:
        """Counted failures since the last success (while CLOSED)."""
        return self._failures

    @property
    def retry_at(self) -> float | None:
        """Clock time when an OPEN circuit lets a probe through; None otherwise."""
        return self._open_until if self.state is BreakerState.OPEN else None

    # ----------------------------------------------------------------- verdicts

    def acquire(self) -> BreakerPermit | None:
        """A permit for one request, or None when the provider must be skipped."""
        state = self.state
        if state is BreakerState.CLOSED:
            return BreakerPermit(self._epoch, probe=False)
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return BreakerPermit(self._epoch, probe=True)
        return None

    def succeeded(self, permit: BreakerPermit) -> None:
        """The request was served: reset the tally, or close after a good probe."""
        if not self._current(permit):
            return
        if self._state is BreakerState.HALF_OPEN:
            self._probe_out = False
            self._cooldown_s = self.settings.cooldown_s
            self._move(BreakerState.CLOSED, None)
        else:
            self._failures = 0

    def failed(self, permit: BreakerPermit, kind: FailureKind) -> bool:
        """The request failed with ``kind``; True when this verdict opened the circuit.

        Kinds that neither count nor trip (a rejected request) are no verdict.
        """
        if not self._current(permit):
            return False
        if not (kind.counts or kind.trips):
            self.released(permit)
            return False
        self.last_failure = kind
        if self._state is BreakerState.HALF_OPEN:
            self._probe_out = False
            if kind.trips:
                self._open(self.settings.auth_cooldown_s, kind)
            else:
                self._cooldown_s = min(self._cooldown_s * 2, self.settings.max_cooldown_s)
                self._open(self._cooldown_s, kind)
            return True
        if kind.trips:
            self._open(self.settings.auth_cooldown_s, kind)
            return True
        self._failures += 1
        if self._failures >= self.settings.failure_threshold:
            self._open(self._cooldown_s, kind)
            return True
        return False

    def released(self, permit: BreakerPermit) -> None:
        """No verdict (cancelled, cut short by the request's budget): frees a probe slot."""
        if self._current(permit) and permit.probe:
            self._probe_out = False

    # ------------------------------------------------------------------ private

    def _current(self, permit: BreakerPermit) -> bool:
        return permit.epoch == self._epoch

    def _open(self, cooldown_s: float, kind: FailureKind) -> None:
        self._open_until = self._clock() + cooldown_s
        self._move(BreakerState.OPEN, kind)

    def _move(self, state: BreakerState, cause: FailureKind | None) -> None:
        previous = self._state
        self._state = state
        self._epoch += 1
        self._failures = 0
        self._probe_out = False
        if self._on_transition is not None:
            self._on_transition(self, previous, state, cause)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self._state.value})"
