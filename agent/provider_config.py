"""Which providers serve each stage, their settings, and how the chains fall back.

Part of the agent YAML::

    providers:                 # chains, first choice first
      stt: [groq, local]
      llm: [groq, local]
      tts: [elevenlabs, local]
    cloud:
      groq: {llm_model: llama-3.3-70b-versatile, stt_prompt: "..."}
      elevenlabs: {voice_id: 21m00Tcm4TlvDq8ikWAM}
    fallback:
      llm_first_token_s: 2.5

``PARLEY_STT``, ``PARLEY_LLM`` and ``PARLEY_TTS`` (comma-separated) override
the chains; keys and endpoints come from the environment only
(``CloudCredentials``): a YAML file is shared, a key is not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.errors import ConfigError
from agent.fallback import BreakerSettings, Limits, RetryPolicy

LOCAL = "local"
STAGE_PROVIDERS: Mapping[str, frozenset[str]] = {
    "stt": frozenset({LOCAL, "groq"}),
    "llm": frozenset({LOCAL, "groq", "openai"}),
    "tts": frozenset({LOCAL, "elevenlabs"}),
}
"""The providers each stage can use."""
KEY_VARIABLES: Mapping[str, str] = {
    "groq": "GROQ_API_KEY",
    "openai": "OPENAI_API_KEY",
    "elevenlabs": "ELEVENLABS_API_KEY",
}
BASE_URL_VARIABLES: Mapping[str, str] = {
    "groq": "GROQ_BASE_URL",
    "openai": "OPENAI_BASE_URL",
    "elevenlabs": "ELEVENLABS_BASE_URL",
}
CHAIN_VARIABLES: Mapping[str, str] = {
    "stt": "PARLEY_STT",
    "llm": "PARLEY_LLM",
    "tts": "PARLEY_TTS",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _chain(stage: str, names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError(f"the {stage} chain names no provider")
    unknown = [n for n in names if n not in STAGE_PROVIDERS[stage]]
    if unknown:
        known = ", ".join(sorted(STAGE_PROVIDERS[stage]))
        raise ValueError(f"{stage}: unknown provider {unknown[0]!r} (known: {known})")
    if len(set(names)) != len(names):
        raise ValueError(f"{stage}: a provider appears twice in the chain")
    return names


class ProvidersConfig(_Section):
    """The provider chain of each stage, first choice first."""

    stt: tuple[str, ...] = (LOCAL,)
    llm: tuple[str, ...] = (LOCAL,)
    tts: tuple[str, ...] = (LOCAL,)

    @field_validator("stt", "llm", "tts")
    @classmethod
    def _known(cls, value: tuple[str, ...], info: object) -> tuple[str, ...]:
        stage = getattr(info, "field_name", "")
        return _chain(stage, tuple(n.strip().lower() for n in value))

    def with_environment(self, env: Mapping[str, str]) -> ProvidersConfig:
        """The chains with ``PARLEY_STT``/``PARLEY_LLM``/``PARLEY_TTS`` overrides applied."""
        updates: dict[str, tuple[str, ...]] = {}
        for stage, variable in CHAIN_VARIABLES.items():
            raw = env.get(variable, "").strip()
            if raw:
                names = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
                try:
                    updates[stage] = _chain(stage, names)
                except ValueError as exc:
                    raise ConfigError(f"{variable}: {exc}") from None
        return self.model_copy(update=updates) if updates else self

    def cloud(self) -> set[str]:
        """The cloud providers named by any chain."""
        return {n for chain in (self.stt, self.llm, self.tts) for n in chain if n != LOCAL}


class GroqConfig(_Section):
    """Groq: chat completions and Whisper transcription."""

    llm_model: str = "llama-3.3-70b-versatile"
    stt_model: str = "whisper-large-v3-turbo"
    stt_language: str | None = "en"
    stt_prompt: str | None = None
    """Whisper prompt, e.g. one that keeps non-English titles in Latin script."""
    timeout_s: float = Field(10.0, gt=0, le=120)


class OpenAIConfig(_Section):
    """Any OpenAI-compatible chat completions server (OpenAI, vLLM, Ollama, llama.cpp)."""

    model: str = "gpt-4.1-mini"
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    """Older compatible servers only know ``max_tokens``."""
    timeout_s: float = Field(10.0, gt=0, le=120)


class ElevenLabsConfig(_Section):
    """ElevenLabs text to speech."""

    voice_id: str = "21m00Tcm4TlvDq8ikWAM"
    model_id: str = "eleven_flash_v2_5"
    output_format: Literal["pcm_16000", "pcm_22050", "pcm_24000"] = "pcm_16000"
    input_streaming: bool = True
    """Send the LLM's text over the input-streaming WebSocket as it is written
    (first audio earliest); false: one HTTP stream per sentence."""
    timeout_s: float = Field(10.0, gt=0, le=120)


class CloudConfig(_Section):
    """Settings of each cloud provider (keys come from the environment)."""

    groq: GroqConfig = GroqConfig()
    openai: OpenAIConfig = OpenAIConfig()
    elevenlabs: ElevenLabsConfig = ElevenLabsConfig()


class FallbackConfig(_Section):
    """Time limits, retries and circuit breakers of the provider chains."""

    llm_first_token_s: float = Field(2.5, gt=0, le=60)
    stt_transcript_s: float = Field(3.0, gt=0, le=60)
    tts_first_audio_s: float = Field(2.0, gt=0, le=60)
    idle_s: float = Field(5.0, gt=0, le=60)
    budget_s: float = Field(6.0, gt=0, le=120)
    max_attempts: int = Field(2, ge=1, le=5)
    breaker_failures: int = Field(3, ge=1, le=100)
    breaker_cooldown_s: float = Field(10.0, gt=0, le=600)
    apology: str = Field(
        "Sorry, I'm having trouble answering right now. Please try again in a moment.",
        min_length=1,
        max_length=300,
    )
    """Spoken by the local voice when every provider of a stage failed."""

    def limits(self) -> Limits:
        """The chains' time limits."""
        return Limits(
            llm_first_token_s=self.llm_first_token_s,
            stt_transcript_s=self.stt_transcript_s,
            tts_first_audio_s=self.tts_first_audio_s,
            idle_s=self.idle_s,
            budget_s=self.budget_s,
        )

    def policy(self) -> RetryPolicy:
        """The chains' retry policy."""
        return RetryPolicy(max_attempts=self.max_attempts)

    def breaker(self) -> BreakerSettings:
        """Each provider's circuit breaker."""
        return BreakerSettings(
            failure_threshold=self.breaker_failures,
            cooldown_s=self.breaker_cooldown_s,
            max_cooldown_s=max(120.0, self.breaker_cooldown_s),
        )


