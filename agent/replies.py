"""A session's replies: how each is built, and the tool rounds that outlive them.

``Replies`` is the session's reply workshop. It builds each ``Reply`` with
the session's providers, playout and tools; it keeps every reply that was
started and not yet committed (so each is committed exactly once); and it
settles tool rounds that run on after their reply ended.

Tools and barge-in (``agent.toolloop``): no tool starts while a barge-in is
pending (``hold_tools`` / ``allow_tools``), and a held preemptive reply's
tools wait for its turn to be confirmed. A reply interrupted while a round
of tools that may not be cancelled still runs is *unsettled*:

* when it is committed, a slot is reserved in the history right after what
  the caller heard of it (``ChatHistory.reserve``);
* when the round ends, its completed calls and results fill that slot, so
  they stand before whatever the caller said in the meantime (the next
  request ends on the caller's words, not on a late tool result); a round
  that completed nothing gives the slot up;
* the next reply that asks the model waits for every unsettled round first
  (``settle``), then asks with their results in the context.

Phases of an unsettled reply: committed with a round running -> the round
ends (slot filled or released) -> the reply's task ends (``ended``: forgotten).
When the session closes, ``abort`` stops the actions that are still running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.events import AgentEvent
from agent.history import ChatHistory, HistorySlot
from agent.llm import ToolSpec
from agent.reply import Reply, ReplyPlan
from agent.runtime import AgentModels
from agent.speech import SpeechHandle
from agent.tasks import describe_failure
from agent.toolloop import ToolRound, ToolUse
from agent.tools import ToolContext, ToolRegistry
from agent.turnclock import TurnClock
from media.playout import PlayoutBuffer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Unsettled:
    """An interrupted reply whose last round of tools still runs."""

    reply: Reply
    slot: HistorySlot
    """Where the round's calls and results go in the history."""


