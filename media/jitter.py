"""The agent's inbound jitter buffer: how long the caller's audio packets wait before decoding.

aiortc (1.16) gives every audio ``RTCRtpReceiver`` a
``JitterBuffer(capacity=16, prefetch=4)`` in a private attribute, and the
receiver feeds it each RTP packet as it arrives; ``add()`` returns at most one
encoded frame for the decoder. What that buffer does with audio, one RTP
packet per 20 ms frame (pinned by ``tests/test_jitter.py``):

* **Always, not only at the start.** A frame counts as complete only once a
  packet with another timestamp follows it, and it is released only when
  ``prefetch`` complete frames sit contiguously behind the oldest slot. So
  packet *k* is decoded when packet *k + prefetch* arrives: a constant
  ``prefetch`` x 20 ms on every packet, 80 ms by default (``prefetch`` 0 and 1
  both mean one packet).
* **Reordering** (*k + 1* before *k*): *k + 1* waits for *k*; but since each
  arrival releases one frame, the buffer never catches up and every swap
  adds one more packet (20 ms) of lag for the rest of the call.
* **Loss**: nothing is released for 14 packets (280 ms), until the 16
  slots are full; then it skips the gap, dropping the frame before it as
  well, and stays 14 packets (280 ms) behind for the rest of the call.

The caller's audio is not played back here: it feeds the VAD, the turn
detector and STT, for which arriving late costs far more (slower end of
turn, slower barge-in) than a missing 20 ms. So by default (``prefetch`` 0)
``InboundAudioBuffer`` passes each packet on the moment it arrives, in
sequence order: a packet older than one already passed on (reordered past
its successor, or duplicated) is dropped and counted in ``late``; a lost one
is a 20 ms gap in the decoded audio. What this loses against a holding
buffer is the audio of reordered packets (20 ms each; Whisper and the VAD
tolerate it, loopback and typical networks reorder rarely), and the decoder
sees a gap instead of a late packet (aiortc has no loss concealment
either). A ``prefetch`` of N >= 1 keeps aiortc's own buffer with that
prefetch (N packets of lag, and the behaviour above).

aiortc keeps the buffer in a private attribute, so this module is the one
place that touches it: ``install()`` checks that the attribute still holds
an aiortc ``JitterBuffer`` and otherwise logs an error (once per process)
and leaves aiortc's default in place; the test suite pins it against the
installed aiortc over a real loopback peer.
"""

from __future__ import annotations

import logging
from importlib.metadata import version

from aiortc.jitterbuffer import MAX_MISORDER, JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

log = logging.getLogger(__name__)

INBOUND_PREFETCH = 0
"""Default: no packet waits (see the module doc); ``PARLEY_WEBRTC_INBOUND_PREFETCH``."""
MAX_PREFETCH = 15
"""Largest prefetch aiortc's 16-slot audio buffer can release frames with."""
AIORTC_CAPACITY = 16
"""Slots of aiortc's audio buffer (as aiortc creates it)."""
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"
"""Where ``RTCRtpReceiver`` keeps its jitter buffer (name-mangled ``__jitter_buffer``)."""

_warned = False


class InboundAudioBuffer:
    """An audio receiver's jitter buffer, with counters (see the module doc).

    ``prefetch`` 0 passes each packet on as it arrives (late ones dropped);
    N >= 1 delegates to aiortc's ``JitterBuffer`` with prefetch N. Only the
    receiver calls ``add``, on the event loop, once per RTP packet.
    """

    def __init__(self, prefetch: int = INBOUND_PREFETCH) -> None:
        if not 0 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be within 0-{MAX_PREFETCH}, got {prefetch}")
        self.prefetch = prefetch
        self._held = JitterBuffer(AIORTC_CAPACITY, prefetch=prefetch) if prefetch else None
        self._last: int | None = None
        self.packets = 0
        """RTP packets received."""
        self.frames = 0
        """Encoded frames passed on to the decoder."""
        self.late = 0
        """Packets dropped because a later one was already passed on (prefetch 0 only)."""

    @property
    def waiting(self) -> int:
        """Packets received and neither passed on nor dropped as late (the buffer's lag)."""
        return self.packets - self.frames - self.late

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Take one packet; returns ``(False, frame to decode or None)`` as aiortc's does.

        The first item (send a picture loss indication) is for video only.
        """
        self.packets += 1
        if self._held is not None:
            _, frame = self._held.add(packet)
        else:
            frame = self._on_arrival(packet)
        if frame is not None:
            self.frames += 1
        return False, frame

    def _on_arrival(self, packet: RtpPacket) -> JitterFrame | None:
        seq = packet.sequence_number
        if self._last is not None:
            ahead = uint16_add(seq, -self._last)
            behind = uint16_add(self._last, -seq)
            # Behind the last one passed on (or the same): late, unless it is so far
            # behind that the sender restarted its sequence (aiortc's rule as well).
            if behind <= ahead and behind < MAX_MISORDER:
                self.late += 1
                return None
        self._last = seq
        data: bytes = packet._data  # type: ignore[attr-defined]  # depayloaded by the receiver
        return JitterFrame(data=data, timestamp=packet.timestamp)


def install(
    receiver: RTCRtpReceiver, prefetch: int = INBOUND_PREFETCH
) -> InboundAudioBuffer | None:
    """Give an audio receiver an ``InboundAudioBuffer``; None (logged) where aiortc changed.

    Call it before media flows: on the peer connection's ``track`` event,
    which aiortc fires in ``setRemoteDescription``, before ICE and DTLS
    connect. None when the receiver does not keep an aiortc ``JitterBuffer``
    where aiortc 1.16 does (a renamed attribute): the receiver then keeps its
    own buffer (80 ms of lag), and an error says so once per process.
    """
    global _warned
    if not isinstance(getattr(receiver, _ATTRIBUTE, None), JitterBuffer):
        if not _warned:
            _warned = True
            log.error(
                "aiortc %s keeps no JitterBuffer in RTCRtpReceiver.%s: the caller's audio "
                "keeps aiortc's default jitter buffer (80 ms) instead of prefetch %d "
                "(media/jitter.py needs updating for this aiortc)",
                version("aiortc"),
                _ATTRIBUTE,
                prefetch,
            )
        return None
    buffer = InboundAudioBuffer(prefetch)
    setattr(receiver, _ATTRIBUTE, buffer)
    return buffer
