"""RFC 4733 telephone-events: keypad digits sent as RTP packets.

One key press is one *event*: every packet of it carries the same RTP
timestamp (the event's start) and a growing ``duration``; the last packet
has the end bit set and is usually sent three times. Real trunks bend the
rules: some omit the marker bit on the first packet, some never send an end
packet, and any packet may be lost or reordered. ``DtmfDetector`` reports
each digit exactly once:

- when its end bit is seen (retransmitted ends are ignored afterwards);
- when a new event begins (another timestamp or event code) while the
  previous one never ended;
- when the owner calls ``flush`` (its clock says no event packet came for a
  while, or the stream ended).

The marker bit is never relied upon. The detector has no clock and is
deterministic.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

DIGITS: Final = "0123456789*#ABCD"
"""Event codes 0-15 (RFC 4733 section 3.2) as keypad characters."""
PAYLOAD_BYTES: Final = 4
_REMEMBERED: Final = 16
"""How many finished events are remembered to ignore their retransmissions."""


class DtmfFormatError(ValueError):
    """A telephone-event payload that is too short to hold an event."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event block."""

    event: int
    """Event code (0-15 are keypad digits)."""
    end: bool
    volume: int
    """Power level in -dBm0 (0-63)."""
    duration: int
    """Duration so far, in units of the RTP clock."""


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """A key press reported once."""

    digit: str
    """``0``-``9``, ``*``, ``#`` or ``A``-``D``."""
    duration_ms: int
    timestamp: int
    """RTP timestamp of the event's start."""
    ended: bool = True
    """False when the sender never marked the end (the duration is the last one seen)."""


def parse_event(payload: bytes) -> TelephoneEvent:
    """Read the first event block of a telephone-event payload.

    Raises ``DtmfFormatError`` when the payload is shorter than one block.
    Further blocks (multiple events in one packet, RFC 4733 section 2.5.1.5)
    are ignored.
    """
    if len(payload) < PAYLOAD_BYTES:
        raise DtmfFormatError(
            f"telephone-event payload needs {PAYLOAD_BYTES} bytes, got {len(payload)}"
        )
    event, flags, duration = struct.unpack_from("!BBH", payload)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)


@dataclass(slots=True)
class _Pending:
    timestamp: int
    event: int
    duration: int


class DtmfDetector:
    """Turns telephone-event packets into one ``DtmfDigit`` per key press.

    ``clock_rate`` is the telephone-event RTP clock (8000 as negotiated).
    Events that are not keypad digits (flash, tones) are tracked so their
    packets are absorbed, but not reported.
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self.malformed = 0
        """Payloads too short to parse."""
        self._current: _Pending | None = None
        self._finished: deque[tuple[int, int]] = deque(maxlen=_REMEMBERED)

    @property
    def pending(self) -> bool:
        """Whether an event has started and not yet been reported."""
        return self._current is not None

    def feed(self, payload: bytes, timestamp: int) -> list[DtmfDigit]:
        """Take one telephone-event packet; return the digits it completes (usually none or one)."""
        try:
            block = parse_event(payload)
        except DtmfFormatError:
            self.malformed += 1
            return []
        key = (timestamp, block.event)
        if key in self._finished:
            return []  # a retransmitted end, or a late packet of a reported event
        out: list[DtmfDigit] = []
        current = self._current
        if current is not None and (current.timestamp, current.event) != key:
            out += self._finish(ended=False)  # the previous event never sent its end
            current = None
        if current is None:
            current = self._current = _Pending(timestamp, block.event, block.duration)
        else:
            current.duration = max(current.duration, block.duration)
        if block.end:
            out += self._finish(ended=True)
        return out

    def flush(self) -> list[DtmfDigit]:
        """Report an event that never sent its end (no packet came for a while)."""
        return self._finish(ended=False) if self._current is not None else []

    def _finish(self, *, ended: bool) -> list[DtmfDigit]:
        current = self._current
        assert current is not None
        self._current = None
        self._finished.append((current.timestamp, current.event))
        if current.event >= len(DIGITS):
            return []
        duration_ms = current.duration * 1000 // self.clock_rate
        return [DtmfDigit(DIGITS[current.event], duration_ms, current.timestamp, ended)]
