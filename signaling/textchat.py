"""Text chat with the same agent brain (prompt, LLM, history bounds) as the voice calls.

A text chat is a session like a call: its context comes from the store's hot
tier (or is rebuilt from SQL), and its turns are written through the store's
background writer, so text and voice can alternate in one session.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict

from agent.config import AgentConfig
from agent.history import ChatHistory
from agent.llm import stream_text
from agent.runtime import AgentModels
from signaling.recorder import messages_from_json, messages_to_json
from store.repositories import TurnRecord
from store.store import Store
from store.writer import SessionStarted


class TextChats:
    """Answers text turns of sessions; one turn at a time per session."""

    def __init__(
        self, config: AgentConfig, models: AgentModels, store: Store, max_locks: int = 4096
    ) -> None:
        self._config = config
        self._models = models
        self._store = store
        self._locks: OrderedDict[str, asyncio.Lock] = OrderedDict()
        self.max_locks = max_locks

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
            while len(self._locks) > self.max_locks:
                oldest, old_lock = next(iter(self._locks.items()))
                if old_lock.locked():
                    break
                del self._locks[oldest]
        self._locks.move_to_end(session_id)
        return lock

    async def reply(
        self, text: str, session_id: str | None = None, *, key_id: str | None = None
    ) -> tuple[str, str]:
        """The agent's reply to ``text``; returns ``(session_id, reply)``.

        Without ``session_id`` a new session is created, recording the API key
        ``key_id`` that created it (None: anonymous).
        """
        if session_id is None:
            session_id = "ses_" + secrets.token_urlsafe(16)
        writer = self._store.writer
        async with self._lock(session_id):
            history = ChatHistory(self._config.system_prompt, self._config.llm.max_history_turns)
            history.restore(messages_from_json(await self._store.state.load(session_id)))
            writer.submit(SessionStarted(session_id, "text", key_id=key_id))
            turn_id = "text_" + secrets.token_hex(6)
            history.add_user(text)
            writer.submit(TurnRecord(session_id, turn_id, "user", text, stt_confidence=None))
            pieces = [
                p
                async for p in stream_text(
                    self._models.llm, history.context(), self._config.llm.generation()
                )
            ]
            reply = "".join(pieces).strip()
            history.add_assistant(reply)
            writer.submit(TurnRecord(session_id, turn_id, "assistant", reply, heard_text=reply))
            await self._store.state.save(session_id, messages_to_json(history.messages()))
        return session_id, reply
