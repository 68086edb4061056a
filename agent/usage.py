"""What one turn used of each provider: who served each stage, and how much.

Filled as the turn runs (the listener's final transcript, the reply's LLM
usage report and synthesized text) and sent with the turn's ``MetricsEvent``;
the store keeps it with the turn, the metrics export it by provider and
stage, and a price table turns it into a cost estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class TurnUsage:
    """Per-turn usage by stage (None: the stage did not run in this turn)."""

    stt_provider: str | None = None
    stt_model: str | None = None
    stt_audio_s: float = 0.0
    """Seconds of caller audio sent to the final transcription."""
    llm_provider: str | None = None
    llm_model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tts_provider: str | None = None
    tts_voice: str | None = None
    tts_chars: int = 0
    """Characters of text sent to synthesis."""
    chains: dict[str, str] = field(default_factory=dict)
    """The configured provider chain of each stage, e.g. ``{"llm": "groq,local"}``."""
    cost_usd: float | None = None
    """Estimated cost from the price table (None: no price known for what was used)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for events and the store)."""
        return asdict(self)
