"""RTP for the SIP tests: G.711/G.722 payloads and an asyncio listener that captures a
call's packets (``RtpCapture``).

G.711 is computed here from the ITU-T algorithm (Sun's reference ``g711.c``),
independently of the server's own tables, so the tests check the server against
a second implementation; G.722 is FFmpeg's codec through PyAV.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import av
import numpy as np
import numpy.typing as npt

from media.frames import PCM
from media.resample import resample

LOOPBACK = "127.0.0.1"

TELEPHONE_EVENT_PT = 101
"""Payload type of RFC 4733 telephone-events in our offers (the shipped pcaps use 101)."""

MAX_TIMELINE_S = 600
"""Longest RTP timeline ``RtpCapture.audio`` rebuilds (a wild timestamp is an error)."""

DTMF_EVENTS = "0123456789*#ABCD"
"""RFC 4733 event codes 0-15."""


# --- codecs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """An audio codec sipp can stream with ``rtp_stream``."""

    name: str
    payload_type: int
    sample_rate: int
    """Rate of the audio it carries."""
    clock_rate: int
    """RTP timestamp clock (8000 for G.722 too, RFC 3551)."""
    suffix: str

    @property
    def rtpmap(self) -> str:
        """The SDP ``a=rtpmap`` value."""
        return f"{self.payload_type} {self.name}/{self.clock_rate}"

    @property
    def bytes_per_20ms(self) -> int:
        """Payload bytes of one 20 ms packet (what sipp sends per packet)."""
        return 160


PCMU = Codec("PCMU", 0, 8000, 8000, ".ulaw")
PCMA = Codec("PCMA", 8, 8000, 8000, ".alaw")
G722 = Codec("G722", 9, 16000, 8000, ".g722")
CODECS: dict[int, Codec] = {c.payload_type: c for c in (PCMU, PCMA, G722)}


def _ulaw_encode_all() -> npt.NDArray[np.uint8]:
    """mu-law of every int16 value (ITU-T G.711 as Sun's reference ``linear2ulaw``, which
    FFmpeg follows: 14-bit magnitude, bias 33, clip 8159)."""
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 33
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    encoded: npt.NDArray[np.uint8] = ((uval ^ mask) & 0xFF).astype(np.uint8)
    return encoded


def _alaw_encode_all() -> npt.NDArray[np.uint8]:
    """A-law of every int16 value (ITU-T G.711 as Sun's reference ``linear2alaw``)."""
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), mag)
    low = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    aval = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | low)
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


def _ulaw_decode_all() -> PCM:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    sample = (((u & 0x0F) << 3) + 0x84) << exponent
    sample -= 0x84
    return np.where(u & 0x80, -sample, sample).astype(np.int16)


def _alaw_decode_all() -> PCM:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENC = _ulaw_encode_all()
_ALAW_ENC = _alaw_encode_all()
_ULAW_DEC = _ulaw_decode_all()
_ALAW_DEC = _alaw_decode_all()


def g711_encode(pcm: PCM, codec: Codec) -> bytes:
    """int16 samples (at 8 kHz) to PCMU or PCMA bytes."""
    table = {PCMU: _ULAW_ENC, PCMA: _ALAW_ENC}[codec]
    return bytes(table[pcm.astype(np.int32) + 32768].tobytes())


def g711_decode(data: bytes, codec: Codec) -> PCM:
    """PCMU or PCMA bytes to int16 samples (8 kHz)."""
    table = {PCMU: _ULAW_DEC, PCMA: _ALAW_DEC}[codec]
    decoded: PCM = table[np.frombuffer(data, np.uint8)]
    return decoded


def g722_encode(pcm: PCM) -> bytes:
    """int16 samples at 16 kHz to G.722 (64 kbit/s; FFmpeg's encoder through PyAV)."""
    enc: Any = av.CodecContext.create("g722", "w")
    enc.sample_rate = 16000
    enc.layout = "mono"
    enc.format = "s16"
    enc.open()
    out = bytearray()
    step = 320
    for i in range(0, len(pcm), step):
        chunk = pcm[i : i + step]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = i
        for packet in enc.encode(frame):
            out += bytes(packet)
    for packet in enc.encode(None):
        out += bytes(packet)
    return bytes(out)


class G722Decoder:
    """A stateful G.722 decoder (one per RTP stream), 16 kHz int16 out."""

    def __init__(self) -> None:
        self._dec: Any = av.CodecContext.create("g722", "r")
        self._dec.sample_rate = 16000
        self._dec.layout = "mono"

    def decode(self, payload: bytes) -> PCM:
        """The samples of one packet's payload."""
        frames = self._dec.decode(av.Packet(payload))
        if not frames:
            return np.zeros(0, np.int16)
        pcm: PCM = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)
        return pcm


