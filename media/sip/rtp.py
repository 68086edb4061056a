"""One call's RTP stream over an asyncio datagram endpoint (RFC 3550, RFC 3551, RFC 4733).

``RtpSession`` binds an even UDP port, decodes the caller's packets into
20 ms ``AudioFrame``s at the codec's rate (through ``media.sip.jitter``),
reports keypad digits (``media.sip.dtmf``), and sends the agent's playout
as paced RTP packets.

Inbound policy:

- packets are parsed with ``aiortc.rtp.RtpPacket``; what does not parse is
  counted as garbage, RTCP on the RTP port is counted and ignored;
- symmetric RTP: packets from another address than the SDP's are accepted
  and counted (``foreign_source``); we keep sending to the SDP's address;
- the first SSRC is the stream; a different SSRC is followed once two
  consecutive packets agree (a re-anchored media server), which resets the
  jitter buffer; one stray packet is dropped;
- the audio payload type goes to the jitter buffer; the telephone-event type
  to the DTMF detector; any other type only occupies its sequence number;
- **silence fill**: phones with silence suppression (and sipp between
  prompts) stop sending while the caller is quiet. The agent's turn-taking
  needs that silence, so once no audio packet arrived for
  ``silence_fill_ms`` (while receiving is expected) the session emits silent
  frames covering the gap, in real time, until packets resume. A delay spike
  longer than ``silence_fill_ms`` therefore stretches the inbound timeline by
  the silence it filled (never by more);
- the stream ends (``ended_reason``) when the session is closed or when no
  packet at all arrived for ``no_rtp_timeout_s`` while the direction is
  ``sendrecv`` (a held call is not timed out: the SIP layer decides).

Bounds and drop policies: decoded frames wait in a queue of
``inbound_queue_ms`` (oldest dropped first, counted); digits in a queue of
``DIGIT_QUEUE`` (oldest dropped first, counted); outbound packets are
dropped (counted) rather than queued once the socket's send buffer holds
``MAX_SEND_BACKLOG_MS`` of audio.

Outbound: ``send_playout`` sends every frame the playout yields, silence
included (a continuous stream), with a random initial SSRC, sequence number
and timestamp, and the marker bit on the first packet of each talkspurt (the
first frame with speech after silence) and on the first packet after not
sending (the stream's first packet, a resume after hold: RFC 3551 section
4.1). While our direction does not send (``recvonly``/``inactive``, or no
usable remote address) frames are not sent but the timestamp keeps advancing.

RTCP is not implemented (port + 1 is not bound); trunks do not require it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

import numpy as np
from aiortc.rtp import RtpPacket

from media.errors import AudioFormatError
from media.frames import FRAME_MS, PCM, AudioFrame
from media.playout import PlayoutBuffer
from media.sip.codecs import Codec
from media.sip.dtmf import DtmfDetector, DtmfDigit
from media.sip.jitter import JitterBuffer
from media.sip.sdp import DIRECTIONS, Direction

log = logging.getLogger(__name__)

DEFAULT_PORT_RANGE: Final = (10_000, 20_000)
"""RTP ports used when nothing is configured (``PARLEY_RTP_PORTS``)."""
MAX_DATAGRAM: Final = 1500
"""Largest datagram considered (an Ethernet MTU); bigger ones are garbage."""
PT_CN: Final = 13
"""Comfort noise (RFC 3389): marks silence, carries no speech."""
DIGIT_QUEUE: Final = 16
"""Bound of the queue of detected digits (oldest dropped first)."""
DTMF_IDLE_S: Final = 0.5
"""An event with no packet for this long is reported even without its end bit."""
MAX_SEND_BACKLOG_MS: Final = 100
"""Audio the socket may hold unsent before new packets are dropped."""
_RTCP_TYPES: Final = range(200, 207)
_ANY_DIRECTIONS: Final = frozenset(DIRECTIONS)


class RtpError(OSError):
    """An RTP session could not be set up (an ``OSError``: the socket layer failed)."""


class RtpPortUnavailableError(RtpError):
    """No even port of the configured range could be bound."""


class EndReason(Enum):
    """Why a session's inbound stream ended."""

    CLOSED = "closed"
    """``close()`` was called, or the socket closed."""
    NO_RTP = "no_rtp"
    """No packet arrived for ``no_rtp_timeout_s``."""
    ERROR = "error"
    """The session's timer task failed (a bug; logged)."""


