"""The chat history of one conversation, bounded in turns."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TypeGuard

from agent.llm import ChatMessage, ToolCall


class SlotPhase(enum.Enum):
    """Where a reserved place in the history stands."""

    OPEN = "open"
    """Reserved: what goes there is still being done."""
    FILLED = "filled"
    RELEASED = "released"
    """Nothing came (or its turn was trimmed away): the place is gone."""


class HistorySlot:
    """A place reserved in a ``ChatHistory`` for messages that come later.

    An interrupted reply whose round of tools still runs reserves one when it
    is committed: the round's calls and results go there when it ends, before
    whatever the caller said in the meantime, so the conversation keeps the
    order in which things happened. ``OPEN -> FILLED`` (``add_tool_exchange``
    with ``at=``) or ``OPEN -> RELEASED`` (``release``, or its turn trimmed).
    """

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = SlotPhase.OPEN

    @property
    def open(self) -> bool:
        """Whether the slot still waits for its messages."""
        return self.phase is SlotPhase.OPEN


_Entry = ChatMessage | HistorySlot


def _is_user(entry: _Entry) -> TypeGuard[ChatMessage]:
    return isinstance(entry, ChatMessage) and entry.role == "user"


class ChatHistory:
    """User/assistant/tool messages of a conversation, keeping the last ``max_turns`` turns.

    A turn is one user message and everything the agent did in answer to it:
    assistant messages, tool calls and their results. Trimming drops whole
    turns, so a tool call is never kept without its result (or the reverse).
    An interrupted reply is stored as the text the caller heard, flagged
    ``interrupted``; a reply the caller heard nothing of is not stored at all.

    ``trim_turns``: how many of the oldest turns go at once when the history
    grows past ``max_turns`` (1: the last ``max_turns`` are always kept). A
    local model re-evaluates the prompt from the first token that changed,
    and dropping one turn per turn changes the prompt right after the system
    message every time; dropping several at once keeps the prefix stable for
    the turns in between (``bench/prefix_cache.py``).

    Reserved places (``reserve``): an open slot holds its place among the
    messages and sends nothing to the model; the caller's next words after
    it start a turn of their own rather than merging into the unanswered
    message before it (the reply in between happened: it acted).
    """

    def __init__(self, system_prompt: str, max_turns: int = 8, *, trim_turns: int = 1) -> None:
        if max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if not 1 <= trim_turns <= max_turns:
            raise ValueError("trim_turns must be between 1 and max_turns")
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.trim_turns = trim_turns
        self._messages: deque[_Entry] = deque()

    def add_user(self, text: str) -> None:
        """Append the caller's words (merged into the last one if it is unanswered)."""
        last = self._messages[-1] if self._messages else None
        if last is not None and _is_user(last):
            self._messages.pop()
            text = f"{last.content} {text}"
        self._messages.append(ChatMessage("user", text))
        self._trim()

    def add_assistant(self, text: str, *, interrupted: bool = False) -> None:
        """Append the agent's reply as heard by the caller."""
        if not text.strip():
            return
        self._messages.append(ChatMessage("assistant", text, interrupted))
        self._trim()

    def add_tool_exchange(
        self,
        calls: Sequence[ToolCall],
        results: dict[str, str],
        text: str = "",
        *,
        at: HistorySlot | None = None,
    ) -> None:
        """Append an assistant message with its tool calls, then one result per call.

        ``results`` maps call ids to the tools' outputs; every call must have
        one (a call without its result would make the next request invalid).
        ``at``: put them in that reserved slot instead of at the end (it is
        filled; a slot no longer open takes nothing: its turn was trimmed).
        """
        missing = [c.id for c in calls if c.id not in results]
        if missing:
            raise ValueError(f"tool calls without results: {', '.join(missing)}")
        if not calls:
            if at is not None:
                self.release(at)
            return
        exchange = [ChatMessage("assistant", text, tool_calls=tuple(calls))]
        exchange += [
            ChatMessage("tool", results[call.id], tool_call_id=call.id, name=call.name)
            for call in calls
        ]
        if at is None:
            self._messages.extend(exchange)
            self._trim()
            return
        if not at.open:
            return
        index = self._index(at)
        del self._messages[index]
        for offset, message in enumerate(exchange):
            self._messages.insert(index + offset, message)
        at.phase = SlotPhase.FILLED

    def reserve(self) -> HistorySlot:
        """Reserve the place at the end of the history for messages that come later."""
        slot = HistorySlot()
        self._messages.append(slot)
        return slot

    def release(self, slot: HistorySlot) -> None:
        """Give up an open slot: nothing goes there. The caller's words on either side of
        it become one message, as if the slot had never been reserved (idempotent)."""
        if not slot.open:
            return
        slot.phase = SlotPhase.RELEASED
        index = self._index(slot)
        del self._messages[index]
        if 0 < index < len(self._messages):
            before, after = self._messages[index - 1], self._messages[index]
            if _is_user(before) and _is_user(after):
                del self._messages[index]
                merged = ChatMessage("user", f"{before.content} {after.content}")
                self._messages[index - 1] = merged

    def restore(self, messages: list[ChatMessage]) -> None:
        """Start from a saved conversation (e.g. resuming a session in another process).

        Tool results whose call is not in the saved messages, and assistant
        tool calls whose results are missing, are dropped.
        """
        for entry in self._messages:
            if isinstance(entry, HistorySlot):
                entry.phase = SlotPhase.RELEASED
        self._messages.clear()
        answered = {m.tool_call_id for m in messages if m.role == "tool"}
        called: set[str] = set()
        for m in messages:
            if m.role == "user":
                self.add_user(m.content)
            elif m.role == "assistant" and m.tool_calls:
                ids = {c.id for c in m.tool_calls}
                if ids <= answered:
                    called |= ids
                    self._messages.append(m)
                elif m.content.strip():
                    self.add_assistant(m.content, interrupted=m.interrupted)
            elif m.role == "assistant":
                self.add_assistant(m.content, interrupted=m.interrupted)
            elif m.role == "tool" and m.tool_call_id in called:
                self._messages.append(m)
        self._trim()

    def messages(self) -> list[ChatMessage]:
        """The stored messages, oldest first (no system prompt; open slots send nothing)."""
        return list(self._stored())

    def last_said(self) -> str:
        """The agent's last words in the history (what the caller heard of them), or ""."""
        for message in reversed(self._messages):
            if isinstance(message, ChatMessage) and message.role == "assistant" and message.content:
                return message.content
        return ""

    def _index(self, slot: HistorySlot) -> int:
        """Where an open slot stands (open slots are always held)."""
        return next(i for i, entry in enumerate(self._messages) if entry is slot)

    def _stored(self) -> Iterator[ChatMessage]:
        return (m for m in self._messages if isinstance(m, ChatMessage))

    def context(self) -> list[ChatMessage]:
        """The messages to send to the LLM: system prompt, then the history.

        An interrupted reply is marked so the model knows the caller cut it
        short (the caller heard only what is written).
        """
        out = [ChatMessage("system", self.system_prompt)]
        for m in self._stored():
            if m.interrupted:
                out.append(ChatMessage("assistant", f"{m.content}...", True))
            else:
                out.append(m)
        return out

    def context_with_user(self, text: str) -> list[ChatMessage]:
        """``context()`` as it will be after ``add_user(text)``, leaving the history as
        it is (the request of a reply prepared before the turn is confirmed)."""
        ahead = ChatHistory(self.system_prompt, self.max_turns, trim_turns=self.trim_turns)
        ahead._messages = deque(self._stored())
        ahead.add_user(text)
        return ahead.context()

    def _trim(self) -> None:
        users = sum(1 for m in self._messages if _is_user(m))
        if users <= self.max_turns:
            return
        keep = min(self.max_turns, users - self.trim_turns)
        while users > keep:
            dropped = self._messages.popleft()
            if _is_user(dropped):
                users -= 1
            self._retire(dropped)
            # drop the rest of that turn: replies, tool calls and their results
            while self._messages and not _is_user(self._messages[0]):
                self._retire(self._messages.popleft())

    @staticmethod
    def _retire(entry: _Entry) -> None:
        """A trimmed slot's turn is gone: what would have filled it goes nowhere."""
        if isinstance(entry, HistorySlot):
            entry.phase = SlotPhase.RELEASED
