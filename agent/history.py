"""The chat history of one conversation, bounded in turns."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from agent.llm import ChatMessage, ToolCall


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
    """

    def __init__(self, system_prompt: str, max_turns: int = 8, *, trim_turns: int = 1) -> None:
        if max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if not 1 <= trim_turns <= max_turns:
            raise ValueError("trim_turns must be between 1 and max_turns")
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.trim_turns = trim_turns
        self._messages: deque[ChatMessage] = deque()

    def add_user(self, text: str) -> None:
        """Append the caller's words (merged into the last one if it is unanswered)."""
        if self._messages and self._messages[-1].role == "user":
            last = self._messages.pop()
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
        self, calls: Sequence[ToolCall], results: dict[str, str], text: str = ""
    ) -> None:
        """Append an assistant message with its tool calls, then one result per call.

        ``results`` maps call ids to the tools' outputs; every call must have
        one (a call without its result would make the next request invalid).
        """
        missing = [c.id for c in calls if c.id not in results]
        if missing:
            raise ValueError(f"tool calls without results: {', '.join(missing)}")
        if not calls:
            return
        self._messages.append(ChatMessage("assistant", text, tool_calls=tuple(calls)))
        for call in calls:
            self._messages.append(
                ChatMessage("tool", results[call.id], tool_call_id=call.id, name=call.name)
            )
        self._trim()

    def restore(self, messages: list[ChatMessage]) -> None:
        """Start from a saved conversation (e.g. resuming a session in another process).

        Tool results whose call is not in the saved messages, and assistant
        tool calls whose results are missing, are dropped.
        """
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
        """The stored messages, oldest first (no system prompt)."""
        return list(self._messages)

    def context(self) -> list[ChatMessage]:
        """The messages to send to the LLM: system prompt, then the history.

        An interrupted reply is marked so the model knows the caller cut it
        short (the caller heard only what is written).
        """
        out = [ChatMessage("system", self.system_prompt)]
        for m in self._messages:
            if m.interrupted:
                out.append(ChatMessage("assistant", f"{m.content}...", True))
            else:
                out.append(m)
        return out

    def context_with_user(self, text: str) -> list[ChatMessage]:
        """``context()`` as it will be after ``add_user(text)``, leaving the history as
        it is (the request of a reply prepared before the turn is confirmed)."""
        ahead = ChatHistory(self.system_prompt, self.max_turns, trim_turns=self.trim_turns)
        ahead._messages = deque(self._messages)
        ahead.add_user(text)
        return ahead.context()

    def _trim(self) -> None:
        users = sum(1 for m in self._messages if m.role == "user")
        if users <= self.max_turns:
            return
        keep = min(self.max_turns, users - self.trim_turns)
        while users > keep:
            dropped = self._messages.popleft()
            if dropped.role == "user":
                users -= 1
            # drop the rest of that turn: replies, tool calls and their results
            while self._messages and self._messages[0].role != "user":
                self._messages.popleft()
