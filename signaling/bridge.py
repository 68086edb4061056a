"""The call bridge: runs one call between its ``VoiceSession`` and its transport.

``CallBridge.run`` owns every task of a call in one ``asyncio.TaskGroup``:

``audio-in``  the caller's frames, normalised once here to 16 kHz mono
              (``FrameNormalizer``), cleared of the agent's own echo when the
              transport asks for it (``echo_cancel``; ``media.echo``) and
              pushed into the session;
``playback``  ``transport.play(session.playout)`` (paced push, or aiortc's pull track);
``events``    session events out as JSON dicts;
``control``   typed text in, hang-up, and one error format for what is not understood;
``idle``      the watchdog: ends a call whose caller has not spoken or typed for
              the idle timeout (``idle timeout``), and, sooner, a call whose
              transport delivered no audio frame at all for the no-audio timeout
              (``no audio``: a vanished peer, a WebSocket that sends nothing).
              The caller is told why in an ``error`` event (stage ``call``) when
              it can still be sent; a call on hold is not timed out for no audio.

The call ends with the first of: the caller leaving (``inbound()`` or
``play()`` ends, or a send raises ``TransportClosedError``), a hang-up, either
timeout, the session closing, or a task failing. A failed task is never
silent: the call ends at once, the reason (task and exception class, never
its message) is logged, and the caller gets an ``error`` event. Ending from
the outside (``CallManager.end``) cancels ``run``, which cancels every task;
``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

from agent.errors import SessionClosedError
from agent.events import ErrorEvent
from media.echo import open_echo_filter
from media.frames import PIPELINE_RATE, AudioFrame
from media.resample import FrameNormalizer
from media.transport import (
    Dtmf,
    HangUp,
    Hold,
    InvalidControl,
    TextInput,
    Transport,
    TransportClosedError,
)

if TYPE_CHECKING:
    from signaling.calls import Call

log = logging.getLogger(__name__)

T = TypeVar("T")

IDLE_POLL_S = 5.0
"""Longest sleep of the idle watchdog between checks."""
NO_AUDIO_REASON = "no audio"
"""End reason of a call whose transport delivered no audio for the no-audio timeout."""
IDLE_REASON = "idle timeout"
"""End reason of a call whose caller neither spoke nor typed for the idle timeout."""
NOTIFY_TIMEOUT_S = 2.0
"""How long the bridge tries to deliver the error event of a failed call."""


class CallTaskError(Exception):
    """A task of a call failed. ``stage`` names the task; ``__cause__`` is the failure."""

    def __init__(self, stage: str, cause: Exception) -> None:
        super().__init__(f"{stage} failed ({type(cause).__name__})")
        self.stage = stage
        self.cause = cause


def input_error(message: str) -> dict[str, Any]:
    """The one error format of control messages the bridge could not accept."""
    return ErrorEvent(stage="input", message=message, retryable=False).to_dict()


class CallBridge:
    """Runs one call: the session on one side, the transport on the other."""

    def __init__(
        self,
        call: Call,
        transport: Transport,
        *,
        idle_timeout_s: float,
        no_audio_timeout_s: float | None = None,
    ) -> None:
        """``no_audio_timeout_s`` None: no audio watchdog (the idle timeout only)."""
        if no_audio_timeout_s is not None and no_audio_timeout_s <= 0:
            raise ValueError("no_audio_timeout_s must be positive")
        self._call = call
        self._session = call.session
        self._transport = transport
        self._idle_timeout_s = idle_timeout_s
        self._no_audio_timeout_s = no_audio_timeout_s
        self._last_audio = time.monotonic()
        """When the transport last delivered an audio frame (or the call started, or
        came off hold)."""
        self._on_hold = False
        self._ended: asyncio.Future[str] | None = None

    async def run(self) -> str:
        """Run the call until it ends; returns why (a short reason, safe to log)."""
        self._ended = asyncio.get_running_loop().create_future()
        self._last_audio = time.monotonic()
        stages: dict[str, Callable[[], Coroutine[Any, Any, str | None]]] = {
            "audio-in": self._audio_in,
            "playback": self._playback,
            "events": self._events,
            "control": self._control,
            "idle": self._idle,
        }
        failure: CallTaskError | None = None
        reason = "call ended"
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._guard(stage, work()), name=f"{self._call.id}:{stage}")
                    for stage, work in stages.items()
                ]
                reason = await self._ended
                for task in tasks:
                    task.cancel()
        except* CallTaskError as failed:
            # the first failure ends the call; later ones are its consequences
            failure = cast(CallTaskError, failed.exceptions[0])
        if failure is None:
            return reason
        log.warning("call %s: %s; ending the call", self._call.id, failure)
        notice = ErrorEvent(stage="call", message=f"the call ended: {failure}", retryable=False)
        await self._notify(notice.to_dict())
        return str(failure)

    async def _guard(self, stage: str, work: Coroutine[Any, Any, str | None]) -> None:
        """Run one task; a returned reason ends the call, an exception fails it."""
        try:
            reason = await work
        except TransportClosedError:
            reason = f"{self._transport.kind} closed"
        except SessionClosedError:
            reason = self._session_closed()
        except Exception as exc:
            raise CallTaskError(stage, exc) from exc
        if reason is not None and self._ended is not None and not self._ended.done():
            self._ended.set_result(reason)

    async def _notify(self, event: dict[str, Any]) -> None:
        """Best effort: a failing transport must not hold up the end of the call."""
        try:
            async with asyncio.timeout(NOTIFY_TIMEOUT_S):
                await self._transport.send_event(event)
        except Exception as exc:  # the caller is gone, too slow, or its transport broke
            log.debug("call %s: error event not delivered (%s)", self._call.id, type(exc).__name__)

    def _session_closed(self) -> str:
        failure = self._session.failure  # set when the session closed itself on a fatal error
        return f"session closed ({failure})" if failure else "session closed"

    def _transport_gone(self) -> str:
        """Why the caller's side ended: the transport's own reason (``gone_reason``, e.g.
        a WebRTC peer whose ICE failed) when it has one, else ``"<kind> closed"``."""
        reason = getattr(self._transport, "gone_reason", None)
        return reason if isinstance(reason, str) and reason else f"{self._transport.kind} closed"

    # ------------------------------------------------------------------ tasks

    async def _audio_in(self) -> str:
        normalizer = FrameNormalizer(PIPELINE_RATE)
        # a transport whose caller may play the agent back (SIP) sets echo_cancel = True
        wants_aec = bool(getattr(self._transport, "echo_cancel", False))
        self._session.set_echo_risk(wants_aec)
        echo = await open_echo_filter(self._session.playout) if wants_aec else None
        try:
            async with _closing(self._transport.inbound()) as frames:
                async for frame in frames:
                    self._last_audio = time.monotonic()
                    pcm: AudioFrame = normalizer.process(frame)
                    if echo is not None and pcm.samples.size:
                        # the reference is read on the loop (the playout's tap lives
                        # there); the canceller's DSP (~0.3 ms a frame) runs off it
                        reference = echo.reference(pcm)
                        if reference is None:
                            pcm = echo.cancel(pcm, None)  # pass-through, no DSP
                        else:
                            pcm = await asyncio.to_thread(echo.cancel, pcm, reference)
                    if pcm.samples.size:
                        self._session.push_audio(pcm)
        finally:
            if echo is not None:
                echo.close()
        return self._transport_gone()

    async def _playback(self) -> str:
        await self._transport.play(self._session.playout)
        return self._transport_gone()

    async def _events(self) -> str:
        async for event in self._session.events():
            await self._transport.send_event(event.to_dict())
        return self._session_closed()

    async def _control(self) -> str | None:
        async with _closing(self._transport.control()) as messages:
            async for message in messages:
                if isinstance(message, HangUp):
                    return "hung up"
                if isinstance(message, TextInput):
                    self._call.touch()
                    await self._session.send_text(message.text)
                elif isinstance(message, Dtmf):
                    self._call.touch()
                    try:
                        self._session.dtmf(message.digit, message.duration_ms)
                    except ValueError as exc:
                        await self._transport.send_event(input_error(str(exc)))
                elif isinstance(message, Hold):
                    self._call.touch()
                    self._on_hold = message.on_hold
                    self._last_audio = time.monotonic()  # audio may pause while on hold
                    self._session.set_hold(message.on_hold)
                elif isinstance(message, InvalidControl):
                    await self._transport.send_event(input_error(message.message))
        return None  # the control channel closed; media may go on

    async def _idle(self) -> str:
        """The watchdog of both timeouts; tells the caller which one ended the call."""
        while True:
            now = time.monotonic()
            if self._on_hold:
                self._last_audio = now
            idle_left = self._call.last_activity + self._idle_timeout_s - now
            if idle_left <= 0:
                await self._notify(_ended_notice(f"no speech for {self._idle_timeout_s:g} s"))
                return IDLE_REASON
            wait = min(idle_left, IDLE_POLL_S)
            if self._no_audio_timeout_s is not None:
                audio_left = self._last_audio + self._no_audio_timeout_s - now
                if audio_left <= 0:
                    log.info(
                        "call %s: no audio for %.0f s; ending it",
                        self._call.id,
                        self._no_audio_timeout_s,
                    )
                    notice = f"no audio received for {self._no_audio_timeout_s:g} s"
                    await self._notify(_ended_notice(notice))
                    return NO_AUDIO_REASON
                wait = min(wait, audio_left)
            await asyncio.sleep(wait)


def _ended_notice(why: str) -> dict[str, Any]:
    """The event that tells the caller a timeout ended the call."""
    return ErrorEvent(stage="call", message=f"the call ended: {why}", retryable=False).to_dict()


@contextlib.asynccontextmanager
async def _closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator when the loop over it stops (however it stops)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
