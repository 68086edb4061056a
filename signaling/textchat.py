"""Text chat with the same agent brain (prompt, LLM, history bounds) as the voice calls.

A text chat is a session like a call: its context comes from the store's hot
tier (or is rebuilt from SQL), and its turns are written through the store's
background writer, so text and voice can alternate in one session.

A turn runs the voice path's reply loop (``agent.toolloop.ToolLoop``: tool
rounds, clarification) without speech, and answers with the reply and the
last action it completed (``action_result``); a turn that used tools gets
its interaction log row like a voice turn's. The tools act for the session's
user (``store.users``), read at the start of each turn.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from agent.config import AgentConfig
from agent.events import AgentEvent, ToolCallEvent, ToolResultEvent
from agent.history import ChatHistory
from agent.runtime import AgentModels
from agent.toolloop import TextSpeaker, ToolLoop, ToolUse
from agent.tools import ToolContext, ToolRegistry
from agent.turnclock import TurnClock
from signaling.recorder import messages_from_json, messages_to_json, tool_interaction
from store.repositories import TurnRecord
from store.store import Store
from store.writer import InteractionLogged, SessionStarted


@dataclass(frozen=True, slots=True)
class ChatReply:
    """One answered text turn."""

    session_id: str
    reply: str
    action_result: dict[str, Any] | None
    """The last action completed (``{"tool", "action", "data"}``), or None."""


class TextChats:
    """Answers text turns of sessions; one turn at a time per session."""

    def __init__(
        self,
        config: AgentConfig,
        models: AgentModels,
        store: Store,
        max_locks: int = 4096,
        *,
        tools: ToolRegistry | None = None,
    ) -> None:
        self._config = config
        self._models = models
        self._store = store
        self._tools = tools
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
    ) -> ChatReply:
        """The agent's reply to ``text``, after any tools it called.

        Without ``session_id`` a new session is created, recording the API key
        ``key_id`` that created it (None: anonymous).
        """
        continuing = session_id is not None
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
            events: list[AgentEvent] = []
            tools = self._tools if self._tools is not None and len(self._tools) else None
            use = None
            if tools is not None:
                # The session's user (whose accounts the tools act on): one read per turn.
                caller = await self._store.users.profile(session_id) if continuing else None
                context = ToolContext(
                    session_id=session_id,
                    user_id=caller.user_id if caller is not None else None,
                    turn_id=turn_id,
                    preferences=caller.preferences() if caller is not None else {},
                )
                use = ToolUse(tools, self._config.tools.to_settings(), context)
            loop = ToolLoop(
                self._models.llm,
                self._config.llm.generation(),
                TurnClock.now(),
                tools=use,
                offer=tools.specs() if tools is not None else (),
                emit=events.append,
            )
            words = TextSpeaker()
            await loop.run(history.context(), words)
            reply = words.text
            loop.commit(history)
            writer.submit(TurnRecord(session_id, turn_id, "assistant", reply, heard_text=reply))
            calls = [e for e in events if isinstance(e, ToolCallEvent)]
            if calls:
                results = [e for e in events if isinstance(e, ToolResultEvent)]
                raw, action = tool_interaction(reply, calls, results)
                writer.submit(InteractionLogged(session_id, text, raw, action))
            await self._store.state.save(session_id, messages_to_json(history.messages()))
        action_result = loop.action_result()
        return ChatReply(
            session_id, reply, action_result.to_dict() if action_result is not None else None
        )
