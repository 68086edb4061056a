"""The benchmark's phone: a SIP user agent client over UDP with RTP G.711/G.722 both ways.

The phone-call counterpart of ``bench.wire.client.WireCaller``: where that
one offers WebRTC over HTTP, ``SipPhone`` sends raw SIP text (RFC 3261) over
loopback UDP to the server's ``PARLEY_SIP_LISTEN`` port and speaks RTP
(RFC 3550) with the codecs of ``media.sip.codecs``:

- **signalling**: INVITE with an SDP offer of one codec (PCMU, PCMA or G.722)
  and ``telephone-event``, retransmitted as a UAC does (timer A) until a
  provisional response; the 180's and the 200's To tag; ACK for the 200 (and
  again for every retransmitted 200); BYE to hang up, retransmitted (timer E)
  until its final response; a BYE from the server (the agent hangs up) is
  answered 200 and recorded; OPTIONS and INFO get 200, anything else 501.
  Responses are parsed with ``sipmessage`` as the server does.
- **microphone**: a continuous 20 ms stream (a real phone without silence
  suppression), paced by ``media.pacer.Pacer`` like the WebRTC caller's
  track: silence until a clip is queued, the clip's frames at the codec's
  rate, the send time of every frame recorded (``media.caller.Clip``), so
  ``BenchClip.speech_start_at`` / ``speech_end_at`` say when the first and
  last speech samples went on the wire, exactly as for the WebRTC caller.
- **speakerphone echo** (optional, ``SipPhone.echo``): the agent's decoded
  audio is mixed back into the microphone ``gain_db`` quieter and
  ``delay_ms`` later, on top of any clip being spoken, as a caller on a
  speakerphone returns it. Like a phone's loudspeaker, the echo line plays
  the agent's stream on its own RTP timeline (sample ``i`` of the stream at
  ``first arrival + i / rate``) and the microphone hears it ``delay_ms``
  later, sample-exact on the microphone's 20 ms clock: a continuous copy at a
  constant delay, without the gaps and skips that re-timing packets by their
  arrival would put in it (an echo canceller would have to re-converge at
  each).
- **speaker**: every received packet of the negotiated payload type is
  decoded and recorded as the WebRTC caller records frames (arrival time,
  dBFS, digital silence), so the scenarios analyse it with the same
  ``AudioTrace``. Sequence gaps (lost), reordering and the largest gap between
  arrivals are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from aiortc.rtp import RtpPacket
from sipmessage import Message, Request, Response

from bench.wire.audio import AudioTrace
from bench.wire.client import BenchClip, CallError
from bench.wire.speech import Utterance
from media.caller import Clip
from media.frames import FRAME_MS, PCM, PIPELINE_RATE, rms_dbfs
from media.pacer import Pacer
from media.resample import resample
from media.sip.codecs import PT_G722, PT_PCMA, PT_PCMU, Codec, G711Codec, G722Codec
from media.sip.sdp import SessionDescription, parse_sdp

HOST: Final = "127.0.0.1"
PT_TELEPHONE_EVENT: Final = 101
T1: Final = 0.5
"""RFC 3261 round-trip estimate: first retransmission interval."""
T2: Final = 4.0
"""Longest retransmission interval of a non-INVITE request."""
CODECS: Final = {"PCMU": PT_PCMU, "PCMA": PT_PCMA, "G722": PT_G722}
"""Codecs the phone can offer, with their static payload types."""


def make_codec(name: str) -> Codec:
    """A fresh codec instance (G.722 is stateful: one per direction of a call)."""
    upper = name.upper()
    if upper == "G722":
        return G722Codec()
    if upper in ("PCMU", "PCMA"):
        return G711Codec(upper)
    raise ValueError(f"the phone speaks {', '.join(CODECS)}, not {name!r}")


@dataclass(frozen=True, slots=True)
class Echo:
    """A speakerphone: the agent's audio returned this much quieter and later."""

    gain_db: float = -15.0
    delay_ms: float = 80.0

    @property
    def gain(self) -> float:
        """Linear gain."""
        return float(10 ** (self.gain_db / 20))