@dataclass(slots=True)
class RtpStats:
    """One session's counters (packets unless said otherwise); ``RtpSession.stats`` copies them."""

    packets_sent: int = 0
    bytes_sent: int = 0
    """Payload bytes sent."""
    packets_received: int = 0
    """Valid RTP packets of the call's stream."""
    bytes_received: int = 0
    """Payload bytes received."""
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    concealed: int = 0
    """Frames of invented audio for lost packets."""
    filled: int = 0
    """Silent frames emitted while the caller sent no audio."""
    garbage: int = 0
    """Datagrams that are not RTP."""
    rtcp: int = 0
    wrong_payload_type: int = 0
    foreign_source: int = 0
    """Packets from another address than the SDP's (symmetric RTP, NAT)."""
    ssrc_changes: int = 0
    dropped_frames: int = 0
    """Decoded frames dropped because the consumer fell ``inbound_queue_ms`` behind."""
    dropped_digits: int = 0
    dropped_sends: int = 0
    """Outbound packets dropped on a full socket buffer."""
    digits: int = 0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, session: RtpSession) -> None:
        self._session = session

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._session._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a caller not listening yet: not fatal
        log.debug("rtp: socket error %s", type(exc).__name__)

    def connection_lost(self, exc: Exception | None) -> None:
        self._session._end(EndReason.CLOSED)


