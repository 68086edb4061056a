"""A session's chat context in the hot tier (with a TTL), rebuilt from SQL when missing.

Any worker process sharing the hot tier and the database can resume a
session: ``load`` returns the context another process saved, or rebuilds it
from the session's durable turns (heard text for interrupted replies).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from store.cache import HotCache
from store.repositories import SessionRepository

log = logging.getLogger(__name__)


class SessionStateStore:
    """Chat contexts as JSON lists of message objects.

    The hot tier keeps a context verbatim: any JSON the caller saves (tool
    calls, tool results, extra keys) comes back unchanged. A context rebuilt
    from SQL turns has only ``{"role", "content", "interrupted"}`` user and
    assistant messages (turns hold no tool calls), so no call/result pair is
    ever split by a rebuild.
    """

    def __init__(self, hot: HotCache, repo: SessionRepository, ttl_s: float) -> None:
        self._hot = hot
        self._repo = repo
        self.ttl_s = ttl_s

    @staticmethod
    def _key(session_id: str) -> str:
        return f"session:{session_id}:context"

    async def save(self, session_id: str, messages: list[dict[str, Any]]) -> None:
        """Store the context with the session TTL (refreshed on every save)."""
        payload = json.dumps(messages, separators=(",", ":")).encode()
        await self._hot.set(self._key(session_id), payload, self.ttl_s)

    async def load(self, session_id: str, max_messages: int = 200) -> list[dict[str, Any]]:
        """The context from the hot tier, else rebuilt from SQL turns (empty if none)."""
        cached = await self._hot.get(self._key(session_id))
        if cached is not None:
            messages: list[dict[str, Any]] = json.loads(cached)
            return messages
        try:
            turns = await self._repo.turns(session_id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("cannot rebuild session context from SQL: %s", type(exc).__name__)
            return []
        rebuilt: list[dict[str, Any]] = []
        for t in turns[-max_messages:]:
            if t.role == "assistant":
                text = t.heard_text if t.interrupted else t.text
                if text:
                    rebuilt.append(
                        {"role": "assistant", "content": text, "interrupted": t.interrupted}
                    )
            elif t.role == "user":
                rebuilt.append({"role": "user", "content": t.text, "interrupted": False})
            # other rows (keypad digits) are events of the history, not chat messages:
            # what the caller pressed reached the model as a user turn already
        return rebuilt

    async def forget(self, session_id: str) -> None:
        """Drop the hot copy."""
        await self._hot.delete(self._key(session_id))
