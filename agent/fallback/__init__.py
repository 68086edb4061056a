"""Fallback chains, retries and circuit breakers around the provider protocols.

``FallbackLLM``, ``FallbackSTT`` and ``FallbackTTS`` (``fallback_tts()`` picks
``StreamingFallbackTTS`` when the chain's first TTS takes streamed text)
implement the ``LLM``, ``STT`` and ``TTS`` protocols over an ordered chain of
named providers, e.g. ``[("groq", groq_llm), ("local", llama)]``:

- each request goes to the first provider whose circuit breaker lets it
  through; a provider that fails or exceeds its time limit (``Limits``)
  before its first output is retried (retryable failures only, backoff per
  ``RetryPolicy``) or replaced by the next, all within the request's budget;
- once output was yielded (text, a tool call, audio) a failure ends the
  stream with a ``ProviderError``: it is never retried, the caller would
  hear the start twice;
- when no provider served, ``AllProvidersFailedError`` (non-retryable),
  naming each provider's ``FailureKind`` and no vendor message;
- ``CircuitBreaker`` (per provider, injectable clock) skips a provider after
  repeated failures and probes it again after a cool-down;
- ``FallbackStats`` counts attempts, failures by kind, retries, fallbacks
  and breaker transitions for metrics.

Cancelling the consumer cancels the provider request in flight, or the
backoff sleep, at once, and closes the provider's stream.
"""

from agent.errors import ProviderAuthError
from agent.fallback.breaker import BreakerPermit, BreakerSettings, BreakerState, CircuitBreaker
from agent.fallback.failures import (
    AllProvidersFailedError,
    FailureKind,
    ProviderFailure,
    classify_failure,
)
from agent.fallback.llm import FallbackLLM
from agent.fallback.policy import Limits, RetryPolicy
from agent.fallback.stats import FallbackStats
from agent.fallback.stt import FallbackSTT
from agent.fallback.tts import FallbackTTS, StreamingFallbackTTS, fallback_tts
from agent.fallback.tts_stream import FallbackInputStream, InputState

__all__ = [
    "AllProvidersFailedError",
    "BreakerPermit",
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "FailureKind",
    "FallbackInputStream",
    "FallbackLLM",
    "FallbackSTT",
    "FallbackStats",
    "FallbackTTS",
    "InputState",
    "Limits",
    "ProviderAuthError",
    "ProviderFailure",
    "RetryPolicy",
    "StreamingFallbackTTS",
    "classify_failure",
    "fallback_tts",
]
