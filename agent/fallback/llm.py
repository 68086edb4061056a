"""``FallbackLLM``: an ``LLM`` that serves each reply from the first healthy provider of a chain."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence

from agent.errors import ProviderError
from agent.fallback.breaker import BreakerSettings, Clock
from agent.fallback.chain import ChainEntry
from agent.fallback.policy import Limits, RetryPolicy
from agent.fallback.stats import FallbackStats
from agent.fallback.wrapper import ChainWrapper
from agent.llm import (
    LLM,
    ChatMessage,
    GenerationSettings,
    LLMDelta,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)


def _commits(delta: LLMDelta) -> bool:
    """Text the caller will hear, or a tool call the reply will run."""
    return isinstance(delta, ToolCallDelta) or (isinstance(delta, TextDelta) and bool(delta.text))


class FallbackLLM(ChainWrapper[LLM]):
    """Streams each reply from the first provider of ``chain`` that answers in time.

    Before the first text or tool-call delta, a provider that fails or
    exceeds ``limits.llm_first_token_s`` is retried (retryable failures only,
    per ``policy``) or replaced by the next one, all within
    ``limits.budget_s``; providers whose circuit is open are skipped. After
    it, a failure (or ``limits.idle_s`` without a delta) ends the reply with
    a ``ProviderError`` and is never retried: what was said stays said.
    When no provider served, ``AllProvidersFailedError``.

    Every completed reply ends with a ``UsageDelta``: the provider's own, or
    one naming its chain entry and model (token counts 0: not reported).
    The wrapper owns its providers: ``aclose()`` closes them all.
    """

    def __init__(
        self,
        chain: Sequence[tuple[str, LLM]],
        limits: Limits | None = None,
        policy: RetryPolicy | None = None,
        *,
        breaker: BreakerSettings | None = None,
        clock: Clock = time.monotonic,
        stats: FallbackStats | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(
            "llm", chain, limits, policy, breaker=breaker, clock=clock, stats=stats, draw=draw
        )
        self.model = "|".join(f"{e.name}:{e.provider.model}" for e in self.engine.entries)
        """The chain, e.g. ``"groq:llama-3.3-70b|local:smollm2"``."""
        self.supports_tools = any(
            getattr(e.provider, "supports_tools", True) for e in self.engine.entries
        )
        """Whether some provider takes tools (the others ignore the specs and answer in text)."""

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncGenerator[LLMDelta, None]:
        """Yield the reply of the first provider that answers; see the class docstring."""
        if self._closed:
            raise ProviderError("llm", "fallback chain is closed")
        usage_seen = False

        def open_stream(llm: LLM) -> AsyncGenerator[LLMDelta, None]:
            return llm.stream(messages, settings, tools)

        def trailer(entry: ChainEntry[LLM]) -> Iterable[LLMDelta]:
            return () if usage_seen else (UsageDelta(entry.name, entry.provider.model),)

        deltas = self.engine.relay(
            open_stream,
            commits=_commits,
            limit_s=self.limits.llm_first_token_s,
            idle_s=self.limits.idle_s,
            budget_s=self.limits.budget_s,
            trailer=trailer,
        )
        try:
            async for delta in deltas:
                usage_seen = usage_seen or isinstance(delta, UsageDelta)
                yield delta
        finally:
            await deltas.aclose()
