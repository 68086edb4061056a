"""``FallbackSTT``: an ``STT`` that transcribes with the first healthy provider of a chain."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from agent.errors import ConfigError, ProviderError
from agent.fallback.breaker import BreakerSettings, Clock
from agent.fallback.policy import Limits, RetryPolicy
from agent.fallback.stats import FallbackStats
from agent.fallback.wrapper import ChainWrapper
from agent.stt import STT, Transcript
from media.frames import FloatPCM


class FallbackSTT(ChainWrapper[STT]):
    """Transcribes with the first provider of ``chain`` that answers in time.

    Final transcriptions go through the whole chain: a provider that fails
    or exceeds ``limits.stt_transcript_s`` is retried (retryable failures,
    per ``policy``) or replaced by the next, within ``limits.budget_s``;
    providers whose circuit is open are skipped; when none served,
    ``AllProvidersFailedError``.

    Partial transcriptions go only to the ``partials_from`` entry (default:
    the chain's last, typically the local model, since a cloud STT that only
    does finals would bill every interim result), once, with the same
    limit: a late partial is useless, the next one supersedes it. Its
    failure raises ``AllProvidersFailedError`` naming that one provider.

    The transcript keeps the ``provider``/``model`` its provider gave it.
    The wrapper owns its providers: ``aclose()`` closes them all.
    """

    def __init__(
        self,
        chain: Sequence[tuple[str, STT]],
        limits: Limits | None = None,
        policy: RetryPolicy | None = None,
        *,
        partials_from: str | None = None,
        breaker: BreakerSettings | None = None,
        clock: Clock = time.monotonic,
        stats: FallbackStats | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(
            "stt", chain, limits, policy, breaker=breaker, clock=clock, stats=stats, draw=draw
        )
        entries = self.engine.entries
        rates = {e.provider.sample_rate for e in entries}
        if len(rates) != 1:
            raise ConfigError(f"stt: the chain's providers take different sample rates {rates}")
        self.sample_rate = entries[0].provider.sample_rate
        self._partials = self.engine.entry(partials_from or entries[-1].name)

    @property
    def partials_from(self) -> str:
        """The chain entry that serves partial transcriptions."""
        return self._partials.name

    async def transcribe(self, audio: FloatPCM, *, partial: bool = False) -> Transcript:
        """Transcribe ``audio``; see the class docstring for who serves it."""
        if self._closed:
            raise ProviderError("stt", "fallback chain is closed")

        async def call(stt: STT) -> Transcript:
            return await stt.transcribe(audio, partial=partial)

        limit = self.limits.stt_transcript_s
        if partial:
            attempt, transcript = await self.engine.first(
                call,
                limit_s=limit,
                budget_s=min(limit, self.limits.budget_s),
                entries=(self._partials,),
                max_attempts=1,
            )
        else:
            attempt, transcript = await self.engine.first(
                call, limit_s=limit, budget_s=self.limits.budget_s
            )
        attempt.succeed()
        return transcript