class RtpSession:
    """One call's RTP: decoded frames and digits in, paced playout out.

    Create with ``await RtpSession.open(...)``; always ``await close()``.
    ``frames()`` and ``digits()`` are meant for one consumer each.
    """

    def __init__(
        self,
        codec: Codec,
        dtmf_pt: int | None,
        *,
        clock: Callable[[], float],
        no_rtp_timeout_s: float,
        dtmf_clock_rate: int,
        jitter_target_ms: int,
        jitter_max_ms: int,
        inbound_queue_ms: int,
        silence_fill_ms: int,
    ) -> None:
        """Use ``open``; this only builds the state."""
        if no_rtp_timeout_s <= 0 or silence_fill_ms <= 0:
            raise ValueError("timeouts must be positive")
        if inbound_queue_ms < FRAME_MS:
            raise ValueError("inbound_queue_ms must hold at least one frame")
        self.codec = codec
        self.dtmf_pt = dtmf_pt
        self.no_rtp_timeout_s = no_rtp_timeout_s
        self.silence_fill_s = silence_fill_ms / 1000
        self.frame_samples = codec.sample_rate * FRAME_MS // 1000
        self.ssrc = secrets.randbits(32)
        self.ended_reason: EndReason | None = None
        self.local_host = ""
        self.local_port = 0
        self.remote: tuple[str, int] | None = None
        self.remote_ssrc: int | None = None
        self._clock = clock
        self._jitter = JitterBuffer(
            codec.decode, codec.sample_rate, target_ms=jitter_target_ms, max_ms=jitter_max_ms
        )
        self._gap_wait_s = jitter_target_ms / 1000
        self._detector = DtmfDetector(dtmf_clock_rate)
        self._transport: asyncio.DatagramTransport | None = None
        self._family = socket.AF_INET
        self._direction: Direction = "sendrecv"
        self._closed = False
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # inbound
        now = clock()
        self._last_rx = now
        self._last_audio_rx: float | None = None
        self._last_dtmf_rx = now
        self._holding_since = now
        self._filled_since_audio = 0
        self._carry: list[PCM] = []
        self._carry_size = 0
        self._out_samples = 0
        self._frames: deque[AudioFrame] = deque()
        self._max_frames = inbound_queue_ms // FRAME_MS
        self._frames_ready = asyncio.Event()
        self._digits: deque[DtmfDigit] = deque()
        self._digits_ready = asyncio.Event()
        self._ssrc_probe: RtpPacket | None = None
        # outbound
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._in_speech = False
        self._paused = True
        self._sending = False
        self._counters = RtpStats()

    # ------------------------------------------------------------------ setup

    @classmethod
    async def open(
        cls,
        host: str,
        port_range: tuple[int, int],
        codec: Codec,
        dtmf_pt: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        no_rtp_timeout_s: float = 30.0,
        dtmf_clock_rate: int = 8000,
        jitter_target_ms: int = 60,
        jitter_max_ms: int = 200,
        inbound_queue_ms: int = 1000,
        silence_fill_ms: int = 200,
    ) -> RtpSession:
        """Bind an even port of ``port_range`` (inclusive) on ``host`` and start the session.

        ``port_range`` is ``PARLEY_RTP_PORTS`` (``DEFAULT_PORT_RANGE`` by
        default); ``dtmf_pt`` the negotiated telephone-event payload type.

        Ports are tried from a random even port on, wrapping around the range;
        one in use is skipped. Raises ``RtpPortUnavailableError`` when none is
        free, ``RtpError`` for any other socket failure. ``clock`` is the time
        source of every timeout (no RTP, gap wait, DTMF idle, silence fill).
        """
        low, high = port_range
        first = low + (low % 2)
        if not 0 < low <= high < 65536 or first >= high:
            raise ValueError(f"port range {low}-{high} holds no even RTP port with its RTCP pair")
        session = cls(
            codec,
            dtmf_pt,
            clock=clock,
            no_rtp_timeout_s=no_rtp_timeout_s,
            dtmf_clock_rate=dtmf_clock_rate,
            jitter_target_ms=jitter_target_ms,
            jitter_max_ms=jitter_max_ms,
            inbound_queue_ms=inbound_queue_ms,
            silence_fill_ms=silence_fill_ms,
        )
        loop = asyncio.get_running_loop()
        ports = range(first, high, 2)
        start = secrets.randbelow(len(ports))
        for i in range(len(ports)):
            port = ports[(start + i) % len(ports)]
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(session), local_addr=(host, port)
                )
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise RtpError(f"cannot bind RTP on {host}:{port}: {exc.strerror}") from exc
            break
        else:
            raise RtpPortUnavailableError(f"no free even RTP port in {low}-{high} on {host}")
        sock = transport.get_extra_info("socket")
        session._transport = transport
        session._family = sock.family
        session.local_host, session.local_port = transport.get_extra_info("sockname")[:2]
        session._last_rx = session._clock()
        session._timer = loop.create_task(session._run_timers(), name=f"rtp-timers-{port}")
        return session

    def set_remote(self, address: str, port: int) -> None:
        """Send to ``address:port`` from the caller's SDP (``0.0.0.0`` means: do not send).

        Raises ``ValueError`` for an address that is not an IP literal, a port
        out of range, or an address family the socket cannot reach.
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as exc:
            raise ValueError(f"RTP remote must be an IP literal, got {address!r}") from exc
        if not 0 <= port < 65536:
            raise ValueError(f"RTP remote port out of range: {port}")
        if ip.is_unspecified or port == 0:
            self.remote = None  # RFC 2543 hold: nowhere to send
            return
        want = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        if want != self._family:
            raise ValueError(f"RTP socket on {self.local_host} cannot send to {ip}")
        self.remote = (str(ip), port)

    def set_direction(self, direction: Direction) -> None:
        """Our direction as written in our SDP answer.

        ``sendrecv``/``sendonly`` send; ``recvonly``/``inactive`` do not (the
        caller holds us). The no-RTP timeout runs only in ``sendrecv``.
        """
        if direction not in _ANY_DIRECTIONS:
            raise ValueError(f"not an SDP direction: {direction!r}")
        if direction != self._direction:
            now = self._clock()
            self._direction = direction
            self._last_rx = now  # a resumed stream gets a whole timeout
            if self._last_audio_rx is not None:
                self._last_audio_rx = now  # no retroactive fill for the time on hold
                self._filled_since_audio = 0
            self._wake.set()

    @property
    def direction(self) -> Direction:
        """Our current direction (see ``set_direction``)."""
        return self._direction

    @property
    def sending(self) -> bool:
        """Whether frames are sent now (direction allows it and a remote is known)."""
        return self._direction in ("sendrecv", "sendonly") and self.remote is not None

    @property
    def stats(self) -> RtpStats:
        """A snapshot of the counters."""
        j = self._jitter.stats
        return replace(
            self._counters, lost=j.lost, late=j.late, duplicate=j.duplicate, concealed=j.concealed
        )

    # ---------------------------------------------------------------- inbound

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """The caller's audio: 20 ms mono frames at the codec's rate until the stream ends.

        Frame timestamps are the inbound stream position in seconds. After the
        end, ``ended_reason`` says why.
        """
        while True:
            if self._frames:
                yield self._frames.popleft()
                continue
            if self.ended_reason is not None:
                return
            self._frames_ready.clear()
            await self._frames_ready.wait()

    async def digits(self) -> AsyncIterator[DtmfDigit]:
        """Keypad digits (RFC 4733), each once, until the stream ends."""
        while True:
            if self._digits:
                yield self._digits.popleft()
                continue
            if self.ended_reason is not None:
                return
            self._digits_ready.clear()
            await self._digits_ready.wait()

    def _on_datagram(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.ended_reason is not None:
            return
        if len(data) > MAX_DATAGRAM:
            self._counters.garbage += 1
            return
        if len(data) >= 2 and data[0] >> 6 == 2 and data[1] in _RTCP_TYPES:
            self._counters.rtcp += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except (ValueError, struct.error):
            self._counters.garbage += 1
            return
        now = self._clock()
        self._last_rx = now
        if self.remote is not None and (addr[0], addr[1]) != self.remote:
            self._counters.foreign_source += 1
        if self.remote_ssrc is None:
            self.remote_ssrc = packet.ssrc
        elif packet.ssrc != self.remote_ssrc:
            probe = self._ssrc_probe
            if probe is None or probe.ssrc != packet.ssrc:
                self._ssrc_probe = packet  # one stray packet is not a new stream
                return
            self._new_source(packet.ssrc)
            self._handle(probe, now)
        self._ssrc_probe = None
        self._handle(packet, now)

    def _new_source(self, ssrc: int) -> None:
        self._jitter.flush()
        self._drain_jitter()
        self._jitter.reset()
        self._push_digits(self._detector.flush())
        self.remote_ssrc = ssrc
        self._counters.ssrc_changes += 1

    def _handle(self, packet: RtpPacket, now: float) -> None:
        self._counters.packets_received += 1
        self._counters.bytes_received += len(packet.payload)
        was_holding = self._jitter.holding
        pt = packet.payload_type
        if pt == self.codec.payload_type:
            if self._last_audio_rx is None:
                self._wake.set()  # silence fill becomes possible
            self._last_audio_rx = now
            self._filled_since_audio = 0
            self._jitter.put(packet.sequence_number, packet.payload)
        elif pt == self.dtmf_pt:
            self._jitter.skip(packet.sequence_number)
            if not self._detector.pending:
                self._wake.set()
            self._last_dtmf_rx = now
            self._push_digits(self._detector.feed(packet.payload, packet.timestamp))
        else:
            if pt != PT_CN:
                self._counters.wrong_payload_type += 1
            self._jitter.skip(packet.sequence_number)
        self._drain_jitter()
        if self._jitter.holding and not was_holding:
            self._holding_since = now
            self._wake.set()

    def _drain_jitter(self) -> None:
        while (pcm := self._jitter.pop()) is not None:
            self._emit_pcm(pcm)

    def _emit_pcm(self, pcm: PCM) -> None:
        n = self.frame_samples
        if not self._carry and pcm.size == n:
            self._push_frame(pcm)
            return
        self._carry.append(pcm)
        self._carry_size += pcm.size
        if self._carry_size < n:
            return
        joined = np.concatenate(self._carry)
        whole = joined.size - joined.size % n
        for offset in range(0, whole, n):
            self._push_frame(joined[offset : offset + n])
        rest = joined[whole:]
        self._carry = [rest] if rest.size else []
        self._carry_size = rest.size

    def _push_frame(self, pcm: PCM) -> None:
        rate = self.codec.sample_rate
        frame = AudioFrame(pcm, rate, 1, self._out_samples / rate)
        self._out_samples += pcm.size
        if len(self._frames) >= self._max_frames:
            self._frames.popleft()
            self._counters.dropped_frames += 1
        self._frames.append(frame)
        self._frames_ready.set()

    def _push_digits(self, digits: list[DtmfDigit]) -> None:
        for digit in digits:
            if len(self._digits) >= DIGIT_QUEUE:
                self._digits.popleft()
                self._counters.dropped_digits += 1
            self._digits.append(digit)
            self._counters.digits += 1
            self._digits_ready.set()

    # ----------------------------------------------------------------- timers

    async def _run_timers(self) -> None:
        """The session's one task: no-RTP timeout, gap expiry, DTMF idle, silence fill."""
        try:
            while self.ended_reason is None:
                deadline = self._tick(self._clock())
                if self.ended_reason is not None:
                    return
                self._wake.clear()
                if deadline is None:
                    await self._wake.wait()
                    continue
                with contextlib.suppress(TimeoutError):  # the deadline passed: look again
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        await self._wake.wait()
        except Exception:
            log.exception("rtp: timer task failed")
            self._end(EndReason.ERROR)

    def _tick(self, now: float) -> float | None:
        """Do what is due at ``now``; return the next deadline (None: wait for a wake-up)."""
        deadlines: list[float] = []
        if self._direction == "sendrecv":
            due = self._last_rx + self.no_rtp_timeout_s
            if now >= due:
                log.info(
                    "rtp: no packet for %.1f s on port %d", now - self._last_rx, self.local_port
                )
                self._end(EndReason.NO_RTP)
                return None
            deadlines.append(due)
        if self._jitter.holding:
            due = self._holding_since + self._gap_wait_s
            if now >= due:
                self._jitter.expire()
                self._drain_jitter()
                self._holding_since = now
            if self._jitter.holding:
                deadlines.append(self._holding_since + self._gap_wait_s)
        if self._detector.pending:
            due = self._last_dtmf_rx + DTMF_IDLE_S
            if now >= due:
                self._push_digits(self._detector.flush())
            else:
                deadlines.append(due)
        fill_due = self._fill(now)
        if fill_due is not None:
            deadlines.append(fill_due)
        return min(deadlines) if deadlines else None

    def _fill(self, now: float) -> float | None:
        """Emit silence for the time no audio came; return when the next fill is due."""
        last = self._last_audio_rx
        if last is None or self._direction not in ("sendrecv", "recvonly"):
            return None
        frame_s = FRAME_MS / 1000
        if now - last < self.silence_fill_s:
            return last + self.silence_fill_s
        if self._jitter.holding:
            self._jitter.flush()
            self._drain_jitter()
        due_frames = int((now - last) / frame_s)
        # after a stall, fill at most what the inbound queue holds (the rest would be dropped)
        missing = due_frames - self._filled_since_audio
        for _ in range(min(missing, self._max_frames)):
            self._emit_pcm(np.zeros(self.frame_samples, np.int16))
            self._counters.filled += 1
        self._filled_since_audio = max(due_frames, self._filled_since_audio)
        return last + (self._filled_since_audio + 1) * frame_s

    def _end(self, reason: EndReason) -> None:
        if self.ended_reason is not None:
            return
        self.ended_reason = reason
        self._jitter.flush()
        self._drain_jitter()
        self._push_digits(self._detector.flush())
        if reason is EndReason.CLOSED:
            self._frames.clear()  # nobody wants stale audio of a closed call
        self._frames_ready.set()
        self._digits_ready.set()
        self._wake.set()

    # --------------------------------------------------------------- outbound

    async def send_playout(self, playout: PlayoutBuffer) -> None:
        """Send the playout's paced 20 ms frames as RTP until the stream ends.

        The playout must run at the codec's rate with 20 ms frames (the call
        creates it so; nothing is resampled here), else ``AudioFormatError``.
        Returns when the session is closed or its inbound stream ended. The
        playout is pulled on hold too (its stream clock runs on): pause the
        ``PlayoutBuffer`` to keep the agent's audio for after the hold.
        """
        if playout.sample_rate != self.codec.sample_rate:
            raise AudioFormatError(
                f"{self.codec.name} sends {self.codec.sample_rate} Hz audio, "
                f"the playout runs at {playout.sample_rate} Hz"
            )
        if playout.frame_samples != self.frame_samples:
            raise AudioFormatError(
                f"RTP sends {FRAME_MS} ms frames of {self.frame_samples} samples, "
                f"the playout's frames have {playout.frame_samples}"
            )
        if self._sending:
            raise RuntimeError("send_playout is already running for this session")
        self._sending = True
        step = self.codec.clock_rate * FRAME_MS // 1000
        frames = playout.frames()
        try:
            async for frame, speech in frames:
                if self.ended_reason is not None:
                    return
                self._send_frame(frame.samples, speech, step)
        finally:
            self._sending = False
            if isinstance(frames, AsyncGenerator):
                await frames.aclose()

    def _send_frame(self, pcm: PCM, speech: bool, step: int) -> None:
        transport, remote = self._transport, self.remote
        if transport is None or remote is None or not self.sending or transport.is_closing():
            self._ts = (self._ts + step) & 0xFFFFFFFF
            self._paused = True
            self._in_speech = False
            return
        payload = self.codec.encode(pcm)
        marker = self._paused or (speech and not self._in_speech)
        self._paused = False
        self._in_speech = speech
        packet = RtpPacket(
            payload_type=self.codec.payload_type,
            marker=int(marker),
            sequence_number=self._seq,
            timestamp=self._ts,
            ssrc=self.ssrc,
            payload=payload,
        )
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + step) & 0xFFFFFFFF
        backlog_bytes = MAX_SEND_BACKLOG_MS // FRAME_MS * (len(payload) + 12)
        if _backlog(transport) > backlog_bytes:
            self._counters.dropped_sends += 1
            return
        transport.sendto(packet.serialize(), remote)
        self._counters.packets_sent += 1
        self._counters.bytes_sent += len(payload)

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        """Close the socket, end the streams and reap the timer task (idempotent)."""
        if not self._closed:
            self._closed = True
            self._end(EndReason.CLOSED)
            if self._transport is not None:
                self._transport.close()
        task = self._timer
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # a cancelled close() still propagates its CancelledError

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed


def _backlog(transport: asyncio.DatagramTransport) -> int:
    """Bytes the transport holds unsent (asyncio's datagram transports all report it)."""
    size: Callable[[], int] | None = getattr(transport, "get_write_buffer_size", None)
    return size() if size is not None else 0
