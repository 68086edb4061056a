"""SIP media: G.711/G.722 codecs, SDP offer/answer, jitter buffer, RFC 4733 DTMF, RTP sessions.

The RTP tests run real ``RtpSession``s on 127.0.0.1 against each other or
against a raw UDP peer; timing is checked through RTP sequence numbers and
timestamps, never the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import cast

import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from media.errors import AudioFormatError
from media.frames import PCM, AudioFrame, float_to_int16, rms_dbfs
from media.playout import PlayoutBuffer
from media.sip.codecs import (
    G711Codec,
    G722Codec,
    alaw_decode,
    alaw_encode,
    codec_for,
    ulaw_decode,
    ulaw_encode,
)
from media.sip.dtmf import DtmfDetector, DtmfDigit, parse_event
from media.sip.jitter import Arrival, JitterBuffer
from media.sip.rtp import EndReason, RtpPortUnavailableError, RtpSession
from media.sip.sdp import (
    SdpNegotiationError,
    build_answer,
    mirror,
    negotiate,
    parse_sdp,
)

PORTS = (30_000, 39_999)
"""RTP ports the tests bind in (random even ports of the range)."""
GUARD_S = 10.0
"""Hang guard around awaits in RTP tests (not a speed assertion)."""


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> PCM:
    t = np.arange(int(seconds * rate)) / rate
    return float_to_int16(amp * np.sin(2 * np.pi * freq * t))


# ====================================================================== codecs


def test_g711_known_vectors() -> None:
    linear = np.array([0, 1, -1, 8, -8, 100, -100, 1000, -1000, 32767, -32768], np.int16)
    assert list(ulaw_encode(linear)) == [
        0xFF, 0xFF, 0x7E, 0xFE, 0x7E, 0xF2, 0x72, 0xCE, 0x4E, 0x80, 0x00,
    ]  # fmt: skip
    assert list(alaw_encode(linear)) == [
        0xD5, 0xD5, 0x55, 0xD5, 0x55, 0xD3, 0x53, 0xFA, 0x7A, 0xAA, 0x2A,
    ]  # fmt: skip
    assert ulaw_decode(bytes([0x00, 0x7F, 0x80, 0xFF, 0x70, 0xF0])).tolist() == [
        -32124, 0, 32124, 0, -120, 120,
    ]  # fmt: skip
    assert alaw_decode(bytes([0x55, 0xD5, 0x2A, 0xAA, 0x80, 0x7F])).tolist() == [
        -8, 8, -32256, 32256, 5504, -848,
    ]  # fmt: skip


def test_g711_matches_the_reference_for_every_sample() -> None:
    """All 65 536 inputs and 256 codes against CPython's audioop (the CCITT reference code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    everything = np.arange(-32768, 32768, dtype=np.int16)
    assert ulaw_encode(everything) == audioop.lin2ulaw(everything.tobytes(), 2)
    assert alaw_encode(everything) == audioop.lin2alaw(everything.tobytes(), 2)
    codes = bytes(range(256))
    assert ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_g711_round_trip_error_bounds(law: str) -> None:
    codec = G711Codec(law)
    everything = np.arange(-32768, 32768, dtype=np.int16)
    back = codec.decode(codec.encode(everything)).astype(np.int64)
    x = everything.astype(np.int64)
    # 4-bit mantissa: half a quantisation step is at most 1/32 of the value (1/16 with clipping)
    assert np.all(np.abs(back - x) <= np.maximum(16, np.abs(x) // 16))
    # decoding is a fixed point of encoding: every code's value encodes to itself
    codes = bytes(range(256))
    values = codec.decode(codes)
    assert codec.decode(codec.encode(values)).tolist() == values.tolist()
    # a speech-level tone keeps G.711's ~38 dB signal-to-quantisation ratio
    pcm = tone(440, 0.5, 8000, 0.3)
    err = codec.decode(codec.encode(pcm)).astype(np.float64) - pcm
    snr = 10 * np.log10(np.sum(pcm.astype(np.float64) ** 2) / np.sum(err**2))
    assert snr > 33
    assert codec.sample_rate == codec.clock_rate == 8000 and codec.samples_per_frame == 160
    assert len(codec.encode(pcm[:160])) == 160


def test_g722_tone_round_trip() -> None:
    encoder, decoder = G722Codec(), G722Codec()
    pcm = tone(1000, 1.0, 16_000, 0.3)
    payloads = [encoder.encode(pcm[i : i + 320]) for i in range(0, pcm.size, 320)]
    assert {len(p) for p in payloads} == {160}  # 64 kbit/s: 20 ms = 160 bytes
    out = np.concatenate([decoder.decode(p) for p in payloads]).astype(np.float64)
    assert out.size == pcm.size
    ref = pcm.astype(np.float64)
    window = ref[1600:-64]

    def snr(lag: int) -> float:  # the codec's filters delay the signal by a few samples
        shifted = out[1600 + lag : out.size - 64 + lag]
        return float(10 * np.log10(np.sum(window**2) / np.sum((window - shifted) ** 2)))

    best = max(snr(lag) for lag in range(64))
    assert best > 30
    assert encoder.sample_rate == 16_000 and encoder.clock_rate == 8000
    assert encoder.samples_per_frame == 320


def test_codec_input_errors() -> None:
    with pytest.raises(AudioFormatError, match="320"):
        G722Codec().encode(np.zeros(100, np.int16))
    with pytest.raises(AudioFormatError, match="int16"):
        G711Codec("PCMU").encode(np.zeros(160, np.float32))
    with pytest.raises(ValueError, match="PCMU or PCMA"):
        G711Codec("G729")


def test_codec_for_negotiated() -> None:
    g722 = codec_for(negotiate(offer("9 0 101")))
    assert isinstance(g722, G722Codec) and g722.payload_type == 9
    pcma = codec_for(negotiate(offer("8")))
    assert isinstance(pcma, G711Codec) and pcma.name == "PCMA" and pcma.payload_type == 8


# ========================================================================= SDP


def offer(
    pts: str = "9 0 8 101",
    *,
    extra: str = "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n",
    connection: str = "c=IN IP4 127.0.0.1\r\n",
    session_attrs: str = "",
    port: int = 6000,
) -> str:
    return (
        "v=0\r\n"
        "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        f"{connection}"
        "t=0 0\r\n"
        f"{session_attrs}"
        f"m=audio {port} RTP/AVP {pts}\r\n"
        f"{extra}"
    )


def test_negotiate_prefers_g722_with_telephone_event() -> None:
    extra = (
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:9 G722/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    result = negotiate(offer("0 9 101", extra=extra))
    assert (result.codec, result.payload_type) == ("G722", 9)
    assert (result.sample_rate, result.clock_rate) == (16_000, 8000)
    assert (result.telephone_event_pt, result.telephone_event_rate) == (101, 8000)
    assert result.dtmf_payload_type == 101
    assert (result.remote_address, result.remote_port) == ("127.0.0.1", 6000)
    assert result.direction == "sendrecv" and not result.on_hold
    assert result.remote_ptime == 20
    # the preference can be changed; the offer's own payload type is kept
    pcmu = negotiate(offer("0 9 101", extra=extra), prefer=("PCMU",))
    assert (pcmu.codec, pcmu.payload_type, pcmu.sample_rate) == ("PCMU", 0, 8000)


def test_negotiate_pcma_only_with_static_payload_type() -> None:
    result = negotiate(offer("8", extra=""))  # no rtpmap: RFC 3551 static type
    assert (result.codec, result.payload_type, result.sample_rate) == ("PCMA", 8, 8000)
    assert result.telephone_event_pt is None


def test_negotiate_dynamic_telephone_event_and_sipp_style_offer() -> None:
    sipp = offer("0", extra="a=rtpmap:0 PCMU/8000\r\n", port=6000)
    assert negotiate(sipp).codec == "PCMU"
    dyn = negotiate(offer("8 96", extra="a=rtpmap:96 TELEPHONE-EVENT/8000\r\n"))
    assert dyn.telephone_event_pt == 96
    wideband_only_events = negotiate(offer("0 97", extra="a=rtpmap:97 telephone-event/48000\r\n"))
    assert wideband_only_events.telephone_event_pt is None


def test_negotiate_nothing_in_common() -> None:
    with pytest.raises(SdpNegotiationError, match="no common audio codec") as err:
        negotiate(offer("18 3 101", extra="a=rtpmap:18 G729/8000\r\n"))
    assert "G729/8000" in str(err.value)
    with pytest.raises(SdpNegotiationError, match="no common"):
        negotiate(offer("96", extra="a=rtpmap:96 opus/48000/2\r\n"))
    with pytest.raises(SdpNegotiationError, match="no common"):
        negotiate(offer("97", extra=""))  # dynamic type without rtpmap
    with pytest.raises(SdpNegotiationError, match="RTP/AVP"):
        negotiate(offer().replace("RTP/AVP", "RTP/SAVP"))
    with pytest.raises(SdpNegotiationError, match="active m=audio"):
        negotiate(offer(port=0))
    with pytest.raises(ValueError, match="unsupported"):
        negotiate(offer(), prefer=("opus",))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "v=0"),
        ("hello", "v=0"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        ("v=0\r\nthis is not sdp\r\n", "x=value"),
        ("v=0\r\nm=audio 6000 RTP/AVP 0\r\nc=IN IP4 127.0.0.1\r\n", "o="),
        (offer(connection=""), "c="),
        (offer(connection="c=IN IP4 pbx.example.com\r\n"), "IP literal"),
        (offer(connection="c=IN IP4 224.2.1.1\r\n"), "multicast"),
        (offer().replace("m=audio 6000", "m=audio 70000"), "port"),
        (offer().replace("m=audio 6000", "m=audio six"), "port"),
        (offer("0 300"), "payload type"),
        (offer(extra="a=rtpmap:101 telephone-event\r\n"), "rtpmap"),
        (offer(extra="a=ptime:abc\r\n"), "ptime"),
        (offer().replace("o=user1 53655765", "o=user1"), "o="),
        ("v=0\r\n" + "a=x\r\n" * 5000, "larger"),
    ],
)
def test_malformed_sdp_is_a_typed_error(text: str | bytes, reason: str) -> None:
    with pytest.raises(SdpNegotiationError, match=reason):
        negotiate(text)


def test_garbage_sdp_never_crashes() -> None:
    rng = random.Random(4733)
    valid = offer().encode()
    for _ in range(500):
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        candidates = [bytes(data), valid[: rng.randrange(len(valid))], rng.randbytes(64)]
        for candidate in candidates:
            with contextlib.suppress(SdpNegotiationError):
                negotiate(candidate)


@pytest.mark.parametrize(
    ("attrs", "connection", "direction", "answer"),
    [
        ("a=sendonly\r\n", "127.0.0.1", "sendonly", "recvonly"),
        ("a=recvonly\r\n", "127.0.0.1", "recvonly", "sendonly"),
        ("a=inactive\r\n", "127.0.0.1", "inactive", "inactive"),
        ("", "127.0.0.1", "sendrecv", "sendrecv"),
        ("", "0.0.0.0", "sendonly", "recvonly"),  # RFC 2543 hold
        ("a=recvonly\r\n", "0.0.0.0", "inactive", "inactive"),
    ],
)
def test_hold_directions(attrs: str, connection: str, direction: str, answer: str) -> None:
    text = offer(connection=f"c=IN IP4 {connection}\r\n", extra=attrs)
    result = negotiate(text)
    assert result.direction == direction
    assert result.answer_direction == answer == mirror(result.direction)
    assert result.on_hold == (direction in ("sendonly", "inactive"))
    parsed = parse_sdp(text)
    assert parsed.hold_address == (connection == "0.0.0.0")


def test_direction_and_connection_levels() -> None:
    session_level = offer(session_attrs="a=sendonly\r\n", extra="")
    assert parse_sdp(session_level).direction == "sendonly"
    media_wins = offer(session_attrs="a=sendonly\r\n", extra="a=sendrecv\r\n")
    assert parse_sdp(media_wins).direction == "sendrecv"
    media_conn = offer(extra="c=IN IP4 127.0.0.2\r\n")
    assert parse_sdp(media_conn).connection_address == "127.0.0.2"
    only_media_conn = offer(connection="", extra="c=IN IP6 ::1\r\n")
    assert negotiate(only_media_conn).remote_address == "::1"
    # a video stream before the audio one (and its odd formats) does not matter
    video_first = offer().replace(
        "m=audio", "m=video 6002 RTP/AVP 96\r\na=rtpmap:96 H264/90000/x/y\r\nm=audio"
    )
    assert negotiate(video_first).remote_port == 6000


def test_answer_content() -> None:
    result = negotiate(offer("0 9 8 101"))
    text = build_answer(result, address="127.0.0.1", port=10_000, session_id=42, version=1)
    lines = text.split("\r\n")
    assert text.endswith("\r\n") and lines[0] == "v=0"
    assert "o=parley 42 1 IN IP4 127.0.0.1" in lines
    assert "c=IN IP4 127.0.0.1" in lines
    assert "m=audio 10000 RTP/AVP 9 101" in lines  # only the chosen offered types
    assert "a=rtpmap:9 G722/8000" in lines
    assert "a=rtpmap:101 telephone-event/8000" in lines
    assert "a=ptime:20" in lines and "a=sendrecv" in lines
    assert not any(
        line.startswith("a=rtpmap:0 ") or line.startswith("a=rtpmap:8 ") for line in lines
    )
    # the answer is itself valid SDP that negotiates to the same thing
    back = negotiate(text)
    assert (back.codec, back.payload_type, back.telephone_event_pt) == ("G722", 9, 101)
    assert (back.remote_address, back.remote_port, back.remote_ptime) == ("127.0.0.1", 10_000, 20)


def test_answer_to_a_hold_reinvite() -> None:
    hold = negotiate(offer("8", extra="a=sendonly\r\n"))
    text = build_answer(
        hold, address="::1", port=10_002, session_id=42, version=2, direction=mirror(hold.direction)
    )
    assert "a=recvonly" in text.split("\r\n")
    assert "o=parley 42 2 IN IP6 ::1" in text and "c=IN IP6 ::1" in text
    assert "m=audio 10002 RTP/AVP 8\r\n" in text and "telephone-event" not in text
    with pytest.raises(ValueError, match="cannot answer"):
        build_answer(hold, address="127.0.0.1", port=10_002, session_id=1, version=3,
                     direction="sendrecv")  # fmt: skip
    with pytest.raises(ValueError, match="IP literal"):
        build_answer(hold, address="pbx.example.com", port=10_002, session_id=1, version=3)


# ===================================================================== jitter


def frame_of(value: int, samples: int = 160) -> bytes:
    return np.full(samples, value, np.int16).tobytes()


def identity(payload: bytes) -> PCM:
    out: PCM = np.frombuffer(payload, np.int16).copy()
    return out


def drain(buffer: JitterBuffer) -> list[PCM]:
    out = []
    while (pcm := buffer.pop()) is not None:
        out.append(pcm)
    return out


def firsts(frames: list[PCM]) -> list[int]:
    return [int(f[0]) for f in frames]


def test_jitter_in_order_releases_at_once() -> None:
    buffer = JitterBuffer(identity, 8000)
    for seq in range(5):
        assert buffer.put(seq, frame_of(seq + 1)) is Arrival.ACCEPTED
        assert firsts(drain(buffer)) == [seq + 1]
    assert not buffer.holding and buffer.stats.received == 5 and buffer.stats.lost == 0


def test_jitter_reorders() -> None:
    buffer = JitterBuffer(identity, 8000)
    out: list[int] = []
    for seq in (0, 2, 1, 4, 3, 5):
        buffer.put(seq, frame_of(seq + 1))
        out += firsts(drain(buffer))
    assert out == [1, 2, 3, 4, 5, 6]
    assert buffer.stats.lost == buffer.stats.late == buffer.stats.concealed == 0


def test_jitter_drops_duplicates_and_late_packets() -> None:
    buffer = JitterBuffer(identity, 8000)  # 60 ms target: a gap waits for 3 later packets
    buffer.put(0, frame_of(1))
    assert buffer.put(0, frame_of(1)) is Arrival.DUPLICATE  # already released
    buffer.put(2, frame_of(3))
    assert buffer.put(2, frame_of(3)) is Arrival.DUPLICATE  # held behind the gap
    buffer.put(3, frame_of(4))
    assert buffer.holding and buffer.buffered_ms == 40
    buffer.put(4, frame_of(5))  # 60 ms past the gap: packet 1 is given up
    assert not buffer.holding
    assert buffer.put(1, frame_of(2)) is Arrival.LATE
    out = drain(buffer)
    assert len(out) == 5 and firsts(out)[0] == 1 and firsts(out)[2:] == [3, 4, 5]
    stats = buffer.snapshot()
    assert (stats.duplicate, stats.late, stats.lost, stats.concealed) == (2, 1, 1, 1)


def test_jitter_conceals_loss_by_repeat_then_fade() -> None:
    buffer = JitterBuffer(identity, 8000, target_ms=0, max_ms=200)
    buffer.put(0, frame_of(1000))
    buffer.put(6, frame_of(7))  # five packets lost
    out = drain(buffer)
    assert len(out) == 7 and firsts(out)[-1] == 7
    concealed = out[1:6]
    # first lost frame repeats the last one, fading: starts at full level, ends lower
    assert concealed[0][0] == 1000 and concealed[0][-1] < 700
    assert np.all(np.diff(np.concatenate(concealed[:3]).astype(np.int32)) <= 0)
    assert concealed[2][-1] < 20
    assert not concealed[3].any() and not concealed[4].any()  # silence after 60 ms
    assert buffer.stats.lost == 5 and buffer.stats.concealed == 5


def test_jitter_long_outage_is_a_discontinuity() -> None:
    buffer = JitterBuffer(identity, 8000, target_ms=60, max_ms=200)
    buffer.put(0, frame_of(1))
    buffer.put(1001, frame_of(2))  # 1000 packets (20 s) lost
    out = drain(buffer)
    assert len(out) == 1 + 10  # at most max_ms (200 ms) of invented audio
    assert buffer.holding  # 999 and 1000 may still come: the newest is not 60 ms past them
    buffer.put(1002, frame_of(3))
    buffer.put(1003, frame_of(4))
    assert firsts(drain(buffer)) == [2, 3, 4]
    assert buffer.stats.lost == 1000 and buffer.stats.concealed == 10


def test_jitter_expire_is_driven_by_the_owner() -> None:
    buffer = JitterBuffer(identity, 8000)
    buffer.put(0, frame_of(1))
    buffer.put(2, frame_of(3))
    assert firsts(drain(buffer)) == [1] and buffer.holding
    buffer.expire()  # the owner's clock says the gap waited long enough
    assert firsts(drain(buffer))[-1] == 3 and not buffer.holding
    assert buffer.stats.lost == 1


def test_jitter_sequence_wraparound() -> None:
    buffer = JitterBuffer(identity, 8000)
    out: list[int] = []
    for seq, value in ((65533, 1), (65535, 3), (65534, 2), (1, 5), (0, 4), (2, 6)):
        buffer.put(seq, frame_of(value))
        out += firsts(drain(buffer))
    assert out == [1, 2, 3, 4, 5, 6]
    assert buffer.stats.lost == buffer.stats.late == 0


def test_jitter_skipped_sequence_numbers_are_not_loss() -> None:
    buffer = JitterBuffer(identity, 8000)
    buffer.put(0, frame_of(1))
    buffer.skip(1)  # a telephone-event packet
    buffer.skip(2)
    buffer.put(3, frame_of(4))
    assert firsts(drain(buffer)) == [1, 4]
    assert buffer.stats.lost == 0 and buffer.stats.skipped == 2


def test_jitter_follows_a_restarted_sender_but_not_a_stray_packet() -> None:
    buffer = JitterBuffer(identity, 8000)
    buffer.put(100, frame_of(1))
    assert buffer.put(40_000, frame_of(9)) is Arrival.PROBE  # stray: dropped
    buffer.put(101, frame_of(2))
    assert buffer.put(20_000, frame_of(3)) is Arrival.PROBE
    assert buffer.put(20_001, frame_of(4)) is Arrival.RESYNC  # confirmed: a new sequence
    buffer.put(20_002, frame_of(5))
    assert firsts(drain(buffer)) == [1, 2, 3, 4, 5]
    assert buffer.stats.resyncs == 1 and buffer.stats.lost == 0 and buffer.stats.late == 1


def test_jitter_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="target_ms"):
        JitterBuffer(identity, 8000, target_ms=300, max_ms=200)
    with pytest.raises(ValueError, match="16-bit"):
        JitterBuffer(identity, 8000).put(70_000, b"")