@dataclass
class RtpCounters:
    """What the phone saw of the agent's RTP stream."""

    packets: int = 0
    lost: int = 0
    """Sequence numbers skipped (never arrived)."""
    reordered: int = 0
    other_payload: int = 0
    """Packets of another payload type (telephone-event, comfort noise)."""
    garbage: int = 0
    max_gap_ms: float = 0.0
    """Largest gap between two arrivals."""
    markers: int = 0
    sent: int = 0
    """Packets the phone sent."""


def _offer(rtp_port: int, codec: Codec, session_id: int) -> str:
    rate = 8000  # RTP clock rate of all three codecs (RFC 3551: G.722 too)
    pt = codec.payload_type
    return (
        f"v=0\r\no=- {session_id} 1 IN IP4 {HOST}\r\ns=parley-bench\r\n"
        f"c=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP {pt} {PT_TELEPHONE_EVENT}\r\n"
        f"a=rtpmap:{pt} {codec.name}/{rate}\r\n"
        f"a=rtpmap:{PT_TELEPHONE_EVENT} telephone-event/8000\r\n"
        f"a=fmtp:{PT_TELEPHONE_EVENT} 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, handler: Callable[[bytes], None]) -> None:
        self._handler = handler

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._handler(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable once the server closed its port: not the phone's problem


@dataclass
class _Pending:
    """A client transaction waiting for its responses."""

    responses: asyncio.Queue[Response] = field(default_factory=asyncio.Queue)


class SipPhone:
    """One phone call: SIP over UDP, RTP both ways, the agent's audio recorded.

    ``await dial()``, ``say()`` utterances, read ``trace()``, ``await hang_up()``.
    """

    def __init__(self, server: tuple[str, int], codec: str = "PCMU", label: str = "phone") -> None:
        self.server = server
        self.label = label
        self.codec = make_codec(codec)
        """Encoder of the microphone."""
        self._decoder = make_codec(codec)
        """Decoder of the agent's audio (G.722 keeps state per direction)."""
        self.rate = self.codec.sample_rate
        self.frame_samples = self.codec.samples_per_frame
        self.call_id = f"{secrets.token_hex(8)}@parley-bench"
        self._from_tag = secrets.token_hex(4)
        self._to_tag = ""
        self._cseq = 0
        self._target = f"sip:agent@{server[0]}:{server[1]}"
        self._pending: dict[tuple[int, str], _Pending] = {}
        self._invite_cseq = 0
        self._ack: bytes | None = None
        self._sip: asyncio.DatagramTransport | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self.sip_port = 0
        self.rtp_port = 0
        self.remote_rtp: tuple[str, int] | None = None
        self.answer: SessionDescription | None = None
        self.setup_s: float | None = None
        """INVITE sent -> 200 OK received."""
        self.established = False
        self.ended_by: str | None = None
        """'caller' (our BYE), 'agent' (the server's BYE), or None while the call is up."""
        self.bye_code: int | None = None
        self.echo: Echo | None = None
        """Return the agent's audio into the microphone (a speakerphone) while set."""
        self.rtp_counters = RtpCounters()
        self.frame_times: list[float] = []
        """Arrival monotonic time of every packet of the agent's audio."""
        self.frame_dbfs: list[float] = []
        self.frame_silent: list[bool] = []
        self._last_seq: int | None = None
        self._clips: deque[Clip] = deque()
        self._offset = 0
        self._echo_line = _EchoLine(self.rate, self.frame_samples)
        self._sender: asyncio.Task[None] | None = None
        self._seq = secrets.randbelow(1 << 16)
        self._ts = secrets.randbelow(1 << 32)
        self._ssrc = secrets.randbits(32)

    # ------------------------------------------------------------ signalling

    async def dial(self, within_s: float = 15.0) -> float:
        """INVITE, wait for the 200 OK, ACK, start the microphone; returns INVITE -> 200 s."""
        loop = asyncio.get_running_loop()
        self._sip, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_sip), local_addr=(HOST, 0), remote_addr=self.server
        )
        self.sip_port = self._sip.get_extra_info("sockname")[1]
        self._rtp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_rtp), local_addr=(HOST, 0)
        )
        self.rtp_port = self._rtp.get_extra_info("sockname")[1]
        offer = _offer(self.rtp_port, self.codec, secrets.randbelow(1 << 31))
        self._cseq += 1
        self._invite_cseq = self._cseq
        branch = _branch()
        t0 = time.monotonic()
        final = await self._transact("INVITE", self._cseq, branch, offer, within_s)
        if final.code >= 300:
            self._send(self._request("ACK", self._invite_cseq, branch))  # same transaction
            raise CallError(f"INVITE refused: {final.code} {final.phrase}")
        self.setup_s = time.monotonic() - t0
        self._to_tag = _tag(final) or self._to_tag
        with contextlib.suppress(ValueError, IndexError):
            self._target = str(final.contact[0].uri)
        self._ack = self._request("ACK", self._invite_cseq, _branch())
        self._send(self._ack)
        try:
            answer = parse_sdp(final.body)
        except ValueError as exc:
            await self.hang_up()
            raise CallError(f"unusable SDP answer: {exc}") from exc
        fmt = answer.format(self.codec.payload_type)
        if fmt is None or fmt.encoding.upper() != self.codec.name:
            await self.hang_up()
            raise CallError(f"answer without {self.codec.name}: {answer.formats}")
        self.answer = answer
        self.remote_rtp = (answer.connection_address, answer.port)
        self.established = True
        self._sender = asyncio.create_task(self._send_loop())
        return self.setup_s

    async def hang_up(self, within_s: float = 8.0) -> None:
        """BYE (unless the agent hung up first), then stop the microphone and close."""
        try:
            if self.established and self.ended_by is None:
                self.ended_by = "caller"
                self._cseq += 1
                with contextlib.suppress(CallError):
                    final = await self._transact("BYE", self._cseq, _branch(), "", within_s)
                    self.bye_code = final.code
        finally:
            self.established = False
            if self._sender is not None:
                self._sender.cancel()
                await asyncio.gather(self._sender, return_exceptions=True)
                self._sender = None
            for transport in (self._rtp, self._sip):
                if transport is not None:
                    transport.close()

    def _request(self, method: str, cseq: int, branch: str, body: str = "") -> bytes:
        to = f"<sip:agent@{self.server[0]}:{self.server[1]}>"
        if self._to_tag:
            to += f";tag={self._to_tag}"
        me = f"sip:{self.label}@{HOST}:{self.sip_port}"
        lines = [
            f"{method} {self._target} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{self.sip_port};branch={branch};rport",
            f'From: "{self.label}" <{me}>;tag={self._from_tag}',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <{me}>",
            "Max-Forwards: 70",
            "User-Agent: parley-bench-phone",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def _send(self, data: bytes) -> None:
        if self._sip is not None and not self._sip.is_closing():
            self._sip.sendto(data)

    async def _transact(
        self, method: str, cseq: int, branch: str, body: str, within_s: float
    ) -> Response:
        """Send a request, retransmit it (timers A/E), return its final response."""
        pending = self._pending[(cseq, method)] = _Pending()
        data = self._request(method, cseq, branch, body)
        deadline = time.monotonic() + within_s
        interval = T1
        retransmit = True
        try:
            self._send(data)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise CallError(f"{method}: no final response within {within_s:.0f} s")
                wait = min(interval, deadline - now) if retransmit else deadline - now
                try:
                    response = await asyncio.wait_for(pending.responses.get(), wait)
                except TimeoutError:
                    if retransmit:
                        self._send(data)
                        interval = min(interval * 2, T2)
                    continue
                if response.code >= 200:
                    return response
                if method == "INVITE":
                    retransmit = False  # a provisional response ends timer A
                    self._to_tag = _tag(response) or self._to_tag
                else:
                    interval = T2
        finally:
            self._pending.pop((cseq, method), None)

    def _on_sip(self, data: bytes) -> None:
        try:
            message = Message.parse(data)
            cseq = message.cseq
        except (ValueError, UnicodeDecodeError, KeyError):
            return
        if isinstance(message, Response):
            pending = self._pending.get((cseq.sequence, cseq.method))
            if pending is not None:
                pending.responses.put_nowait(message)
            elif (
                cseq.method == "INVITE"
                and cseq.sequence == self._invite_cseq
                and message.code == 200
                and self._ack is not None
            ):
                self._send(self._ack)  # our ACK was lost: the 200 is retransmitted
            return
        assert isinstance(message, Request)
        if message.method == "ACK":
            return
        if message.method == "BYE":
            self._reply(message, 200, "OK")
            if self.ended_by is None:
                self.ended_by = "agent"
        elif message.method in ("OPTIONS", "INFO", "NOTIFY"):
            self._reply(message, 200, "OK")
        else:
            self._reply(message, 501, "Not Implemented")

    def _reply(self, request: Request, code: int, phrase: str) -> None:
        headers = "".join(
            f"{name}: {value}\r\n"
            for name in ("Via", "From", "To", "Call-ID", "CSeq")
            for value in request.headers.getlist(name)
        )
        self._send(f"SIP/2.0 {code} {phrase}\r\n{headers}Content-Length: 0\r\n\r\n".encode())

    # ------------------------------------------------------------ media

    def say(self, utterance: Utterance) -> BenchClip:
        """Queue an utterance (16 kHz) on the microphone; it starts after earlier clips."""
        pcm = resample(utterance.pcm, PIPELINE_RATE, self.rate)
        clip = Clip(pcm, self.rate, self.frame_samples)
        self._clips.append(clip)
        return BenchClip(utterance, clip)

    async def _send_loop(self) -> None:
        pacer = Pacer(FRAME_MS / 1000)
        period = FRAME_MS / 1000
        first = True
        tick = 0
        start = 0.0
        resyncs = 0
        while True:
            await pacer.wait()
            if first or pacer.resyncs != resyncs:  # the clock of the microphone's frames
                start = time.monotonic() - tick * period
                resyncs = pacer.resyncs
            mixed = np.zeros(self.frame_samples, np.int32)
            clip: Clip | None = None
            if self._clips:
                clip = self._clips[0]
                chunk = clip.pcm[self._offset : self._offset + self.frame_samples]
                mixed[: chunk.size] += chunk
                self._offset += self.frame_samples
            if self.echo is not None:
                mixed += self._echo_line.read(start + tick * period, self.echo)
            pcm: PCM = np.clip(mixed, -32768, 32767).astype(np.int16)
            self._send_rtp(self.codec.encode(pcm), first)
            first = False
            tick += 1
            if clip is not None:
                clip.frame_times.append(time.monotonic())
                if self._offset >= clip.pcm.size:
                    self._clips.popleft()
                    self._offset = 0
                    clip.done.set()

    def _send_rtp(self, payload: bytes, marker: bool) -> None:
        if self._rtp is None or self.remote_rtp is None or self._rtp.is_closing():
            return
        packet = RtpPacket(
            payload_type=self.codec.payload_type,
            marker=int(marker),
            sequence_number=self._seq,
            timestamp=self._ts,
            ssrc=self._ssrc,
            payload=payload,
        )
        self._rtp.sendto(packet.serialize(), self.remote_rtp)
        self.rtp_counters.sent += 1
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + 8000 * FRAME_MS // 1000) & 0xFFFFFFFF

    def _on_rtp(self, data: bytes) -> None:
        now = time.monotonic()
        c = self.rtp_counters
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            c.garbage += 1
            return
        if packet.payload_type != self.codec.payload_type:
            c.other_payload += 1
            return
        c.packets += 1
        c.markers += int(bool(packet.marker))
        if self._last_seq is not None:
            step = (packet.sequence_number - self._last_seq) & 0xFFFF
            if step == 0 or step > 0x8000:
                c.reordered += 1
                return  # late or duplicate: a phone's jitter buffer would drop it too
            c.lost += step - 1
        self._last_seq = packet.sequence_number
        if self.frame_times:
            c.max_gap_ms = max(c.max_gap_ms, (now - self.frame_times[-1]) * 1000)
        pcm = self._decoder.decode(packet.payload)
        self.frame_times.append(now)
        self.frame_dbfs.append(rms_dbfs(pcm))
        self.frame_silent.append(not bool(np.any(pcm)))
        if self.echo is not None:
            self._echo_line.put(packet.timestamp, pcm, now)

    # ------------------------------------------------------------ analysis

    async def wait_until(self, predicate: Callable[[], bool], within_s: float) -> bool:
        """Poll ``predicate`` every 20 ms; False if it is still false after ``within_s``."""
        deadline = time.monotonic() + within_s
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def trace(self) -> AudioTrace:
        """The agent's received audio so far."""
        return AudioTrace.of(self.frame_times, self.frame_dbfs, self.frame_silent)

    def last_loud(self, threshold_dbfs: float) -> float | None:
        """Arrival time of the latest received frame louder than the threshold."""
        for t, db in zip(reversed(self.frame_times), reversed(self.frame_dbfs), strict=True):
            if db > threshold_dbfs:
                return t
        return None

    def loud_since(self, since: float, threshold_dbfs: float) -> float | None:
        """Arrival time of the first frame after ``since`` louder than the threshold."""
        times, dbfs = self.frame_times, self.frame_dbfs
        i = len(times)
        while i > 0 and times[i - 1] >= since:
            i -= 1
        for j in range(i, len(times)):
            if dbfs[j] > threshold_dbfs:
                return times[j]
        return None


class _EchoLine:
    """The agent's stream laid out on its RTP timeline, read back at a constant delay.

    Sample ``i`` of the stream (counted from the first packet's timestamp)
    plays at ``t0 + i / rate``, ``t0`` being the first packet's arrival; the
    microphone frame that ends at time ``t`` hears the samples played
    ``delay`` before it. A sample that has not arrived by then reads as
    silence (a loudspeaker's underrun).
    """

    def __init__(self, rate: int, frame_samples: int) -> None:
        self.rate = rate
        self.n = frame_samples
        self._ts0: int | None = None
        self._t0 = 0.0
        self._frames: dict[int, PCM] = {}
        """Frame number on the stream's timeline -> decoded audio."""

    def put(self, timestamp: int, pcm: PCM, arrival: float) -> None:
        """Keep one received frame (its RTP timestamp places it)."""
        if self._ts0 is None:
            self._ts0, self._t0 = timestamp, arrival
        step = (timestamp - self._ts0) & 0xFFFFFFFF
        if step >= 1 << 31:
            return  # from before the first packet
        self._frames[step * self.rate // 8000 // self.n] = pcm

    def read(self, frame_end: float, echo: Echo) -> npt.NDArray[np.int32]:
        """The echo in the microphone frame that ends at ``frame_end`` (monotonic)."""
        out = np.zeros(self.n, np.int32)
        if self._ts0 is None:
            return out
        end = round((frame_end - self._t0 - echo.delay_ms / 1000) * self.rate)
        pos = end - self.n
        if end <= 0:
            return out
        for f in range(max(pos, 0) // self.n, (end - 1) // self.n + 1):
            pcm = self._frames.get(f)
            if pcm is None:
                continue
            lo, hi = max(pos, f * self.n), min(end, f * self.n + pcm.size)
            if hi > lo:
                out[lo - pos : hi - pos] = pcm[lo - f * self.n : hi - f * self.n]
        for old in [f for f in self._frames if f < pos // self.n - 4]:
            del self._frames[old]
        return np.round(out * echo.gain).astype(np.int32)


def _branch() -> str:
    return f"z9hG4bK{secrets.token_hex(8)}"


def _tag(response: Response) -> str:
    with contextlib.suppress(ValueError, KeyError):
        tag = response.to_address.parameters.get("tag")
        return str(tag) if tag else ""
    return ""
