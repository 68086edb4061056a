"""Calls: one VoiceSession and its transport, and the manager that owns them.

The manager enforces the concurrent-call limit, starts each call's runner
(``signaling.bridge.CallBridge``: one task owning a TaskGroup of the call's
audio, playback, events, control and idle watchdog), and ends calls: when the
runner finishes on its own (the caller left, hung up, went idle, sent no
audio for the no-audio timeout, or a task failed), when the room or session
is deleted, on a hang-up request and at shutdown.

Ending is idempotent and runs once, in a task owned by the call (so a
cancelled caller of ``end`` cannot leave a half-closed call behind): cancel the
runner, close the session, close the transport, forget the call.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from agent.config import AgentConfig
from agent.events import AgentEvent, TranscriptEvent, VadEvent
from agent.pricing import PriceTable
from agent.runtime import AgentModels
from agent.session import EventSink, VoiceSession
from agent.tools import ToolRegistry
from media.transport import Transport
from signaling.bridge import CallBridge
from signaling.correlation import CallContext, call_scope
from signaling.ledger import HEARTBEAT_S, CallEntry, CallLedger, LedgerFullError, LocalLedger
from signaling.recorder import SessionRecorder, messages_from_json
from store.store import Store
from store.users import CallerProfile

log = logging.getLogger(__name__)


class CallLimitError(Exception):
    """The server already carries its maximum number of calls."""


class CallQuotaError(CallLimitError):
    """The caller's API key already holds its maximum number of concurrent calls."""


