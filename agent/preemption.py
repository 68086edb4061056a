"""Preemptive replies: the answer prepared while the caller's turn may still go on.

When the caller pauses, the listener transcribes the utterance speculatively
(``turn.speculative_stt``); with ``turn.preemptive_reply`` the session starts
the reply to that transcript at once, while the end-of-turn silence timer
still runs. The reply runs as usual (LLM, chunker, TTS) but is held:

* its audio is queued in the playout buffer as a held utterance (silent, it
  fills the buffer up to its bound and then the TTS waits);
* its events (reply deltas, tool calls) are kept here, unsent;
* its tools wait (``confirmed``): a tool never runs before the turn is confirmed;
* the session stays LISTENING: the caller may still be speaking, so the
  client must not see THINKING or SPEAKING yet.

Phases (one writer each: ``release`` and ``drop``)::

    HELD --release (TURN_ENDED, same turn and speech end, same request)--> RELEASED
    HELD --drop (the caller went on, the request differs, the call ends)--> DROPPED

On release the session adopts the reply as the turn's reply: it takes the
confirmed turn's clock marks, enters THINKING, its kept events are sent in
order, its audio plays, its tools may run. The request is the same one the
turn would have made (``matches`` compares the whole request: history, the
user's words, the tools), so the history is never touched before the
confirmation. A dropped reply is cancelled unheard: nothing is committed,
no event of it is sent.

Bound: the kept events are at most one model step's deltas and the calls
it asked for (the tool round waits for the release), so ``max_tokens``
bounds them; past ``MAX_HELD_EVENTS`` (never reached with the shipped
limits) the reply is not worth holding and the session drops it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.events import AgentEvent
from agent.llm import ChatMessage, ToolSpec
from agent.reply import Reply, ReplyPlan

MAX_HELD_EVENTS = 4096
"""Events a held reply may keep before it is dropped (far above one step's tokens)."""


class PreemptionPhase(enum.Enum):
    """Where a preemptive reply stands."""

    HELD = "held"
    RELEASED = "released"
    DROPPED = "dropped"


@dataclass(eq=False, slots=True)
class PreemptiveReply:
    """A reply started on a speculative transcript, held until its turn is confirmed."""

    turn_id: str
    speech_end: float
    """Stream time at which the caller's speech stopped (the pause it answers)."""
    plan: ReplyPlan
    reply: Reply | None = None
    """Set by the session right after it builds the reply (it needs ``emit``)."""
    started: float = field(default_factory=time.monotonic)
    phase: PreemptionPhase = PreemptionPhase.HELD
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on release: the reply's tools may run from then on."""
    overflowed: bool = False
    """More events came than ``MAX_HELD_EVENTS``: the session drops the reply."""
    _events: list[AgentEvent] = field(default_factory=list)
    _sink: Callable[[AgentEvent], None] | None = None

    @property
    def held(self) -> bool:
        """Whether the reply still waits for its turn to be confirmed."""
        return self.phase is PreemptionPhase.HELD

    def emit(self, event: AgentEvent) -> None:
        """The reply's event sink: kept while held, sent once released, dropped after a drop."""
        if self.phase is PreemptionPhase.RELEASED:
            assert self._sink is not None
            self._sink(event)
        elif self.phase is PreemptionPhase.HELD:
            if len(self._events) >= MAX_HELD_EVENTS:
                self.overflowed = True
                return
            self._events.append(event)

    def matches(
        self,
        turn_id: str,
        speech_end: float | None,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
    ) -> bool:
        """Whether the confirmed turn would make exactly this reply's request."""
        return (
            self.held
            and not self.overflowed
            and turn_id == self.turn_id
            and speech_end == self.speech_end
            and tuple(messages) == tuple(self.plan.messages)
            and tuple(tools) == tuple(self.plan.tools)
        )

    def release(self, sink: Callable[[AgentEvent], None]) -> None:
        """HELD -> RELEASED: send the kept events to ``sink`` in order, then pass the
        reply's later events straight through, and let its tools run."""
        if not self.held:
            raise RuntimeError(f"cannot release a {self.phase.value} preemptive reply")
        self.phase = PreemptionPhase.RELEASED
        self._sink = sink
        events, self._events = self._events, []
        for event in events:
            sink(event)
        self.confirmed.set()

    def drop(self) -> None:
        """HELD -> DROPPED: forget the kept events; later ones are discarded (idempotent
        for a dropped reply). The session cancels the reply itself."""
        if self.phase is PreemptionPhase.RELEASED:
            raise RuntimeError("cannot drop a released preemptive reply")
        self.phase = PreemptionPhase.DROPPED
        self._events = []
