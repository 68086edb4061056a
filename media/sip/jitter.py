"""A small RTP jitter buffer: reorder by sequence number, drop late and duplicates, conceal loss.

The consumer of a phone call's audio is the agent (VAD, STT), not a sound
card, so smoothing arrival jitter with a fixed delay buys nothing; what
matters is that audio comes out in order and that a lost packet leaves a
well-formed hole. Hence the policy:

- **in order**: a packet that continues the sequence is decoded and released
  at once (no added latency on a clean path);
- **reorder**: a missing packet is waited for until the newest packet is
  ``target_ms`` of stream time past it (60 ms: three 20 ms packets), or
  until the owner calls ``expire()`` (its clock says the gap waited long
  enough; this module has no clock and is fully deterministic);
- **late / duplicate**: a packet behind the release point, or one already
  held or released, is dropped and counted;
- **loss concealment**: a packet given up is replaced by the last decoded
  frame repeated with a linear fade to silence over ``FADE_FRAMES``
  (60 ms), then silence; at most ``max_ms`` of audio is invented per gap,
  a longer outage becomes a discontinuity (no frames, only counted);
- **bound and drop policy**: at most ``max_ms`` of audio is held; past that
  the oldest gap is given up (the held packets are never dropped);
- **restarts**: a sequence jump of more than ``MAX_DROPOUT`` packets ahead
  or ``MAX_MISORDER`` behind is taken as a restarted sender only once the
  next packet confirms it (RFC 3550 appendix A.1); a lone stray packet is
  counted late and dropped.

Sequence numbers are 16-bit and wrap; internally they are extended to
unbounded integers relative to the release point.

Packets that occupy a sequence number but carry no audio (telephone-events,
comfort noise, an unexpected payload type) are ``skip``-ped so that they do
not read as loss.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

import numpy as np

from media.frames import FRAME_MS, PCM

MAX_MISORDER: Final = 100
"""A packet this many sequence numbers behind is a restart candidate, not merely late."""
MAX_DROPOUT: Final = 3000
"""A jump this far ahead is a restart candidate, not an outage (RFC 3550 A.1)."""
FADE_FRAMES: Final = 3
"""Concealed frames over which the repeated audio fades to silence."""
_SEQ_MOD: Final = 1 << 16
_RECENT: Final = 128
"""How many released sequence numbers are remembered to tell duplicates from late packets."""


class Arrival(Enum):
    """What ``put`` or ``skip`` did with a packet."""

    ACCEPTED = "accepted"
    LATE = "late"
    DUPLICATE = "duplicate"
    PROBE = "probe"
    """A far jump held back until the next packet confirms a restarted sender."""
    RESYNC = "resync"
    """The sender restarted its sequence: the buffer followed it."""


@dataclass(slots=True)
class JitterStats:
    """Counters of one jitter buffer (packets unless said otherwise)."""

    received: int = 0
    """Audio packets accepted."""
    skipped: int = 0
    """Sequence numbers occupied by non-audio packets (telephone-event, CN)."""
    lost: int = 0
    """Sequence numbers given up without a packet."""
    late: int = 0
    """Packets that came after their place was given up (or stray far jumps)."""
    duplicate: int = 0
    concealed: int = 0
    """Frames of invented audio (repeat-then-fade or silence)."""
    resyncs: int = 0
    overflow: int = 0
    """Gaps given up early because ``max_ms`` of audio was held."""
    decode_errors: int = 0
    """Payloads the codec rejected (concealed as lost)."""


class JitterBuffer:
    """Reorders RTP payloads by sequence number and releases decoded frames.

    ``decode`` turns one payload into int16 PCM at ``sample_rate`` (the
    codec's; stateful codecs see payloads strictly in order). Feed packets
    with ``put``/``skip``, take frames with ``pop``; call ``expire`` when a
    gap has waited ``target_ms`` by the owner's clock, ``flush`` when the
    stream pauses or ends, ``reset`` when a new stream (SSRC) begins.
    """

    def __init__(
        self,
        decode: Callable[[bytes], PCM],
        sample_rate: int,
        *,
        frame_ms: int = FRAME_MS,
        target_ms: int = 60,
        max_ms: int = 200,
    ) -> None:
        if sample_rate <= 0 or frame_ms <= 0:
            raise ValueError("sample_rate and frame_ms must be positive")
        if not 0 <= target_ms <= max_ms:
            raise ValueError("need 0 <= target_ms <= max_ms")
        if max_ms < frame_ms:
            raise ValueError("max_ms must hold at least one frame")
        self.sample_rate = sample_rate
        self.target_ms = target_ms
        self.max_ms = max_ms
        self.stats = JitterStats()
        self._decode = decode
        self._packet_samples = sample_rate * frame_ms // 1000
        self._next: int | None = None  # extended sequence number to release next
        self._held: dict[int, bytes | None] = {}
        self._recent: deque[int] = deque(maxlen=_RECENT)
        self._recent_set: set[int] = set()
        self._ready: deque[PCM] = deque()
        self._probe: tuple[int, bytes | None] | None = None
        self._last: PCM | None = None
        self._loss_run = 0

    # ------------------------------------------------------------------ input

    def put(self, sequence: int, payload: bytes) -> Arrival:
        """Add an audio packet's payload."""
        return self._add(sequence, payload)

    def skip(self, sequence: int) -> Arrival:
        """Mark a sequence number taken by a packet without audio (so it is not loss)."""
        return self._add(sequence, None)

    def expire(self) -> None:
        """Give up the oldest gap now and release what follows it in order."""
        if self._next is None or not self._held:
            return
        self._give_up(min(self._held) - self._next)
        self._release()

    def flush(self) -> None:
        """Give up every gap: all held packets become frames (the stream paused or ended)."""
        while self._held:
            self.expire()

    def reset(self) -> None:
        """Flush and forget the sequence: the next packet starts a new stream."""
        self.flush()
        self._next = None
        self._probe = None
        self._recent.clear()
        self._recent_set.clear()
        self._last = None
        self._loss_run = 0

    # ----------------------------------------------------------------- output

    def pop(self) -> PCM | None:
        """The next released frame in order (None when nothing is ready)."""
        return self._ready.popleft() if self._ready else None

    @property
    def holding(self) -> bool:
        """Whether packets wait behind a gap (the owner should time ``expire``)."""
        return bool(self._held)

    @property
    def buffered_ms(self) -> float:
        """Audio held behind gaps, in milliseconds."""
        return len(self._held) * self._packet_ms

    def snapshot(self) -> JitterStats:
        """A copy of the counters."""
        return replace(self.stats)

    # -------------------------------------------------------------- internals

    @property
    def _packet_ms(self) -> float:
        return 1000.0 * self._packet_samples / self.sample_rate

    def _extend(self, sequence: int) -> int:
        assert self._next is not None
        delta = (sequence - self._next) % _SEQ_MOD
        if delta >= _SEQ_MOD // 2:
            delta -= _SEQ_MOD
        return self._next + delta

    def _add(self, sequence: int, payload: bytes | None) -> Arrival:
        if not 0 <= sequence < _SEQ_MOD:
            raise ValueError(f"RTP sequence numbers are 16-bit, got {sequence}")
        if self._next is None:
            self._next = sequence
        ext = self._extend(sequence)
        delta = ext - self._next
        if ext in self._held or ext in self._recent_set:
            self.stats.duplicate += 1
            return Arrival.DUPLICATE
        if delta < -MAX_MISORDER or delta > MAX_DROPOUT:
            return self._restart_candidate(sequence, payload)
        self._probe = None
        if delta < 0:
            self.stats.late += 1
            return Arrival.LATE
        self._hold(ext, payload)
        self._release()
        return Arrival.ACCEPTED

    def _restart_candidate(self, sequence: int, payload: bytes | None) -> Arrival:
        probe = self._probe
        if probe is None or (probe[0] + 1) % _SEQ_MOD != sequence:
            self._probe = (sequence, payload)
            self.stats.late += 1
            return Arrival.PROBE
        # two consecutive packets agree: the sender restarted its sequence
        self.flush()
        self._probe = None
        self._recent.clear()
        self._recent_set.clear()
        self.stats.late -= 1  # the probe is used after all
        self.stats.resyncs += 1
        self._next = probe[0]
        self._hold(probe[0], probe[1])
        self._hold(probe[0] + 1, payload)
        self._release()
        return Arrival.RESYNC

    def _hold(self, ext: int, payload: bytes | None) -> None:
        self._held[ext] = payload
        if payload is None:
            self.stats.skipped += 1
        else:
            self.stats.received += 1

    def _release(self) -> None:
        assert self._next is not None
        target_packets = self.target_ms / self._packet_ms
        while self._held:
            if self._next in self._held:
                self._emit(self._next, self._held.pop(self._next))
                self._next += 1
                continue
            # a run of missing packets up to the first held one
            run = min(self._held) - self._next
            if len(self._held) * self._packet_ms > self.max_ms:
                self.stats.overflow += 1
                self._give_up(run)  # drop policy: the oldest gap goes, held audio stays
                continue
            # give up those the newest packet is at least target_ms past; wait for the rest
            overdue = math.floor(max(self._held) - target_packets) + 1 - self._next
            if overdue <= 0:
                return
            self._give_up(min(run, overdue))

    def _remember(self, ext: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(ext)
        self._recent_set.add(ext)

    def _emit(self, ext: int, payload: bytes | None) -> None:
        self._remember(ext)
        if payload is None:
            self._loss_run = 0
            return
        try:
            pcm = self._decode(payload)
        except ValueError:
            self.stats.decode_errors += 1
            self._conceal_run(1)
            return
        if pcm.size == 0:
            return
        self._packet_samples = pcm.size
        self._last = pcm
        self._loss_run = 0
        self._ready.append(pcm)

    def _give_up(self, count: int) -> None:
        """Declare the next ``count`` sequence numbers lost and conceal them."""
        assert self._next is not None
        self.stats.lost += count
        self._next += count
        self._conceal_run(count)

    def _conceal_run(self, count: int) -> None:
        # at most max_ms of invented audio per gap: a long outage is a discontinuity
        cap = math.ceil(self.max_ms / self._packet_ms)
        invent = max(0, min(count, cap - self._loss_run))
        for _ in range(invent):
            self._conceal()
        self._loss_run += count - invent

    def _conceal(self) -> None:
        run = self._loss_run
        self._loss_run += 1
        self.stats.concealed += 1
        size = self._packet_samples
        last = self._last
        if last is None or run >= FADE_FRAMES:
            self._ready.append(np.zeros(size, np.int16))
            return
        body = np.resize(last, size).astype(np.float32)
        gains = np.linspace(1 - run / FADE_FRAMES, 1 - (run + 1) / FADE_FRAMES, size, False)
        self._ready.append((body * gains.astype(np.float32)).astype(np.int16))
