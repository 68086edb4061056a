"""The chat history of one conversation, bounded in turns."""

from __future__ import annotations

from collections import deque

from agent.llm import ChatMessage


class ChatHistory:
    """User/assistant messages of a conversation, keeping the last ``max_turns`` turns.

    A turn is one user message and the assistant reply to it. An interrupted
    reply is stored as the text the caller heard, flagged ``interrupted``;
    a reply the caller heard nothing of is not stored at all.
    """

    def __init__(self, system_prompt: str, max_turns: int = 8) -> None:
        if max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        self.system_prompt = system_prompt
        self.max_turns = max_turns
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

    def restore(self, messages: list[ChatMessage]) -> None:
        """Start from a saved conversation (e.g. resuming a session in another process)."""
        self._messages.clear()
        for m in messages:
            if m.role == "user":
                self.add_user(m.content)
            elif m.role == "assistant":
                self.add_assistant(m.content, interrupted=m.interrupted)

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

    def _trim(self) -> None:
        users = sum(1 for m in self._messages if m.role == "user")
        while users > self.max_turns:
            dropped = self._messages.popleft()
            if dropped.role == "user":
                users -= 1
            while self._messages and self._messages[0].role == "assistant":
                self._messages.popleft()
