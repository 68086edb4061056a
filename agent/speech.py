"""A handle on one agent utterance: its task, its text and what the caller heard."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from agent.llm import ToolCall
from media.playout import PlayoutBuffer, heard_text


@dataclass(slots=True)
class SpeechHandle:
    """One reply of the agent, from the first token to the last played sample.

    ``interrupt()`` stops it at once: generation and synthesis are cancelled
    and its queued audio is dropped; ``heard_text`` then tells what the caller
    actually heard of it.
    """

    turn_id: str
    playout: PlayoutBuffer
    id: str = field(default_factory=lambda: "utt_" + secrets.token_hex(6))
    text: str = ""
    """The reply text generated so far."""
    interrupted: bool = False
    generation_done: bool = False
    """The LLM and TTS have produced everything; only playout remains."""
    task: asyncio.Task[None] | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Tool calls the model asked for in this reply."""
    voice: str | None = None
    """The voice that spoke the reply's latest audio (changes on a TTS fallback)."""

    @property
    def done(self) -> bool:
        """Whether the utterance is over (played out, interrupted or failed)."""
        return self.task is not None and self.task.done()

    def interrupt(self) -> None:
        """Stop the utterance now: silence at once, cancel its remaining work."""
        if self.done or self.interrupted:
            return
        self.interrupted = True
        self.playout.clear(self.id)
        if self.task is not None:
            self.task.cancel()

    @property
    def heard_text(self) -> str:
        """The part of the reply the caller heard."""
        return heard_text(self.playout.segments(self.id))
