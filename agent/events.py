"""Typed events a voice session emits (to the client, the store and the CLI).

Every event serialises to a JSON-ready dict with a ``type`` field; the wire
format is the same on the WebRTC data channel, the WebSocket and the CLI.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any


class SessionState(enum.Enum):
    """States of a voice session; transitions live in ``agent.session``."""

    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """Base of all session events."""

    type: str = field(init=False, default="event")
    at: float = field(init=False, default_factory=time.time)
    """Wall-clock time the event was created (UNIX seconds)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, enum.Enum):
                data[key] = value.value
        return data


@dataclass(frozen=True, slots=True)
class StateEvent(AgentEvent):
    """The session moved to a new state."""

    state: SessionState
    previous: SessionState
    type: str = field(init=False, default="state")


@dataclass(frozen=True, slots=True)
class VadEvent(AgentEvent):
    """The caller started or stopped speaking (stream time in seconds)."""

    speaking: bool
    stream_time: float
    type: str = field(init=False, default="vad")


@dataclass(frozen=True, slots=True)
class TranscriptEvent(AgentEvent):
    """A partial or final transcript of the caller's turn."""

    turn_id: str
    text: str
    final: bool
    confidence: float
    type: str = field(init=False, default="transcript")


@dataclass(frozen=True, slots=True)
class ReplyDeltaEvent(AgentEvent):
    """A piece of the agent's reply text as the LLM produces it."""

    turn_id: str
    text: str
    type: str = field(init=False, default="reply_delta")


@dataclass(frozen=True, slots=True)
class ReplyEvent(AgentEvent):
    """The agent's whole reply of a turn, once it is over.

    ``text`` is what the LLM produced, ``heard_text`` what the caller heard
    (what enters the chat history).
    """

    turn_id: str
    text: str
    heard_text: str
    interrupted: bool
    type: str = field(init=False, default="reply")


@dataclass(frozen=True, slots=True)
class InterruptionEvent(AgentEvent):
    """Barge-in: ``phase`` is "paused", "confirmed" or "resumed" (false interruption)."""

    turn_id: str
    phase: str
    type: str = field(init=False, default="interruption")


@dataclass(frozen=True, slots=True)
class MetricsEvent(AgentEvent):
    """Per-turn latencies in milliseconds (None where a stage did not run)."""

    turn_id: str
    voice_to_voice_ms: float | None
    end_of_turn_ms: float | None
    """From the end of speech to the decision that the turn ended."""
    stt_final_ms: float | None
    """Wall time of the final STT call."""
    stt_wait_ms: float | None
    """Time the turn waited for the final transcript after it ended (0 if speculation won)."""
    llm_first_token_ms: float | None
    tts_first_audio_ms: float | None
    """From the first text chunk to its first synthesized audio."""
    reply_first_audio_ms: float | None
    """From the end of the turn to the first agent audio played."""
    llm_tokens: int
    speculative_hit: bool
    interrupted: bool
    usage: dict[str, Any] = field(default_factory=dict)
    """The turn's ``agent.usage.TurnUsage`` as a dict: providers, models, tokens,
    audio seconds, characters and the cost estimate."""
    marks_ms: dict[str, float] = field(default_factory=dict)
    """When the turn's marks fell, in ms after the end of the caller's speech (those
    reached of ``turn_end``, ``stt_ready``, ``llm_start``, ``llm_first_token``,
    ``tts_first_chunk``, ``tts_first_audio``, ``first_audio``, and for a preemptive
    reply ``released``: when its turn was confirmed), and ``emitted``: when this
    event was made (``at``), which places them in wall-clock time (traces). A
    preemptive reply's ``llm_start`` falls before ``turn_end``."""
    preemptive: bool = False
    """The reply was started on the speculative transcript while the turn was pending
    and held until the turn was confirmed (``agent.preemption``)."""
    preemptive_hidden_ms: float | None = None
    """A preemptive reply's LLM and TTS time (request to first synthesized audio) that
    ran before the turn was confirmed, i.e. hidden behind the end-of-turn wait."""
    type: str = field(init=False, default="metrics")


@dataclass(frozen=True, slots=True)
class ErrorEvent(AgentEvent):
    """A stage failed; the session goes on listening."""

    stage: str
    message: str
    retryable: bool
    type: str = field(init=False, default="error")


@dataclass(frozen=True, slots=True)
class DtmfEvent(AgentEvent):
    """The caller pressed a key of the phone's keypad (0-9, *, #, A-D)."""

    digit: str
    duration_ms: int
    type: str = field(init=False, default="dtmf")


@dataclass(frozen=True, slots=True)
class HoldEvent(AgentEvent):
    """The caller put the call on hold (``on_hold``) or took it back."""

    on_hold: bool
    type: str = field(init=False, default="hold")


@dataclass(frozen=True, slots=True)
class ToolCallEvent(AgentEvent):
    """The model asked for a tool call (``arguments``: the JSON text it wrote).

    ``step`` numbers the model's requests within the turn (0 first).
    """

    turn_id: str
    call_id: str
    name: str
    arguments: str
    step: int
    type: str = field(init=False, default="tool_call")


@dataclass(frozen=True, slots=True)
class ToolResultEvent(AgentEvent):
    """A tool call ended: ``ok``, or failed with ``code`` (``"bad_arguments"``, ...).

    ``action`` names the action it completed (None for a lookup or a failure),
    ``data`` is the tool's structured result and ``content`` what the model
    reads; ``late`` marks a result that came after the caller interrupted the
    reply (an action that may not be cancelled completes anyway).
    """

    turn_id: str
    call_id: str
    name: str
    ok: bool
    code: str | None
    action: str | None
    content: str
    data: dict[str, Any]
    duration_ms: float
    late: bool = False
    type: str = field(init=False, default="tool_result")
