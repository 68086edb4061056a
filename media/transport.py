"""The one shape every call transport implements (WebRTC, WebSocket; next SIP, LiveKit).

A transport carries one call between a caller and the bridge
(``signaling.bridge``), which runs the call:

- **audio in**: ``inbound()`` yields the caller's audio as ``AudioFrame``s at
  whatever rate and channel count the wire has (Opus 48 kHz stereo, G.711
  8 kHz, 16 kHz PCM). The bridge normalises them once, in one place, to the
  pipeline's 16 kHz mono. The iterator ends when the caller is gone: that
  ends the call.
- **audio out**: ``play(playout)`` carries the agent's voice from the
  session's ``PlayoutBuffer`` until the call ends. Push transports send what
  ``playout.frames()`` yields (paced by ``media.pacer.Pacer``); a pull
  transport (aiortc's track) binds the buffer to its track, which paces its
  ``recv()`` with the same ``Pacer``. If ``play`` returns, the caller is gone.
- **control in**: ``control()`` yields typed ``ControlMessage``s (typed text,
  hang-up, keypad digits, hold). JSON wires use ``parse_control``;
  what cannot be understood arrives as ``InvalidControl`` and the bridge
  answers it with one error format. The iterator may end while the call goes
  on (a WHIP client has no data channel).
- **events out**: ``send_event(dict)`` delivers one JSON-ready session event.
- **close(reason)**: ends the caller's side (idempotent; never raises).

A send to a caller who is gone raises ``TransportClosedError``: the bridge ends the
call cleanly instead of treating it as a failure.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from media.frames import AudioFrame
from media.playout import PlayoutBuffer

MAX_CONTROL_BYTES = 16 * 1024
"""Largest control message accepted (a typed text message, JSON-encoded)."""
CONTROL_QUEUE_SIZE = 32
"""Bound of a transport's queue of inbound control messages (see ``ControlInbox``)."""


class TransportClosedError(Exception):
    """The caller's side is gone; nothing more can be sent."""


@dataclass(frozen=True, slots=True)
class TextInput:
    """The caller typed a message: a complete user turn."""

    text: str


@dataclass(frozen=True, slots=True)
class HangUp:
    """The caller asked to end the call."""


@dataclass(frozen=True, slots=True)
class InvalidControl:
    """A control message that could not be understood; ``message`` says what was expected."""

    message: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a keypad key (RFC 4733 telephone-event or SIP INFO)."""

    digit: str
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class Hold:
    """The caller put the call on hold (``on_hold``) or took it back (a SIP re-INVITE)."""

    on_hold: bool


ControlMessage = TextInput | HangUp | Dtmf | Hold | InvalidControl
"""What a transport's control channel carries in."""

_EXPECTED = 'expected {"type": "text", "text": ...} or {"type": "hangup"}'


def parse_control(raw: str | bytes) -> ControlMessage:
    """Read one JSON control message (a data-channel or WebSocket text message).

    ``{"type": "text", "text": ...}`` and ``{"type": "hangup"}`` are
    understood; anything else becomes ``InvalidControl`` (never an exception).
    """
    if not isinstance(raw, str):
        return InvalidControl("control messages must be JSON text, not binary")
    if len(raw) > MAX_CONTROL_BYTES:
        return InvalidControl(f"control message over {MAX_CONTROL_BYTES // 1024} KiB")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        # JSONDecodeError is a ValueError, and so is an integer of over 4300 digits;
        # nesting deeper than the recursion limit raises RecursionError.
        return InvalidControl("control message is not valid JSON")
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "hangup":
        return HangUp()
    if kind == "text" and isinstance(data.get("text"), str):
        text: str = data["text"]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON ("\ud800")
            return InvalidControl("text must be valid Unicode")
        return TextInput(text)
    return InvalidControl(_EXPECTED)


class ControlInbox:
    """A bounded queue of control messages from a transport's reader to the bridge.

    Readers that are driven by callbacks (an aiortc data channel) or that
    demultiplex one socket (the WebSocket) ``put`` here; ``control()``
    iterates it. Bound and drop policy: at most ``maxsize`` messages wait;
    past that the oldest message that is not a hang-up is dropped (counted
    in ``dropped``), so a flooding caller loses its own old input but a
    hang-up is never lost. ``close`` ends the iteration once the queue is
    drained.
    """

    def __init__(self, maxsize: int = CONTROL_QUEUE_SIZE) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.dropped = 0
        self._queue: deque[ControlMessage] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, message: ControlMessage) -> None:
        """Queue a message (never blocks; see the drop policy). Ignored once closed."""
        if self._closed:
            return
        if len(self._queue) >= self.maxsize:
            victim = next((m for m in self._queue if not isinstance(m, HangUp)), None)
            self.dropped += 1
            if victim is None:
                return  # all hang-ups: one more adds nothing
            self._queue.remove(victim)
        self._queue.append(message)
        self._ready.set()

    def close(self) -> None:
        """No more messages follow."""
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[ControlMessage]:
        return self

    async def __anext__(self) -> ControlMessage:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()


class Transport(Protocol):
    """One call's link to its caller (see the module docstring for the contract)."""

    kind: str
    """Short name: metrics label and ``Call.transport`` (``"webrtc"``, ``"websocket"``)."""

    def inbound(self) -> AsyncIterator[AudioFrame]:
        """The caller's audio, any rate and channel count; ends when the caller is gone."""
        ...

    def control(self) -> AsyncIterator[ControlMessage]:
        """The caller's control messages; may end while the call goes on."""
        ...

    async def play(self, playout: PlayoutBuffer) -> None:
        """Carry the agent's audio to the caller until cancelled (returning means gone)."""
        ...

    async def send_event(self, event: Mapping[str, Any]) -> None:
        """Deliver one JSON-ready event; raises ``TransportClosedError`` if the caller is gone."""
        ...

    async def close(self, reason: str) -> None:
        """End the caller's side with ``reason`` (idempotent, never raises)."""
        ...
