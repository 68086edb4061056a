"""Calls: one VoiceSession plus the transport resources around it, and their manager.

The manager enforces the concurrent-call limit, ends calls whose caller has
been silent past the idle timeout, ends a room's calls when the room goes,
and ends every call on shutdown. Each call owns its tasks (inbound audio,
event forwarding, idle watchdog) and reaps them when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agent.config import AgentConfig
from agent.events import AgentEvent, TranscriptEvent, VadEvent
from agent.runtime import AgentModels
from agent.session import EventSink, VoiceSession
from signaling.recorder import SessionRecorder, messages_from_json
from store.store import Store

log = logging.getLogger(__name__)


class CallLimitError(Exception):
    """The server already carries its maximum number of calls."""


@dataclass(eq=False)
class Call:
    """A live call."""

    id: str
    room_id: str | None
    transport: str
    session: VoiceSession
    started_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    end_reason: str | None = None
    recorder: SessionRecorder | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _ended: asyncio.Event = field(default_factory=asyncio.Event)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a task owned by this call (cancelled when the call ends)."""
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def on_end(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Register transport clean-up (closing a peer connection or socket)."""
        self._closers.append(closer)

    def touch(self) -> None:
        """The caller did something (spoke or typed): reset the idle timer."""
        self.last_activity = time.monotonic()

    @property
    def ended(self) -> bool:
        """Whether the call is over."""
        return self._ended.is_set()

    async def wait_ended(self) -> None:
        """Wait until the call is over."""
        await self._ended.wait()

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "id": self.id,
            "room_id": self.room_id,
            "transport": self.transport,
            "session_id": self.session.id,
            "state": self.session.state.value,
            "started_at": self.started_at,
        }


class CallManager:
    """Creates, tracks and ends calls."""

    def __init__(
        self,
        models: AgentModels,
        config: AgentConfig,
        *,
        max_calls: int,
        idle_timeout_s: float,
        store: Store,
        sinks: list[EventSink] | None = None,
    ) -> None:
        self._models = models
        self._store = store
        self._config = config
        self.max_calls = max_calls
        self.idle_timeout_s = idle_timeout_s
        self._sinks = sinks or []
        self._calls: dict[str, Call] = {}
        self._reserved = 0
        self._closing = False

    @property
    def active(self) -> int:
        """Calls currently live."""
        return len(self._calls)

    def calls(self, room_id: str | None = None, session_id: str | None = None) -> list[Call]:
        """Live calls, optionally of one room or of one session."""
        return [
            c
            for c in self._calls.values()
            if (room_id is None or c.room_id == room_id)
            and (session_id is None or c.session.id == session_id)
        ]

    def get(self, call_id: str) -> Call | None:
        """A live call by id."""
        return self._calls.get(call_id)

    async def open(
        self,
        transport: str,
        *,
        room_id: str | None,
        output_rate: int,
        session_id: str | None = None,
    ) -> Call:
        """Start a session for a new call; raises ``CallLimitError`` when full.

        With ``session_id`` the call continues that session: its chat context
        is loaded from the hot tier (or rebuilt from SQL), and its turns are
        appended to the same history.
        """
        if self._closing:
            raise CallLimitError("server is shutting down")
        if len(self._calls) + self._reserved >= self.max_calls:
            raise CallLimitError(f"the server carries its maximum of {self.max_calls} calls")
        self._reserved += 1
        try:
            call_id = "call_" + secrets.token_urlsafe(9)
            holder: list[Call] = []

            def activity(event: AgentEvent) -> None:
                if holder and (
                    (isinstance(event, VadEvent) and event.speaking)
                    or isinstance(event, TranscriptEvent)
                ):
                    holder[0].touch()

            history = (
                messages_from_json(await self._store.state.load(session_id)) if session_id else []
            )
            session_id = session_id or "ses_" + secrets.token_urlsafe(16)
            recorder = SessionRecorder(self._store, session_id, transport)
            session = VoiceSession(
                self._config,
                self._models,
                output_rate=output_rate,
                sinks=[*self._sinks, recorder, activity],
                session_id=session_id,
                history=history,
            )
            recorder.bind_history(session.history)
            call = Call(call_id, room_id, transport, session, recorder=recorder)
            holder.append(call)
            await session.start()
            self._calls[call_id] = call
            call.spawn(self._watch_idle(call), "idle")
            log.info("call %s started (%s, room %s)", call_id, transport, room_id)
            return call
        finally:
            self._reserved -= 1

    async def end(self, call: Call, reason: str) -> None:
        """End a call: stop its tasks, close its session and transport (idempotent)."""
        if call.ended or call.end_reason is not None:
            await call.wait_ended()
            return
        call.end_reason = reason
        current = asyncio.current_task()
        tasks = [t for t in call._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await call.session.close()
        finally:
            for closer in call._closers:
                try:
                    await closer()
                except Exception:
                    log.exception("call %s: transport clean-up failed", call.id)
            self._calls.pop(call.id, None)
            if call.recorder is not None:
                call.recorder.ended()
            call._ended.set()
            log.info("call %s ended (%s)", call.id, reason)

    async def end_room(self, room_id: str) -> int:
        """End every call of a room; returns how many."""
        calls = self.calls(room_id)
        await asyncio.gather(*(self.end(c, "room deleted") for c in calls))
        return len(calls)

    async def shutdown(self) -> None:
        """Refuse new calls and end all live ones."""
        self._closing = True
        await asyncio.gather(*(self.end(c, "server shutdown") for c in list(self._calls.values())))

    async def _watch_idle(self, call: Call) -> None:
        while True:
            remaining = call.last_activity + self.idle_timeout_s - time.monotonic()
            if remaining <= 0:
                # end() reaps every task of the call except the one calling it
                await self.end(call, "idle timeout")
                return
            await asyncio.sleep(min(remaining, 5.0))
