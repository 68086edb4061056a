"""Helpers shared by the fallback wrappers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

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
