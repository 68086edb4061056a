"""Price table: what each provider charges, and a turn's cost estimate from its usage.

Prices are per provider, and optionally per model of a provider (a model's
price of a stage overrides its provider's price of that stage):

- LLM: USD per million prompt tokens and per million completion tokens;
- STT: USD per hour of audio, with an optional minimum billed per request
  (Groq bills at least 10 s per transcription);
- TTS: USD per thousand characters.

A provider given as ``0`` is free on every stage (models running in-process).
The shipped table, ``agents/prices.yaml``, holds the vendors' list prices as
estimates; ``PARLEY_PRICES`` points the server at another one.

Usage is read in its wire form (``TurnUsage.to_dict()``, as ``MetricsEvent.usage``
carries it), tolerantly: a missing or malformed value counts as zero, and the
optional ``tts_model`` key prices synthesis per model where a usage carries it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError
from agent.usage import TurnUsage

DEFAULT_PRICES_PATH: Final = Path(__file__).resolve().parent.parent / "agents" / "prices.yaml"
"""The shipped price table (vendors' list prices, as estimates)."""

Stage = Literal["stt", "llm", "tts"]
STAGES: Final[tuple[Stage, ...]] = ("stt", "llm", "tts")
"""The stages a turn may use, in pipeline order."""

_COST_DIGITS: Final = 10
"""Costs are rounded to 1e-10 USD (float noise, not precision, is what goes)."""


class PriceTableError(ConfigError):
    """A price table that cannot be read or does not validate."""


class _Prices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlmPrice(_Prices):
    """What a language model charges, in USD per million tokens."""

    usd_per_1m_prompt_tokens: float = Field(ge=0, allow_inf_nan=False)
    usd_per_1m_completion_tokens: float = Field(ge=0, allow_inf_nan=False)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost of one turn's tokens."""
        return (
            prompt_tokens * self.usd_per_1m_prompt_tokens
            + completion_tokens * self.usd_per_1m_completion_tokens
        ) / 1e6


class SttPrice(_Prices):
    """What a transcription service charges, in USD per hour of audio."""

    usd_per_hour: float = Field(ge=0, allow_inf_nan=False)
    min_seconds_per_request: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Each request is billed at least this long (Groq: 10 s)."""

    def cost(self, audio_s: float) -> float:
        """The cost of one request of ``audio_s`` seconds (nothing sent: nothing billed)."""
        if audio_s <= 0:
            return 0.0
        return max(audio_s, self.min_seconds_per_request) * self.usd_per_hour / 3600


class TtsPrice(_Prices):
    """What a synthesis service charges, in USD per thousand characters."""

    usd_per_1k_chars: float = Field(ge=0, allow_inf_nan=False)

    def cost(self, chars: int) -> float:
        """The cost of synthesizing ``chars`` characters."""
        return chars * self.usd_per_1k_chars / 1000


class StagePrices(_Prices):
    """The prices of one provider or model, by stage (None: not priced)."""

    stt: SttPrice | None = None
    llm: LlmPrice | None = None
    tts: TtsPrice | None = None

    def of(self, stage: Stage) -> SttPrice | LlmPrice | TtsPrice | None:
        """The price of ``stage``."""
        price: SttPrice | LlmPrice | TtsPrice | None = getattr(self, stage)
        return price


class ProviderPrices(StagePrices):
    """A provider's prices by stage, and its models' prices overriding them.

    Written as ``0`` in a table: free on every stage.
    """

    models: dict[str, StagePrices] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _zero_is_free(cls, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, int | float):
            return data
        if data != 0:
            raise ValueError(
                "a provider's prices are a mapping of stages (stt, llm, tts, models), "
                f"or 0 for a free provider; got the number {data!r}"
            )
        return {
            "stt": {"usd_per_hour": 0},
            "llm": {"usd_per_1m_prompt_tokens": 0, "usd_per_1m_completion_tokens": 0},
            "tts": {"usd_per_1k_chars": 0},
        }


@dataclass(frozen=True, slots=True)
class StageUse:
    """What one turn used of one stage: the provider, its model and the billed quantities."""

    stage: Stage
    provider: str
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_s: float = 0.0
    chars: int = 0


def stage_uses(usage: TurnUsage | Mapping[str, Any]) -> list[StageUse]:
    """The stages a turn ran (those with a provider), in pipeline order.

    ``usage`` is a ``TurnUsage`` or its dict form; malformed values count as
    zero, and a stage without a provider name did not run.
    """
    data = usage.to_dict() if isinstance(usage, TurnUsage) else usage
    uses: list[StageUse] = []
    stt = _name(data.get("stt_provider"))
    if stt is not None:
        uses.append(
            StageUse("stt", stt, _name(data.get("stt_model")), audio_s=_amount(data, "stt_audio_s"))
        )
    llm = _name(data.get("llm_provider"))
    if llm is not None:
        uses.append(
            StageUse(
                "llm",
                llm,
                _name(data.get("llm_model")),
                prompt_tokens=int(_amount(data, "prompt_tokens")),
                completion_tokens=int(_amount(data, "completion_tokens")),
            )
        )
    tts = _name(data.get("tts_provider"))
    if tts is not None:
        uses.append(
            StageUse(
                "tts", tts, _name(data.get("tts_model")), chars=int(_amount(data, "tts_chars"))
            )
        )
    return uses


class PriceTable(_Prices):
    """Providers' prices; turns a turn's usage into a cost estimate in USD.

    Provider names are matched case-insensitively, model names exactly.
    """

    providers: dict[str, ProviderPrices] = Field(default_factory=dict)

    @field_validator("providers", mode="before")
    @classmethod
    def _normalized_names(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, Any] = {}
        for name, prices in value.items():
            key = str(name).strip().lower()
            if not key:
                raise ValueError("a provider name is empty")
            if key in out:
                raise ValueError(f"provider {key!r} is listed twice")
            out[key] = prices
        return out

    @classmethod
    def load(cls, path: Path | str | None = None) -> PriceTable:
        """Read and validate a YAML price table (default: the shipped ``agents/prices.yaml``).

        Raises ``PriceTableError`` naming the file and, for invalid values,
        each offending entry by its path (``providers.groq.models.x.llm...``).
        """
        p = Path(path) if path is not None else DEFAULT_PRICES_PATH
        try:
            raw = yaml.safe_load(p.read_text("utf-8"))
        except OSError as exc:
            raise PriceTableError(f"cannot read price table {p}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise PriceTableError(f"price table {p} is not valid YAML: {exc}") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise PriceTableError(f"price table {p} must be a mapping with a 'providers' key")
        return cls.parse(raw, source=str(p))

    @classmethod
    def parse(cls, data: Mapping[str, Any], source: str = "<mapping>") -> PriceTable:
        """Validate a price table given as data (``source`` names it in errors)."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
                for error in exc.errors()
            )
            raise PriceTableError(f"invalid price table {source}: {problems}") from exc

    def price(
        self, stage: Stage, provider: str, model: str | None = None
    ) -> SttPrice | LlmPrice | TtsPrice | None:
        """The price of ``stage`` at ``provider`` for ``model`` (the model's, else the
        provider's); None when the table has none."""
        prices = self.providers.get(provider.strip().lower())
        if prices is None:
            return None
        if model is not None:
            of_model = prices.models.get(model.strip())
            if of_model is not None and of_model.of(stage) is not None:
                return of_model.of(stage)
        return prices.of(stage)

    def stage_cost(self, use: StageUse) -> float | None:
        """The cost of one stage's use; None when it has no price."""
        price = self.price(use.stage, use.provider, use.model)
        if isinstance(price, SttPrice):
            return price.cost(use.audio_s)
        if isinstance(price, LlmPrice):
            return price.cost(use.prompt_tokens, use.completion_tokens)
        if isinstance(price, TtsPrice):
            return price.cost(use.chars)
        return None

    def cost_by_stage(self, usage: TurnUsage | Mapping[str, Any]) -> dict[str, float]:
        """The cost of each stage the turn ran that has a known price (USD)."""
        out: dict[str, float] = {}
        for use in stage_uses(usage):
            cost = self.stage_cost(use)
            if cost is not None:
                out[use.stage] = round(cost, _COST_DIGITS)
        return out

    def cost(self, usage: TurnUsage | Mapping[str, Any]) -> float | None:
        """The turn's cost estimate (USD): the sum over its priced stages.

        None when no stage that ran has a known price; stages without a price
        are left out (``unpriced`` names them). Free providers give 0.0.
        """
        by_stage = self.cost_by_stage(usage)
        if not by_stage:
            return None
        return round(math.fsum(by_stage.values()), _COST_DIGITS)

    def unpriced(self, usage: TurnUsage | Mapping[str, Any]) -> list[StageUse]:
        """The stages the turn ran that the table has no price for."""
        return [u for u in stage_uses(usage) if self.price(u.stage, u.provider, u.model) is None]


def _name(value: Any) -> str | None:
    """A provider or model name; None when absent, blank or not a string."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text or None


def _amount(data: Mapping[str, Any], key: str) -> float:
    """A non-negative finite number from ``data`` (zero when missing or malformed)."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) and number > 0 else 0.0