def encode_audio(pcm: PCM, rate: int, codec: Codec) -> bytes:
    """``pcm`` at ``rate`` as the raw payload bytes of ``codec``, padded with silence to whole
    20 ms packets (sipp sends only whole packets and loops the file's remainder)."""
    pcm = resample(pcm, rate, codec.sample_rate) if rate != codec.sample_rate else pcm
    per_packet = codec.sample_rate // 50
    pad = -len(pcm) % per_packet
    pcm = np.concatenate([pcm, np.zeros(pad, np.int16)])
    data = g722_encode(pcm) if codec is G722 else g711_encode(pcm, codec)
    size = len(pcm) // per_packet * codec.bytes_per_20ms
    if len(data) != size:
        raise RuntimeError(f"{codec.name} encoder gave {len(data)} bytes, expected {size}")
    return data


def decode_audio(data: bytes, codec: Codec) -> PCM:
    """Raw payload bytes of ``codec`` back to int16 at ``codec.sample_rate``."""
    if codec is G722:
        return G722Decoder().decode(data)
    return g711_decode(data, codec)


# --- capturing RTP ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet as it arrived."""

    arrival: float
    """``time.monotonic()`` at reception."""
    source: tuple[str, int]
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One RFC 4733 telephone-event (all packets of one event timestamp)."""

    digit: str
    ssrc: int
    timestamp: int
    duration: int
    """Longest duration seen, in RTP clock ticks."""
    ended: bool
    """An end packet (E bit) arrived."""
    volume: int
    packets: int


def parse_rtp(data: bytes, arrival: float, source: tuple[str, int]) -> RtpPacket | None:
    """An RTP packet (RFC 3550), or None when ``data`` is not one."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    first, second, seq, timestamp, ssrc = struct.unpack("!BBHII", data[:12])
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        (words,) = struct.unpack("!H", data[offset + 2 : offset + 4])
        offset += 4 + 4 * words
    end = len(data)
    if first & 0x20:  # padding
        if end == 0 or data[-1] == 0 or data[-1] > end - offset:
            return None
        end -= data[-1]
    if offset > end:
        return None
    return RtpPacket(
        arrival, source, second & 0x7F, bool(second & 0x80), seq, timestamp, ssrc, data[offset:end]
    )