@dataclass(eq=False)
class Call:
    """A live call: its session, and once started its transport and runner."""

    id: str
    room_id: str | None
    transport: str
    """The transport's kind (``"webrtc"``, ``"websocket"``)."""
    session: VoiceSession
    key_id: str | None = None
    """The API key the call counts against (None: anonymous)."""
    started_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    end_reason: str | None = None
    recorder: SessionRecorder | None = None
    link: Transport | None = None
    """The transport object, once the call runs."""
    _runner: asyncio.Task[str] | None = None
    _closing: asyncio.Task[None] | None = None
    _ended: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        """The caller did something (spoke or typed): reset the idle timer."""
        self.last_activity = time.monotonic()

    @property
    def ended(self) -> bool:
        """Whether the call is over (session and transport closed)."""
        return self._ended.is_set()

    async def wait_ended(self) -> None:
        """Wait until the call is over."""
        await self._ended.wait()

    @property
    def correlation(self) -> CallContext:
        """The call's ids for log lines and traces (``signaling.correlation``)."""
        return CallContext(self.id, self.session.id, self.transport)

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
    """Creates, runs, tracks and ends calls.

    Each call's events go to ``sinks`` and to a ``SessionRecorder`` that writes
    its turns, their cost estimated with ``prices`` (None: no estimate). A call
    ends after ``idle_timeout_s`` without speech or typed text, and after
    ``no_audio_timeout_s`` without any inbound audio frame; ``on_end`` is told
    of each call once it is over.

    Admission counts calls in ``ledger`` (every worker's calls; default: this
    process's only) against ``max_calls`` and the API key's quota. A heartbeat
    task keeps this worker's entries fresh and ends the calls another worker
    was asked to hang up.
    """

    def __init__(
        self,
        models: AgentModels,
        config: AgentConfig,
        *,
        max_calls: int,
        idle_timeout_s: float,
        store: Store,
        sinks: list[EventSink] | None = None,
        prices: PriceTable | None = None,
        ledger: CallLedger | None = None,
        no_audio_timeout_s: float | None = None,
        on_end: Callable[[Call], None] | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self._models = models
        self._tools = tools
        """The tools every call's agent may use (YAML HTTP tools, music tools)."""
        self.no_audio_timeout_s = no_audio_timeout_s
        """A call whose transport delivers no audio this long is ended (None: never)."""
        self._on_end = on_end
        """Told of every call once it is over (``end_reason`` set), e.g. to count it."""
        self.ledger: CallLedger = ledger or LocalLedger()
        self._heartbeat: asyncio.Task[None] | None = None
        self._prices = prices
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
        attributes: Mapping[str, str] | None = None,
        key_id: str | None = None,
        key_max_calls: int | None = None,
    ) -> Call:
        """Start a session for a new call; raises ``CallLimitError`` when full.

        ``CallQuotaError`` (a ``CallLimitError``) when ``key_id`` already holds
        ``key_max_calls`` calls on any worker.

        With ``session_id`` the call continues that session: its chat context
        is loaded from the hot tier (or rebuilt from SQL), its turns are
        appended to the same history, and its user (``store.users``: whose
        platform accounts the tools act on, and their preferences) is read
        once, here; a new session's caller is anonymous. ``attributes`` are what the transport
        knows of the call, kept with the session (SIP: From URI, Call-ID). The
        call is live (counted, listed) at once; ``start`` runs it once its
        transport exists, ``end`` ends it.
        """
        if self._closing:
            raise CallLimitError("server is shutting down")
        if len(self._calls) + self._reserved >= self.max_calls:
            raise CallLimitError(f"the server carries its maximum of {self.max_calls} calls")
        self._reserved += 1
        call_id = "call_" + secrets.token_urlsafe(9)
        continuing = session_id is not None
        session_id = session_id or "ses_" + secrets.token_urlsafe(16)
        entry = CallEntry(call_id, session_id, transport, room_id=room_id, key_id=key_id)
        try:
            await self._admit(entry, key_max_calls)
        except BaseException:
            self._reserved -= 1
            raise
        opened = False
        try:
            holder: list[Call] = []

            def activity(event: AgentEvent) -> None:
                if holder and (
                    (isinstance(event, VadEvent) and event.speaking)
                    or isinstance(event, TranscriptEvent)
                ):
                    holder[0].touch()

            history = (
                messages_from_json(await self._store.state.load(session_id)) if continuing else []
            )
            # Who calls: the one store read of the call's user (a new session is anonymous).
            caller = await self._store.users.profile(session_id) if continuing else None
            recorder = SessionRecorder(
                self._store, session_id, transport, attributes, prices=self._prices, key_id=key_id
            )
            session = VoiceSession(
                self._config,
                self._models,
                output_rate=output_rate,
                sinks=[*self._sinks, recorder, activity],
                session_id=session_id,
                history=history,
                tools=self._tools,
                user_id=caller.user_id if caller is not None else None,
                preferences=caller.preferences() if caller is not None else None,
            )
            recorder.bind_history(session.history)
            call = Call(call_id, room_id, transport, session, key_id=key_id, recorder=recorder)
            holder.append(call)
            with call_scope(call.correlation):
                await session.start()  # the session's tasks keep the call's ids
            self._calls[call_id] = call
            opened = True
            self._ensure_heartbeat()
            log.info("call %s opened (%s, room %s)", call_id, transport, room_id)
            return call
        finally:
            self._reserved -= 1
            if not opened:
                await asyncio.shield(self._release(call_id))

    def identify(self, session_id: str, caller: CallerProfile) -> int:
        """The session's caller became ``caller`` (an account linked during a call): this
        worker's live calls of the session act for that user from their next reply.
        Returns how many calls were told."""
        calls = self.calls(session_id=session_id)
        for call in calls:
            call.session.identify(caller.user_id, caller.preferences())
        return len(calls)

    async def _admit(self, entry: CallEntry, key_max_calls: int | None) -> None:
        """Count the call in the ledger; a ledger that cannot be reached admits locally."""
        try:
            await self.ledger.admit(entry, max_calls=self.max_calls, key_max_calls=key_max_calls)
        except LedgerFullError as exc:
            if exc.scope == "key":
                raise CallQuotaError(str(exc)) from exc
            raise CallLimitError(str(exc)) from exc
        except (RedisError, OSError) as exc:
            # Availability first: the local cap still holds; the shared one is back
            # with the ledger. Logged by class only.
            log.warning("call ledger unavailable (%s): admitted locally", type(exc).__name__)

    async def _release(self, call_id: str) -> None:
        try:
            await self.ledger.release(call_id)
        except (RedisError, OSError) as exc:
            log.warning("call ledger unavailable (%s): entry left to expire", type(exc).__name__)

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat(),
                name="calls:heartbeat",
                context=contextvars.Context(),  # no request's or call's ids: it serves all
            )

    async def _stop_heartbeat(self) -> None:
        """Stop the heartbeat (no call left to keep fresh); the next call starts it again."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _beat(self) -> None:
        """Refresh this worker's ledger entries; end calls other workers asked to hang up."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                wanted = await self.ledger.heartbeat(list(self._calls))
            except (RedisError, OSError) as exc:
                log.warning("call ledger heartbeat failed (%s)", type(exc).__name__)
                continue
            for call_id in wanted:
                call = self._calls.get(call_id)
                if call is not None:
                    self._begin_end(call, "hung up")

    async def total(self) -> int:
        """Live calls of every worker (this worker's alone when the ledger is unreachable)."""
        try:
            return max(len(await self.ledger.entries()), self.active)
        except (RedisError, OSError) as exc:
            log.warning("call ledger unavailable (%s): counting local calls", type(exc).__name__)
            return self.active

    async def describe_room(self, room_id: str) -> list[dict[str, Any]]:
        """The live calls of a room on every worker (this worker's with their state)."""
        local = [c.describe() for c in self.calls(room_id)]
        seen = {c["id"] for c in local}
        try:
            others = await self.ledger.entries(room_id)
        except (RedisError, OSError) as exc:
            log.warning("call ledger unavailable (%s): listing local calls", type(exc).__name__)
            others = []
        return local + [e.describe() for e in others if e.call_id not in seen]

    async def hang_up(self, call_id: str, room_id: str) -> bool:
        """End a call of ``room_id`` wherever it runs; False when there is no such call.

        A call of this worker ends before this returns; one of another worker
        ends at that worker's next heartbeat (within ``HEARTBEAT_S``).
        """
        call = self._calls.get(call_id)
        if call is not None:
            if call.room_id != room_id:
                return False
            await self.end(call, "hung up")
            return True
        entries = {e.call_id: e for e in await self.ledger.entries(room_id)}
        if call_id not in entries:
            return False
        return await self.ledger.request_end(call_id)

    def start(self, call: Call, transport: Transport) -> None:
        """Run an opened call over ``transport`` until it ends (see ``CallBridge``)."""
        if call._runner is not None:
            raise RuntimeError(f"call {call.id} is already running")
        if call.end_reason is not None:
            raise RuntimeError(f"call {call.id} has ended")
        call.link = transport
        bridge = CallBridge(
            call,
            transport,
            idle_timeout_s=self.idle_timeout_s,
            no_audio_timeout_s=self.no_audio_timeout_s,
        )
        with call_scope(call.correlation):  # the bridge's tasks keep the call's ids
            call._runner = asyncio.get_running_loop().create_task(
                self._run(call, bridge), name=f"{call.id}:runner"
            )

    async def _run(self, call: Call, bridge: CallBridge) -> str:
        try:
            reason = await bridge.run()
        except Exception as exc:  # the bridge reports task failures itself; this is a bug
            log.error("call %s: the runner failed (%s)", call.id, type(exc).__name__)
            reason = f"runner failed ({type(exc).__name__})"
        # The call ended from the inside: close it in its own task (this one
        # must finish first, since closing waits for the runner).
        self._begin_end(call, reason)
        return reason

    async def end(self, call: Call, reason: str) -> None:
        """End a call (idempotent): stop its runner, close its session and transport.

        The first reason given is kept. Returns once the call is over, even
        if another caller started ending it.
        """
        await asyncio.shield(self._begin_end(call, reason))

    def end_soon(self, call: Call, reason: str) -> None:
        """Start ending a call from synchronous code (a protocol callback); see ``end``.

        The closing runs in a task the call owns; ``call.wait_ended()`` waits for it.
        """
        self._begin_end(call, reason)

    def _begin_end(self, call: Call, reason: str) -> asyncio.Task[None]:
        if call._closing is None:
            call.end_reason = reason
            with call_scope(call.correlation):
                call._closing = asyncio.get_running_loop().create_task(
                    self._close(call), name=f"{call.id}:close"
                )
        return call._closing

    async def _close(self, call: Call) -> None:
        runner = call._runner
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner])
        try:
            await call.session.close()
        except Exception as exc:
            log.error("call %s: closing the session failed (%s)", call.id, type(exc).__name__)
        finally:
            try:
                if call.link is not None:
                    await call.link.close(call.end_reason or "call ended")
            finally:
                self._calls.pop(call.id, None)
                await asyncio.shield(self._release(call.id))
                if not self._calls:
                    await self._stop_heartbeat()
                if call.recorder is not None:
                    call.recorder.ended(call.end_reason)
                if self._on_end is not None:
                    try:
                        self._on_end(call)
                    except Exception as exc:  # a metrics hook must never keep a call open
                        log.error("call %s: on_end failed (%s)", call.id, type(exc).__name__)
                call._ended.set()
                log.info("call %s ended (%s)", call.id, call.end_reason)

    async def end_room(self, room_id: str) -> int:
        """End every call of a room on every worker; returns how many.

        This worker's calls are over when this returns; other workers end theirs
        at their next heartbeat.
        """
        calls = self.calls(room_id)
        await asyncio.gather(*(self.end(c, "room deleted") for c in calls))
        try:
            others = [e for e in await self.ledger.entries(room_id) if e.call_id not in self._calls]
            asked = [await self.ledger.request_end(e.call_id) for e in others]
        except (RedisError, OSError) as exc:
            log.warning("call ledger unavailable (%s): ended local calls", type(exc).__name__)
            asked = []
        return len(calls) + sum(asked)

    async def shutdown(self) -> None:
        """Refuse new calls and end all live ones."""
        self._closing = True
        await asyncio.gather(*(self.end(c, "server shutdown") for c in list(self._calls.values())))
        await self._stop_heartbeat()
        await self.ledger.aclose()
