"""Our typed provider errors as livekit-agents' API errors (its retry loops read them)."""

from __future__ import annotations

from livekit.agents import APIConnectionError

from agent.errors import ProviderError


def to_api_error(exc: ProviderError) -> APIConnectionError:
    """``exc`` as an ``APIConnectionError`` that keeps its ``retryable`` flag."""
    return APIConnectionError(str(exc), retryable=exc.retryable)