class RtpCapture(asyncio.DatagramProtocol):
    """An RTP listener on 127.0.0.1 that keeps every packet (the agent's side of a call).

    Advertise ``capture.port`` in the caller's SDP; ``packets`` holds what came,
    ``audio()`` decodes it (PCMU, PCMA, G.722) on the RTP timeline, ``dtmf()`` reads
    RFC 4733 events. ``async with RtpCapture() as capture:`` binds and closes it.
    """

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        *,
        codecs: Mapping[int, Codec] | None = None,
        event_payload_types: Iterable[int] = (TELEPHONE_EVENT_PT,),
    ) -> None:
        self.host = host
        self._want_port = port
        self.codecs = dict(codecs if codecs is not None else CODECS)
        self.event_payload_types = frozenset(event_payload_types)
        self.packets: list[RtpPacket] = []
        self.invalid = 0
        """Datagrams that were not RTP."""
        self._transport: asyncio.DatagramTransport | None = None
        self._arrived = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._transport is None:
            raise RuntimeError("RtpCapture is not started")
        port: int = self._transport.get_extra_info("sockname")[1]
        return port

    async def start(self) -> RtpCapture:
        """Bind the socket."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self._want_port))
        return self

    def close(self) -> None:
        """Close the socket (packets stay readable)."""
        if self._transport is not None:
            self._transport.close()

    async def __aenter__(self) -> RtpCapture:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        packet = parse_rtp(data, time.monotonic(), (str(addr[0]), int(addr[1])))
        if packet is None:
            self.invalid += 1
            return
        self.packets.append(packet)
        self._arrived.set()

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send a datagram from the capture's port (e.g. RTP back to the server)."""
        if self._transport is None:
            raise RuntimeError("RtpCapture is not started")
        self._transport.sendto(data, addr)

    async def wait_for(
        self, count: int = 1, timeout_s: float = 10.0, *, payload_type: int | None = None
    ) -> list[RtpPacket]:
        """Wait until ``count`` packets (of ``payload_type``) have come; TimeoutError if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.select(payload_type)
            if len(got) >= count:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(got)} of {count} RTP packets within {timeout_s} s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def wait_quiet(self, quiet_s: float = 0.5, timeout_s: float = 30.0) -> None:
        """Wait until no packet has come for ``quiet_s`` (the stream ended)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.packets[-1].arrival if self.packets else 0.0
            if time.monotonic() - last >= quiet_s:
                return
            await asyncio.sleep(min(quiet_s / 4, 0.05))
        raise TimeoutError(f"RTP still flowing after {timeout_s} s")

    def select(self, payload_type: int | None = None, ssrc: int | None = None) -> list[RtpPacket]:
        """Packets in arrival order, optionally of one payload type and/or SSRC."""
        return [
            p
            for p in self.packets
            if (payload_type is None or p.payload_type == payload_type)
            and (ssrc is None or p.ssrc == ssrc)
        ]

    def audio_packets(self) -> list[RtpPacket]:
        """Packets of the audio codecs (not telephone-events), in arrival order."""
        return [p for p in self.packets if p.payload_type in self.codecs]

    def sources(self) -> set[tuple[str, int]]:
        """Addresses packets came from."""
        return {p.source for p in self.packets}

    def arrival_gaps_ms(self, payload_type: int | None = None) -> npt.NDArray[np.float64]:
        """Milliseconds between consecutive arrivals (audio packets by default)."""
        pkts = self.select(payload_type) if payload_type is not None else self.audio_packets()
        times = np.array([p.arrival for p in pkts], np.float64)
        gaps: npt.NDArray[np.float64] = np.diff(times) * 1000.0
        return gaps

    def audio(self, rate: int = 16000) -> PCM:
        """The received audio as int16 at ``rate``, placed on the RTP timeline: each SSRC's
        packets in sequence order (wrap-around aware), missing packets and gaps between
        talkspurts as silence; successive SSRCs one after the other."""
        pieces: list[PCM] = []
        for ssrc in dict.fromkeys(p.ssrc for p in self.audio_packets()):
            pieces.append(self._stream_audio(ssrc, rate))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)

    def _stream_audio(self, ssrc: int, rate: int) -> PCM:
        pkts = [p for p in self.audio_packets() if p.ssrc == ssrc]
        ordered = sorted(_extend_seq(pkts), key=lambda item: item[0])
        codec = self.codecs[ordered[0][1].payload_type]
        base_ts = ordered[0][1].timestamp
        g722 = G722Decoder()
        placed: list[tuple[int, PCM]] = []
        seen: set[int] = set()
        for ext_seq, p in ordered:
            if ext_seq in seen:
                continue  # a duplicate
            seen.add(ext_seq)
            c = self.codecs[p.payload_type]
            pcm = g722.decode(p.payload) if c is G722 else g711_decode(p.payload, c)
            if c.sample_rate != codec.sample_rate:
                pcm = resample(pcm, c.sample_rate, codec.sample_rate)
            ticks = ((p.timestamp - base_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            placed.append((ticks * codec.sample_rate // codec.clock_rate, pcm))
        first = min(at for at, _ in placed)
        end = max(at + len(pcm) for at, pcm in placed) - first
        if end > codec.sample_rate * MAX_TIMELINE_S:
            raise ValueError(f"RTP timestamps of SSRC {ssrc:#x} span over {MAX_TIMELINE_S} s")
        out = np.zeros(end, np.int16)
        for at, pcm in placed:
            out[at - first : at - first + len(pcm)] = pcm
        return resample(out, codec.sample_rate, rate) if rate != codec.sample_rate else out

    def dtmf(self) -> list[DtmfEvent]:
        """RFC 4733 events received, in order (one per SSRC and event timestamp)."""
        events: dict[tuple[int, int], list[RtpPacket]] = {}
        for p in self.packets:
            if p.payload_type in self.event_payload_types and len(p.payload) >= 4:
                events.setdefault((p.ssrc, p.timestamp), []).append(p)
        out = []
        for (ssrc, ts), pkts in events.items():
            code = pkts[0].payload[0]
            out.append(
                DtmfEvent(
                    digit=DTMF_EVENTS[code] if code < len(DTMF_EVENTS) else f"<{code}>",
                    ssrc=ssrc,
                    timestamp=ts,
                    duration=max(struct.unpack("!H", p.payload[2:4])[0] for p in pkts),
                    ended=any(p.payload[1] & 0x80 for p in pkts),
                    volume=pkts[0].payload[1] & 0x3F,
                    packets=len(pkts),
                )
            )
        return out

    def digits(self) -> str:
        """The digits of the telephone-events received, in order."""
        return "".join(e.digit for e in self.dtmf())


def _extend_seq(pkts: Sequence[RtpPacket]) -> Iterator[tuple[int, RtpPacket]]:
    """(extended sequence number, packet): each 16-bit number unwrapped to the candidate
    nearest the highest seen so far (RFC 3550 A.1), so wrap-around and late packets sort."""
    highest: int | None = None
    for p in pkts:
        if highest is None:
            ext = highest = p.seq
        else:
            base = highest & ~0xFFFF
            candidates = (base - 0x10000 + p.seq, base + p.seq, base + 0x10000 + p.seq)
            ext = min(candidates, key=_distance_from(highest))
            highest = max(highest, ext)
        yield ext, p


def _distance_from(reference: int) -> Callable[[int], int]:
    return lambda value: abs(value - reference)


def rtp_packet(
    payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False
) -> bytes:
    """An RTP packet's bytes (no CSRC, no extension)."""
    return (
        struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | payload_type,
            seq & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc,
        )
        + payload
    )
