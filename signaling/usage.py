"""Per-session sums of the usage stored with the agent's turns (the sessions API's ``usage``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.pricing import STAGES, Stage, StageUse, stage_uses

_COST_DIGITS = 10


@dataclass(slots=True)
class ProviderTotals:
    """What a session used of one provider on one stage."""

    stage: Stage
    turns: int = 0
    """Turns this provider served on this stage."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_s: float = 0.0
    chars: int = 0
    cost_usd: float | None = None
    """Sum of this stage's priced costs (None: no turn had a price for it)."""

    def add(self, use: StageUse, cost: float | None) -> None:
        """Count one turn's use of the stage, and its cost when priced."""
        self.turns += 1
        self.prompt_tokens += use.prompt_tokens
        self.completion_tokens += use.completion_tokens
        self.audio_s += use.audio_s
        self.chars += use.chars
        if cost is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the quantities of its stage only."""
        out: dict[str, Any] = {"turns": self.turns}
        if self.stage == "llm":
            out["prompt_tokens"] = self.prompt_tokens
            out["completion_tokens"] = self.completion_tokens
        elif self.stage == "stt":
            out["audio_s"] = round(self.audio_s, 3)
        else:
            out["chars"] = self.chars
        out["cost_usd"] = None if self.cost_usd is None else round(self.cost_usd, _COST_DIGITS)
        return out


@dataclass(slots=True)
class UsageTotals:
    """Sums over a session's turns: tokens, audio seconds, characters, cost, by provider."""

    turns: int = 0
    """Turns that carry usage (agent turns recorded with it)."""
    priced_turns: int = 0
    """Of those, turns with a cost estimate."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stt_audio_s: float = 0.0
    tts_chars: int = 0
    cost_usd: float | None = None
    """Sum of the turns' estimates (None: no turn had one)."""
    preemptive_dropped: int = 0
    """Preemptive replies dropped unheard (the caller went on). Their work is part of
    the sums above; the ``dropped_*`` sums say how much of them it is."""
    dropped_prompt_tokens: int = 0
    dropped_completion_tokens: int = 0
    dropped_tts_chars: int = 0
    providers: dict[Stage, dict[str, ProviderTotals]] = field(
        default_factory=lambda: {stage: {} for stage in STAGES}
    )

    @classmethod
    def of(cls, usages: Iterable[Mapping[str, Any] | None]) -> UsageTotals:
        """The sums of ``usages`` (turns' stored usage; None entries are skipped)."""
        totals = cls()
        for usage in usages:
            if usage is not None:
                totals.add(usage)
        return totals

    def add(self, usage: Mapping[str, Any]) -> None:
        """Count one turn's stored usage (``TurnUsage`` as a dict, plus ``cost_by_stage``)."""
        self.turns += 1
        cost = _cost(usage.get("cost_usd"))
        if cost is not None:
            self.priced_turns += 1
            self.cost_usd = (self.cost_usd or 0.0) + cost
        self.preemptive_dropped += _count(usage.get("preemptive_dropped"))
        self.dropped_prompt_tokens += _count(usage.get("dropped_prompt_tokens"))
        self.dropped_completion_tokens += _count(usage.get("dropped_completion_tokens"))
        self.dropped_tts_chars += _count(usage.get("dropped_tts_chars"))
        by_stage = usage.get("cost_by_stage")
        stage_costs = by_stage if isinstance(by_stage, Mapping) else {}
        for use in stage_uses(usage):
            self.prompt_tokens += use.prompt_tokens
            self.completion_tokens += use.completion_tokens
            self.stt_audio_s += use.audio_s
            self.tts_chars += use.chars
            per_provider = self.providers[use.stage]
            entry = per_provider.get(use.provider)
            if entry is None:
                entry = per_provider[use.provider] = ProviderTotals(use.stage)
            entry.add(use, _cost(stage_costs.get(use.stage)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the totals, and ``providers[stage][provider]`` with each one's share."""
        return {
            "turns": self.turns,
            "priced_turns": self.priced_turns,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "stt_audio_s": round(self.stt_audio_s, 3),
            "tts_chars": self.tts_chars,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, _COST_DIGITS),
            "preemptive_dropped": self.preemptive_dropped,
            "dropped_prompt_tokens": self.dropped_prompt_tokens,
            "dropped_completion_tokens": self.dropped_completion_tokens,
            "dropped_tts_chars": self.dropped_tts_chars,
            "providers": {
                stage: {name: t.to_dict() for name, t in sorted(by_provider.items())}
                for stage, by_provider in self.providers.items()
            },
        }


def _count(value: Any) -> int:
    """A stored count (0 when absent, malformed or negative: turns stored before it existed)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


def _cost(value: Any) -> float | None:
    """A stored cost (None when absent or malformed)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None