@dataclass(frozen=True, slots=True)
class CloudCredentials:
    """API keys and base URLs of the cloud providers, from the environment.

    ``repr`` shows which keys are set, never their values.
    """

    keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    base_urls: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CloudCredentials:
        """Read ``GROQ_API_KEY``, ``GROQ_BASE_URL``, ``OPENAI_*``, ``ELEVENLABS_*``."""
        source = os.environ if env is None else env
        keys = {p: source[v].strip() for p, v in KEY_VARIABLES.items() if source.get(v, "").strip()}
        urls = {
            p: source[v].strip() for p, v in BASE_URL_VARIABLES.items() if source.get(v, "").strip()
        }
        return cls(keys, urls)

    def key(self, provider: str) -> str:
        """The key of ``provider``; ``ConfigError`` (one line) when it is not set."""
        key = self.keys.get(provider)
        if not key:
            raise ConfigError(
                f"the provider chain names {provider} but {KEY_VARIABLES[provider]} is not set"
            )
        return key

    def check(self, providers: ProvidersConfig) -> None:
        """Fail with one clear line when a chain names a cloud provider without its key."""
        for name in sorted(providers.cloud()):
            self.key(name)

    def __repr__(self) -> str:
        return f"CloudCredentials(keys={sorted(self.keys)}, base_urls={dict(self.base_urls)})"