class Replies:
    """Builds a session's replies and settles their tool rounds (see the module doc)."""

    def __init__(
        self,
        config: AgentConfig,
        models: AgentModels,
        playout: PlayoutBuffer,
        history: ChatHistory,
        *,
        owner: str,
        tools: ToolRegistry | None,
        tool_context: Callable[[str], ToolContext],
        on_speaking: Callable[[SpeechHandle], None],
    ) -> None:
        """``owner``: who the replies are for, in logs ("session ses_..."); ``tool_context``:
        the context a turn's tools act in (who the caller is now); ``on_speaking``: told
        when a reply's first sample is played."""
        self._owner = owner
        self._config = config
        self._models = models
        self._playout = playout
        self._history = history
        self._tools = tools if tools is not None and len(tools) else None
        self._tool_settings = config.tools.to_settings()
        self._generation = config.llm.generation()
        self._tool_context = tool_context
        self._on_speaking = on_speaking
        self._may_act = asyncio.Event()
        """Clear while a barge-in is pending: no tool starts until it is settled."""
        self._may_act.set()
        self._live: dict[str, Reply] = {}
        """Replies started and not committed yet, by handle id."""
        self._unsettled: dict[str, _Unsettled] = {}
        """Interrupted replies whose last round of tools still runs, by handle id."""

    # ------------------------------------------------------------ building

    def specs(self) -> Sequence[ToolSpec]:
        """The tools a reply offers the model (none without a registry)."""
        return self._tools.specs() if self._tools is not None else ()

    def build(
        self,
        handle: SpeechHandle,
        plan: ReplyPlan,
        clock: TurnClock,
        *,
        emit: Callable[[AgentEvent], None],
        local_voice: bool = False,
        confirmed: asyncio.Event | None = None,
    ) -> Reply:
        """A reply for ``handle`` (run it as the handle's task; ``track`` it when it is
        the session's). ``local_voice``: spoken by the local apology voice.
        ``confirmed``: a preemptive reply, held (``agent.preemption``): its audio is
        held and its tools wait until the event is set."""
        clock.usage.chains = dict(self._models.chains)
        return Reply(
            handle,
            plan,
            clock,
            llm=self._models.llm,
            tts=self._models.apology_voice if local_voice else self._models.tts,
            playout=self._playout,
            generation=self._generation,
            chunker=self._config.chunker.to_settings(),
            emit=emit,
            on_speaking=self._on_speaking,
            tools=self._tool_use(handle, confirmed) if plan.tools else None,
            held=confirmed is not None,
        )

    def _tool_use(self, handle: SpeechHandle, confirmed: asyncio.Event | None) -> ToolUse | None:
        """The reply's tools; they wait while a barge-in is pending and, for a held
        reply, until its turn is confirmed (a tool never runs preemptively)."""
        if self._tools is None:
            return None

        def late_round(round_: ToolRound) -> None:
            self._late_round(handle.id, round_)

        async def may_act() -> None:
            if confirmed is not None:
                await confirmed.wait()
            await self._may_act.wait()

        context = self._tool_context(handle.turn_id)
        return ToolUse(self._tools, self._tool_settings, context, may_act, late_round)

    async def run(self, reply: Reply) -> AgentError | None:
        """Run ``reply`` (after ``settle``) until it is played out; what failed, if anything:
        its ``AgentError``, or any other exception as an internal error (logged by its
        class and place only: messages may hold what the caller said)."""
        failure: AgentError | None = None
        try:
            await self.settle(reply)
            await reply.run()
        except* AgentError as group:
            failure = group.exceptions[0]  # type: ignore[assignment]
        except* Exception as group:
            error = group.exceptions[0]
            log.error("%s: reply failed: %s", self._owner, describe_failure(error))
            failure = AgentError(f"internal error: {type(error).__name__}")
        return failure

    # ------------------------------------------------------------ the barge-in gate

    def hold_tools(self) -> None:
        """A barge-in is pending: no tool starts until ``allow_tools``."""
        self._may_act.clear()

    def allow_tools(self) -> None:
        """The barge-in is settled (resumed, or its reply is over): tools may start."""
        self._may_act.set()

    # ------------------------------------------------------------ live replies

    def track(self, reply: Reply) -> None:
        """``reply`` is the session's: it will be committed (once) when it ends."""
        self._live[reply.handle.id] = reply

    def take(self, handle_id: str) -> Reply | None:
        """The tracked reply of a handle, to commit now (None once taken, or if untracked)."""
        return self._live.pop(handle_id, None)

    def commit(self, reply: Reply, heard: str) -> None:
        """Write a taken reply into the history as heard; a round of tools still running
        gets the history slot right after it (see the module doc)."""
        handle = reply.handle
        reply.commit(self._history, heard, interrupted=handle.interrupted)
        if reply.acting and not handle.done:
            self._unsettled[handle.id] = _Unsettled(reply, self._history.reserve())

    # ------------------------------------------------------------ unsettled rounds

    @property
    def unsettled(self) -> bool:
        """Whether an interrupted reply's round of tools still runs."""
        return bool(self._unsettled)

    def _late_round(self, handle_id: str, round_: ToolRound) -> None:
        """An interrupted reply's round ended after the reply was committed: its completed
        actions still belong in the conversation, where they happened."""
        entry = self._unsettled.get(handle_id)
        slot = entry.slot if entry is not None else None
        self._history.add_tool_exchange(round_.calls, round_.contents(), at=slot)

    async def settle(self, reply: Reply) -> None:
        """Before ``reply`` asks the model: wait for the unsettled rounds to end, then ask
        with their results in the context (an action that may not be cancelled is
        known to the next reply). A canned reply asks nothing and waits for nothing."""
        if reply.plan.canned is not None:
            return
        tasks = [u.reply.handle.task for u in self._unsettled.values() if u.reply.handle.task]
        if tasks:
            await asyncio.wait(tasks)
            reply.plan = dataclasses.replace(reply.plan, messages=self._history.context())

    def ended(self, handle_id: str) -> None:
        """A reply's task is over: its round, if any, ended with it (a slot the round
        never filled is given up)."""
        entry = self._unsettled.pop(handle_id, None)
        if entry is not None:
            self._history.release(entry.slot)

    def abort(self) -> None:
        """The call is over: no action of an interrupted reply waits any longer."""
        for entry in self._unsettled.values():
            if entry.reply.loop is not None:
                entry.reply.loop.abort()
