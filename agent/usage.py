"""What one turn used of each provider: who served each stage, and how much.

Filled as the turn runs (the listener's final transcript, the reply's LLM
usage report and synthesized text) and sent with the turn's ``MetricsEvent``;
the store keeps it with the turn, the metrics export it by provider and
stage, and a price table turns it into a cost estimate.

Preemptive replies (``agent.preemption``) that are dropped unheard (the
caller went on) were still served: their tokens and characters are billed.
``DroppedWork`` gathers them, and the next turn the session reports takes
them in (``TurnUsage.add_dropped``): they are part of its ``prompt_tokens``,
``completion_tokens`` and ``tts_chars``, so every sum and cost estimate counts
them, and they are shown apart in the ``dropped_*`` fields.
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
    preemptive_dropped: int = 0
    """Preemptive replies dropped unheard since the session's previous reported turn,
    whose work this turn's usage includes (the ``dropped_*`` fields)."""
    dropped_prompt_tokens: int = 0
    """Of ``prompt_tokens``, those of the dropped replies."""
    dropped_completion_tokens: int = 0
    """Of ``completion_tokens``, those of the dropped replies."""
    dropped_tts_chars: int = 0
    """Of ``tts_chars``, those the dropped replies sent to synthesis."""
    dropped_unreported: int = 0
    """Dropped replies whose LLM stream was cut before the provider reported its usage:
    their completion tokens are the pieces streamed so far, their prompt is not counted."""

    def add_dropped(self, work: DroppedWork) -> None:
        """Count the dropped preemptive replies' work as part of this turn's.

        Their tokens and characters are priced with this turn's provider of the
        stage; a stage this turn did not run takes the dropped replies' provider.
        """
        if not work.replies:
            return
        self.preemptive_dropped += work.replies
        self.prompt_tokens += work.prompt_tokens
        self.completion_tokens += work.completion_tokens
        self.tts_chars += work.tts_chars
        self.dropped_prompt_tokens += work.prompt_tokens
        self.dropped_completion_tokens += work.completion_tokens
        self.dropped_tts_chars += work.tts_chars
        self.dropped_unreported += work.unreported
        if self.llm_provider is None:
            self.llm_provider, self.llm_model = work.llm_provider, work.llm_model
        if self.tts_provider is None:
            self.tts_provider, self.tts_voice = work.tts_provider, work.tts_voice

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for events and the store)."""
        return asdict(self)


@dataclass(slots=True)
class DroppedWork:
    """What preemptive replies dropped unheard used, until a reported turn takes it."""

    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tts_chars: int = 0
    unreported: int = 0
    """Replies whose LLM stream was cut before it reported its usage."""
    llm_provider: str | None = None
    llm_model: str | None = None
    tts_provider: str | None = None
    tts_voice: str | None = None

    def add(self, usage: TurnUsage, *, llm_asked: bool, streamed_tokens: int) -> None:
        """Count one dropped reply: its ``usage`` so far, whether it asked the LLM, and
        the pieces its LLM streamed.

        A held reply asks the LLM once (its tools wait for the confirmation), so
        a reply that asked and has no LLM provider in its usage was cut before
        the report: its streamed pieces count as completion tokens (the
        adapters' own rule when a vendor reports none) and it counts as
        ``unreported``.
        """
        self.replies += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.tts_chars += usage.tts_chars
        if usage.llm_provider is not None:
            self.llm_provider, self.llm_model = usage.llm_provider, usage.llm_model
        elif llm_asked:
            self.unreported += 1
            self.completion_tokens += streamed_tokens
        if usage.tts_provider is not None:
            self.tts_provider, self.tts_voice = usage.tts_provider, usage.tts_voice