# ======================================================================= DTMF


def event(code: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


def press(
    detector: DtmfDetector, code: int, timestamp: int, *, updates: int = 3, ends: int = 3
) -> list[DtmfDigit]:
    out: list[DtmfDigit] = []
    for i in range(1, updates + 1):
        out += detector.feed(event(code, 160 * i), timestamp)
    for _ in range(ends):
        out += detector.feed(event(code, 160 * (updates + 1), end=True), timestamp)
    return out


def test_parse_telephone_event() -> None:
    parsed = parse_event(event(11, 800, end=True, volume=7))
    assert (parsed.event, parsed.end, parsed.volume, parsed.duration) == (11, True, 7, 800)


def test_dtmf_reported_once_on_end_despite_retransmitted_ends() -> None:
    detector = DtmfDetector()
    digits = press(detector, 5, 8000, updates=3, ends=3)
    assert digits == [DtmfDigit("5", 80, 8000, True)]  # 4 x 160 units at 8 kHz
    assert detector.feed(event(5, 640, end=True), 8000) == []  # a late retransmission
    assert not detector.pending


def test_dtmf_every_digit_and_the_end_packet_only() -> None:
    detector = DtmfDetector()
    got = []
    for code in range(16):
        got += press(detector, code, 1000 * (code + 1), updates=0, ends=3)
    assert "".join(d.digit for d in got) == "0123456789*#ABCD"
    assert detector.feed(event(16, 160, end=True), 99_000) == []  # flash is not a digit


def test_dtmf_without_end_packets() -> None:
    detector = DtmfDetector()
    assert press(detector, 1, 1000, updates=4, ends=0) == []
    assert detector.pending
    got = press(detector, 2, 5000, updates=2, ends=0)  # a new event ends the previous one
    assert got == [DtmfDigit("1", 80, 1000, False)]
    assert detector.flush() == [DtmfDigit("2", 40, 5000, False)]  # the owner's idle timer
    assert detector.flush() == []


def test_dtmf_lost_start_and_malformed_packets() -> None:
    detector = DtmfDetector()
    assert detector.feed(b"\x01\x02", 0) == [] and detector.malformed == 1
    got = detector.feed(event(9, 960, end=True), 4000)  # only the end survived
    assert got == [DtmfDigit("9", 120, 4000, True)]
    # the same digit pressed again is a new event (new timestamp)
    assert press(detector, 9, 9000) == [DtmfDigit("9", 80, 9000, True)]


# ======================================================================== RTP


class Peer(asyncio.DatagramProtocol):
    """A raw UDP endpoint standing in for a phone."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.received.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    def send_rtp(self, port: int, pt: int, seq: int, ts: int, payload: bytes, *,
                 ssrc: int = 0x1234, marker: int = 0) -> None:  # fmt: skip
        packet = RtpPacket(pt, marker, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload)
        self.send(packet.serialize(), port)

    async def packets(self, count: int) -> list[RtpPacket]:
        async with asyncio.timeout(GUARD_S):
            return [RtpPacket.parse(await self.received.get()) for _ in range(count)]

    def drain(self) -> list[RtpPacket]:
        out = []
        while not self.received.empty():
            out.append(RtpPacket.parse(self.received.get_nowait()))
        return out


@contextlib.asynccontextmanager
async def phone() -> AsyncIterator[Peer]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    try:
        yield peer
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def rtp_session(
    codec: G711Codec | G722Codec,
    dtmf_pt: int | None = None,
    *,
    no_rtp_timeout_s: float = 30.0,
    silence_fill_ms: int = 200,
) -> AsyncIterator[RtpSession]:
    session = await RtpSession.open(
        "127.0.0.1",
        PORTS,
        codec,
        dtmf_pt,
        no_rtp_timeout_s=no_rtp_timeout_s,
        silence_fill_ms=silence_fill_ms,
    )
    try:
        yield session
    finally:
        await session.close()


async def take(frames: AsyncIterator[AudioFrame], count: int) -> list[AudioFrame]:
    async with asyncio.timeout(GUARD_S):
        return [await anext(frames) for _ in range(count)]


@contextlib.contextmanager
def playing(session: RtpSession, playout: PlayoutBuffer) -> Iterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(session.send_playout(playout))
    try:
        yield task
    finally:
        task.cancel()


async def speak(playout: PlayoutBuffer, pcm: PCM, utterance: str) -> None:
    segment = playout.open_segment(utterance, "text")
    await playout.push(segment, pcm)
    playout.close_segment(segment)
    playout.finish_utterance(utterance)


async def test_tone_in_decoded_frames_out() -> None:
    pcm = tone(440, 0.5, 8000)
    async with rtp_session(G711Codec("PCMU")) as rtp, phone() as peer:
        rtp.set_remote("127.0.0.1", peer.port)
        assert rtp.local_port % 2 == 0 and PORTS[0] <= rtp.local_port <= PORTS[1]
        for i in range(25):
            peer.send_rtp(rtp.local_port, 0, 65530 + i, 1000 + 160 * i,
                          ulaw_encode(pcm[160 * i : 160 * (i + 1)]))  # fmt: skip
        frames = await take(rtp.frames(), 25)
        assert {(f.sample_rate, f.channels, f.samples.size) for f in frames} == {(8000, 1, 160)}
        assert [f.timestamp for f in frames] == pytest.approx([0.02 * i for i in range(25)])
        decoded = np.concatenate([f.samples for f in frames])
        assert np.array_equal(decoded, ulaw_decode(ulaw_encode(pcm[:4000])))
        stats = rtp.stats
        assert stats.packets_received == 25 and stats.bytes_received == 25 * 160
        assert stats.lost == stats.garbage == stats.foreign_source == 0


async def test_g722_between_two_sessions() -> None:
    async with rtp_session(G722Codec()) as agent, rtp_session(G722Codec()) as caller:
        agent.set_remote("127.0.0.1", caller.local_port)
        caller.set_remote("127.0.0.1", agent.local_port)
        playout = PlayoutBuffer(16_000)
        await speak(playout, tone(1000, 0.4, 16_000, 0.3), "u1")
        with playing(agent, playout) as sender:
            frames = await take(caller.frames(), 30)
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        assert sender.cancelled()  # cancellation propagates out of send_playout
    assert {(f.sample_rate, f.samples.size) for f in frames} == {(16_000, 320)}
    loud = [f for f in frames if rms_dbfs(f.samples) > -20]
    assert len(loud) >= 15  # the tone came through G.722 at 16 kHz
    assert caller.stats.packets_received >= 30 and caller.stats.lost == 0


async def test_send_playout_pacing_and_marker_bits() -> None:
    async with rtp_session(G711Codec("PCMU")) as rtp, phone() as peer:
        rtp.set_remote("127.0.0.1", peer.port)
        playout = PlayoutBuffer(8000)
        with playing(rtp, playout):
            packets = await peer.packets(5)  # silence first
            await speak(playout, tone(500, 0.1, 8000), "u1")
            packets += await peer.packets(15)
            await speak(playout, tone(700, 0.1, 8000), "u2")
            packets += await peer.packets(20)
        assert all(p.ssrc == rtp.ssrc and p.payload_type == 0 for p in packets)
        assert all(len(p.payload) == 160 for p in packets)
        for a, b in itertools.pairwise(packets):
            assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
            assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF  # 20 ms at 8 kHz
        speech = [p.payload != b"\xff" * 160 for p in packets]
        starts = {0} | {i for i in range(1, len(packets)) if speech[i] and not speech[i - 1]}
        assert len(starts) == 3  # stream start + two talkspurts
        assert [i for i, p in enumerate(packets) if p.marker] == sorted(starts)
        assert rtp.stats.packets_sent >= 40


async def test_hold_pauses_sending_but_not_the_clock() -> None:
    async with rtp_session(G711Codec("PCMA")) as rtp, phone() as peer:
        rtp.set_remote("127.0.0.1", peer.port)
        playout = PlayoutBuffer(8000)
        with playing(rtp, playout):
            before = await peer.packets(3)
            rtp.set_direction("recvonly")  # the caller holds us: we must not send
            assert not rtp.sending
            await asyncio.sleep(0.05)
            before += peer.drain()
            sent = rtp.stats.packets_sent
            await asyncio.sleep(0.2)
            assert peer.drain() == [] and rtp.stats.packets_sent == sent
            rtp.set_direction("sendrecv")
            resumed = await peer.packets(2)
    last = before[-1]
    first = resumed[0]
    assert first.marker == 1 and resumed[1].marker == 0
    assert first.sequence_number == (last.sequence_number + 1) & 0xFFFF
    gap = (first.timestamp - last.timestamp) & 0xFFFFFFFF
    assert gap % 160 == 0 and gap >= 160 * 5  # timestamps advanced through the hold


async def test_rtp_hold_address_and_remote_validation() -> None:
    async with rtp_session(G711Codec("PCMU")) as rtp:
        rtp.set_remote("0.0.0.0", 6000)  # RFC 2543 hold
        assert rtp.remote is None and not rtp.sending
        with pytest.raises(ValueError, match="IP literal"):
            rtp.set_remote("pbx.example.com", 6000)
        with pytest.raises(ValueError, match="cannot send"):
            rtp.set_remote("::1", 6000)
        with pytest.raises(ValueError, match="direction"):
            rtp.set_direction("hold")  # type: ignore[arg-type]
        with pytest.raises(AudioFormatError, match="16000 Hz"):
            await rtp.send_playout(PlayoutBuffer(16_000))


async def test_no_rtp_timeout_ends_the_stream() -> None:
    async with rtp_session(G711Codec("PCMU"), no_rtp_timeout_s=0.2) as rtp:
        async with asyncio.timeout(GUARD_S):
            frames = [f async for f in rtp.frames()]
        assert frames == [] and rtp.ended_reason is EndReason.NO_RTP
        assert [d async for d in rtp.digits()] == []


async def test_no_rtp_timeout_is_suspended_on_hold() -> None:
    async with rtp_session(G711Codec("PCMU"), no_rtp_timeout_s=0.1) as rtp:
        rtp.set_direction("inactive")
        await asyncio.sleep(0.3)
        assert rtp.ended_reason is None
        rtp.set_direction("sendrecv")
        async with asyncio.timeout(GUARD_S):
            assert [f async for f in rtp.frames()] == []
        assert rtp.ended_reason is EndReason.NO_RTP


async def test_timers_follow_the_injected_clock() -> None:
    now = [1000.0]
    rtp = await RtpSession.open(
        "127.0.0.1",
        PORTS,
        G711Codec("PCMU"),
        clock=lambda: now[0],
        no_rtp_timeout_s=0.5,
        jitter_target_ms=60,
    )
    try:
        async with phone() as peer:
            frames = rtp.frames()
            value = ulaw_encode(np.full(160, 1000, np.int16))
            peer.send_rtp(rtp.local_port, 0, 10, 0, value)
            peer.send_rtp(rtp.local_port, 0, 12, 320, value)  # 11 is missing
            await take(frames, 1)
            await asyncio.sleep(0.3)  # wall time passes, the session's clock does not
            assert rtp.stats.lost == 0 and rtp.ended_reason is None
            now[0] += 0.07  # past the 60 ms gap wait
            got = await take(frames, 2)  # the concealed packet, then packet 12
            assert rtp.stats.lost == 1 and rtp.stats.concealed == 1
            assert got[0].samples[0] == got[1].samples[0]  # a repeat of the last frame
            now[0] += 1.0  # past the no-RTP timeout
            async with asyncio.timeout(GUARD_S):
                async for _ in frames:
                    pass
            assert rtp.ended_reason is EndReason.NO_RTP
    finally:
        await rtp.close()


async def test_garbage_datagrams_are_counted_and_ignored() -> None:
    rng = random.Random(3550)
    garbage = [b"\x80", b"hello, world", b"\x40" + bytes(20), b"\x80" * 11, b"\x80" * 2000]
    garbage += [bytes([rng.choice([0x00, 0x40, 0xC0])]) + rng.randbytes(40) for _ in range(20)]
    rtcp_rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1234)
    async with rtp_session(G711Codec("PCMU")) as rtp, phone() as peer:
        for data in garbage:
            peer.send(data, rtp.local_port)
        peer.send(rtcp_rr, rtp.local_port)
        peer.send_rtp(rtp.local_port, 0, 7, 0, b"\x00" * 160)
        frames = await take(rtp.frames(), 1)
        assert frames[0].samples.tolist() == [-32124] * 160
        stats = rtp.stats
        assert stats.garbage == len(garbage) and stats.rtcp == 1
        assert stats.packets_received == 1 and rtp.ended_reason is None


async def test_payload_types_ssrc_changes_and_foreign_sources() -> None:
    async with rtp_session(G711Codec("PCMU")) as rtp, phone() as peer, phone() as elsewhere:
        rtp.set_remote("127.0.0.1", elsewhere.port)  # the SDP named another address
        frames = rtp.frames()
        value = ulaw_encode(np.full(160, 1000, np.int16))
        peer.send_rtp(rtp.local_port, 0, 1, 0, value)
        peer.send_rtp(rtp.local_port, 18, 2, 160, b"\x00" * 20)  # G.729: not ours
        peer.send_rtp(rtp.local_port, 0, 3, 320, value)
        peer.send_rtp(rtp.local_port, 0, 999, 0, value, ssrc=0xBEEF)  # a stray packet
        peer.send_rtp(rtp.local_port, 0, 4, 480, value)
        got = await take(frames, 3)
        assert rtp.remote_ssrc == 0x1234
        # a re-anchored stream: two packets of a new SSRC with a new sequence
        peer.send_rtp(rtp.local_port, 0, 5000, 0, value, ssrc=0xBEEF)
        peer.send_rtp(rtp.local_port, 0, 5001, 160, value, ssrc=0xBEEF)
        got += await take(frames, 2)
        assert rtp.remote_ssrc == 0xBEEF
        assert all(int(f.samples[0]) > 900 for f in got)  # no concealment: nothing was lost
        stats = rtp.stats
        assert (stats.wrong_payload_type, stats.ssrc_changes, stats.lost) == (1, 1, 0)
        assert stats.foreign_source == 7  # every packet came from elsewhere
        assert stats.packets_received == 6  # the stray packet is not part of the stream
        assert elsewhere.drain() == []  # we never sent to the packets' source


async def test_dtmf_over_rtp_without_marker_bits() -> None:
    async with rtp_session(G711Codec("PCMU"), dtmf_pt=101) as rtp, phone() as peer:
        silence = ulaw_encode(np.zeros(160, np.int16))
        for seq in range(3):
            peer.send_rtp(rtp.local_port, 0, seq, 160 * seq, silence)
        # the trunk omits the marker bit and repeats the end packet three times
        for i, seq in enumerate(range(3, 9)):
            end = i >= 3
            peer.send_rtp(rtp.local_port, 101, seq, 480, event(7, 160 * min(i + 1, 4), end=end))
        for seq in range(9, 12):
            peer.send_rtp(rtp.local_port, 0, seq, 160 * (seq - 6), silence)
        await take(rtp.frames(), 6)
        assert rtp.stats.lost == 0  # the events' sequence numbers are not audio loss
        await rtp.close()
        assert [d async for d in rtp.digits()] == [DtmfDigit("7", 80, 480, True)]
        assert rtp.stats.digits == 1


async def test_silence_fill_while_the_caller_sends_nothing() -> None:
    async with rtp_session(G711Codec("PCMU"), silence_fill_ms=60) as rtp, phone() as peer:
        loud = ulaw_encode(np.full(160, 8000, np.int16))
        for seq in range(3):
            peer.send_rtp(rtp.local_port, 0, seq, 160 * seq, loud)
        frames = await take(rtp.frames(), 10)
        assert all(f.samples.any() for f in frames[:3])
        assert not any(f.samples.any() for f in frames[3:])
        assert rtp.stats.filled >= 7
        assert [f.timestamp for f in frames] == pytest.approx([0.02 * i for i in range(10)])


async def test_even_port_binding_retries_and_exhaustion() -> None:
    held: list[socket.socket] = []
    try:
        base = 0
        for candidate in range(40_000, 48_000, 4):  # find two free even ports p, p + 2
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            base = candidate
            break
        assert base
        # the range holds base (taken) and base + 2: the session skips the busy one
        session = await RtpSession.open("127.0.0.1", (base, base + 3), G711Codec("PCMU"))
        try:
            assert session.local_port == base + 2
            with pytest.raises(OSError, match="no free even RTP port") as err:
                await RtpSession.open("127.0.0.1", (base, base + 3), G711Codec("PCMU"))
            assert isinstance(err.value, RtpPortUnavailableError)  # an OSError: 503 upstream
        finally:
            await session.close()
        with pytest.raises(ValueError, match="even RTP port"):
            await RtpSession.open("127.0.0.1", (base + 1, base + 1), G711Codec("PCMU"))
    finally:
        for sock in held:
            sock.close()


async def first_frame(rtp: RtpSession) -> AudioFrame | None:
    async for frame in rtp.frames():
        return frame
    return None


async def test_close_ends_everything_and_leaves_no_task() -> None:
    rtp = await RtpSession.open("127.0.0.1", PORTS, G711Codec("PCMU"))
    rtp.set_remote("127.0.0.1", 9)  # discard port: nobody listens, sends still go out
    loop = asyncio.get_running_loop()
    reader = loop.create_task(first_frame(rtp))
    sender = loop.create_task(rtp.send_playout(PlayoutBuffer(8000)))
    await asyncio.sleep(0.1)
    await rtp.close()
    await rtp.close()  # idempotent
    async with asyncio.timeout(GUARD_S):
        assert await reader is None
        await sender  # send_playout returns when the session closes
    assert rtp.ended_reason is EndReason.CLOSED and rtp.closed
    mine = [t for t in asyncio.all_tasks() if t.get_name().startswith("rtp-timers")]
    assert mine == []
    # the port is free again
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", rtp.local_port))
    finally:
        sock.close()
