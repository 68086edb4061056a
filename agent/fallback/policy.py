"""Time limits and retry policy of a fallback chain (frozen settings, no behaviour of their own)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Limits:
    """How long one request may wait.

    A provider that gives no first output within its limit is abandoned (and
    retried or replaced); ``budget_s`` bounds the whole wait for a first
    output across every attempt, backoff and provider of the request, so a
    turn never waits longer. Once output flows, only ``idle_s`` applies
    between pieces: a long reply may take longer than the budget.
    """

    llm_first_token_s: float = 2.5
    """From the request to the LLM's first text or tool-call delta."""
    stt_transcript_s: float = 3.0
    """From the request to the transcript."""
    tts_first_audio_s: float = 2.0
    """From the request (input streams: from the first speakable text) to the first audio."""
    idle_s: float = 5.0
    """Longest gap between later pieces of a stream."""
    budget_s: float = 6.0
    """Longest wait for a first output per request, all providers together."""

    def __post_init__(self) -> None:
        for name in ("llm_first_token_s", "stt_transcript_s", "tts_first_audio_s", "idle_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"limit {name} must be > 0")
        if self.budget_s <= 0:
            raise ConfigError("limit budget_s must be > 0")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a provider is asked again within one request, and how long to wait first.

    The n-th retry waits ``min(backoff_max_s, backoff_s * multiplier**(n-1))``
    less a random fraction of up to ``jitter`` of it. A rate-limited provider
    that says how long to wait (``RateLimitedError.retry_after_s``) is waited
    for instead, when that wait fits the request's remaining budget;
    otherwise the request moves to the next provider at once.
    """

    max_attempts: int = 2
    """Times one provider is asked per request (1: never retried)."""
    backoff_s: float = 0.1
    multiplier: float = 2.0
    backoff_max_s: float = 1.0
    jitter: float = 0.5
    """Fraction of the delay that is randomized away (0: none, 1: full jitter)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("retry max_attempts must be >= 1")
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s or self.multiplier < 1:
            raise ConfigError("retry backoff must satisfy 0 <= backoff_s <= backoff_max_s")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("retry jitter must be within 0..1")

    def backoff(self, retry: int, draw: float) -> float:
        """Seconds to wait before retry number ``retry`` (1-based); ``draw`` is uniform in 0..1."""
        delay = min(self.backoff_max_s, self.backoff_s * self.multiplier ** max(retry - 1, 0))
        return delay * (1 - self.jitter * draw)
