"""Text chat with the same agent brain (prompt, LLM, history bounds) as the voice calls."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.history import ChatHistory
from agent.runtime import AgentModels


@dataclass(slots=True)
class _Chat:
    history: ChatHistory
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    touched: float = field(default_factory=time.monotonic)


class TextChats:
    """Text conversations by session id: bounded in number, expired after ``ttl_s`` idle."""

    def __init__(
        self, config: AgentConfig, models: AgentModels, max_chats: int = 1000, ttl_s: float = 3600
    ) -> None:
        self._config = config
        self._models = models
        self._chats: OrderedDict[str, _Chat] = OrderedDict()
        self.max_chats = max_chats
        self.ttl_s = ttl_s

    def _get(self, session_id: str | None) -> tuple[str, _Chat]:
        now = time.monotonic()
        while self._chats:
            oldest_id, oldest = next(iter(self._chats.items()))
            if now - oldest.touched < self.ttl_s and len(self._chats) < self.max_chats:
                break
            del self._chats[oldest_id]
        if session_id is not None:
            if session_id not in self._chats:
                raise LookupError("no such chat session")
            chat = self._chats[session_id]
            self._chats.move_to_end(session_id)
        else:
            session_id = "chat_" + secrets.token_urlsafe(12)
            chat = _Chat(
                ChatHistory(self._config.system_prompt, self._config.llm.max_history_turns)
            )
            self._chats[session_id] = chat
        chat.touched = now
        return session_id, chat

    async def reply(self, text: str, session_id: str | None = None) -> tuple[str, str]:
        """The agent's reply to ``text``; returns ``(session_id, reply)``.

        Raises ``LookupError`` for an unknown (or expired) ``session_id``.
        """
        session_id, chat = self._get(session_id)
        async with chat.lock:
            chat.history.add_user(text)
            pieces: list[str] = []
            stream = self._models.llm.stream(chat.history.context(), self._config.llm.generation())
            async for piece in stream:
                pieces.append(piece)
            reply = "".join(pieces).strip()
            chat.history.add_assistant(reply)
        return session_id, reply
