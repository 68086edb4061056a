"""Preemptive replies: the answer prepared while the caller's turn may still go on.

When the caller pauses, the listener transcribes the utterance speculatively
(``turn.speculative_stt``); with ``turn.preemptive_reply`` the session starts
the reply to that transcript at once, while the end-of-turn silence timer
still runs. The reply runs as usual (LLM, chunker, TTS) but is held:

* its audio is queued in the playout buffer as a held utterance (silent, at
  most ``PlayoutBuffer.max_held_ms`` of it, ~2 s: a head start, not the whole
  answer; then the TTS waits, so a guess does not take the CPU the caller's
  real turn needs for VAD and STT);
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
no event of it is sent. What it used of the providers was spent all the same:
``Preemption`` keeps it (``agent.usage.DroppedWork``) until the session's
next reported turn takes it into its usage (``take_dropped``).

Bound: the kept events are at most one model step's deltas and the calls
it asked for (the tool round waits for the release), so ``max_tokens``
bounds them; past ``MAX_HELD_EVENTS`` (never reached with the shipped
limits) the reply is not worth holding and the session drops it.

``Preemption`` is the session's coordinator: at most one reply is held at a
time; ``prepare`` starts one (dropping an earlier one), ``claim`` hands it
over when the confirmed turn makes the same request (and drops it when not),
``adopt`` releases it as the turn's reply, ``drop`` cancels it unheard.
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
from agent.turnclock import TurnClock
from agent.usage import DroppedWork
from media.playout import PlayoutBuffer

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


Launch = Callable[[PreemptiveReply], Reply]
"""Builds a held reply's ``Reply`` (events to ``PreemptiveReply.emit``, tools waiting
for ``confirmed``) and starts it as its handle's task."""


class Preemption:
    """The session's preemptive replies: at most one held at a time (see the module doc).

    The session tells it what the caller does; ``launch`` (the session's)
    builds and starts the held reply's task, which the session owns.
    """

    def __init__(self, playout: PlayoutBuffer, launch: Launch, *, enabled: bool) -> None:
        self.enabled = enabled
        """Whether replies may start before the turn is confirmed (``turn.preemptive_reply``)."""
        self._playout = playout
        self._launch = launch
        self._held: PreemptiveReply | None = None
        self._dropped = DroppedWork()
        """What dropped replies used, not yet taken into a reported turn's usage."""

    @property
    def pending(self) -> PreemptiveReply | None:
        """The reply held for the pending turn, if any."""
        return self._held

    def prepare(self, turn_id: str, speech_end: float, plan: ReplyPlan) -> None:
        """Start the reply to the words said before the pause at ``speech_end``, held
        until its turn is confirmed (an earlier held reply is dropped)."""
        self.drop()
        if not self.enabled:
            return
        held = PreemptiveReply(turn_id, speech_end, plan)
        held.reply = self._launch(held)
        self._held = held

    def claim(
        self, turn_id: str, speech_end: float | None, plan: ReplyPlan
    ) -> PreemptiveReply | None:
        """The held reply, if it makes exactly the request of this confirmed turn (and is
        still going: one that failed or said nothing while held is asked afresh).
        Either way nothing is held afterwards: a reply that does not match is dropped."""
        held, self._held = self._held, None
        if held is None:
            return None
        reply = held.reply
        if (
            reply is not None
            and not reply.handle.done
            and held.matches(turn_id, speech_end, plan.messages, plan.tools)
        ):
            return held
        self._cancel(held)
        return None

    def adopt(
        self, held: PreemptiveReply, clock: TurnClock, sink: Callable[[AgentEvent], None]
    ) -> Reply:
        """A claimed reply becomes the turn's reply: it takes the turn's clock marks, its
        kept events go to ``sink`` in order, its audio plays and its tools may run."""
        reply = held.reply
        if reply is None:
            raise RuntimeError("a preemptive reply is adopted before it was launched")
        reply.clock.confirm(clock)
        held.release(sink)
        self._playout.release(reply.handle.id)
        return reply

    def holds(self, reply: Reply) -> bool:
        """Whether ``reply`` is the one held now (unseen by the caller)."""
        return self._held is not None and self._held.reply is reply

    def drop(self, turn_id: str | None = None) -> None:
        """Cancel the held reply unheard (only if it answers ``turn_id``, when given)."""
        held = self._held
        if held is None or (turn_id is not None and held.turn_id != turn_id):
            return
        self._held = None
        self._cancel(held)

    def take_dropped(self) -> DroppedWork:
        """What the replies dropped since the last call used (their work is counted once:
        the caller adds it to the turn it reports next)."""
        work, self._dropped = self._dropped, DroppedWork()
        return work

    def _cancel(self, held: PreemptiveReply) -> None:
        """Stop a held reply unheard: nothing of it is committed or sent; what it used of
        the providers is kept for ``take_dropped``."""
        held.drop()
        reply = held.reply
        if reply is not None:
            handle = reply.handle
            handle.interrupt()  # cancelled: its usage cannot grow after this
            self._playout.clear(handle.id)  # a reply that ended while held may have audio
            self._playout.forget(handle.id)
            clock = reply.clock
            self._dropped.add(
                clock.usage, llm_asked=clock.llm_start is not None, streamed_tokens=clock.llm_tokens
            )
