"""Hypothesis fuzzers of what a phone line feeds the SIP server: messages, streams, SDP, RTP.

Each parser raises only its typed error on any input: ``parse_message``
``MalformedMessageError``, the TCP ``StreamFramer`` ``FramingError``, the SIP
SDP reader ``SdpNegotiationError``, aiortc's RTP parser ``ValueError`` or
``struct.error`` (what ``RtpSession`` counts as garbage) and the RFC 4733
reader ``DtmfFormatError``. A live ``RtpSession`` takes random datagrams on
its socket without a single exception reaching the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc.rtp import RtpPacket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.sip.codecs import G711Codec, G722Codec
from media.sip.dtmf import DtmfDetector, DtmfFormatError, parse_event
from media.sip.messages import (
    KEEPALIVE,
    FramingError,
    MalformedMessageError,
    SipRequest,
    SipResponse,
    StreamFramer,
    parse_message,
)
from media.sip.rtp import MAX_DATAGRAM, RtpSession
from media.sip.sdp import SdpNegotiationError, negotiate, parse_sdp

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)


def sip(start: str, cseq: str, body: str = "", extra: str = "") -> bytes:
    """A well-formed SIP message."""
    head = (
        f"{start}\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n"
        "Max-Forwards: 70\r\n"
        "To: Bob <sip:bob@127.0.0.1>\r\n"
        "From: Alice <sip:alice@127.0.0.1>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710@pc33\r\n"
        f"CSeq: {cseq}\r\n"
        "Contact: <sip:alice@127.0.0.1:5070>\r\n"
        f"{extra}"
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body.encode())}\r\n\r\n" + body).encode()


MESSAGES = [
    sip("INVITE sip:bob@127.0.0.1 SIP/2.0", "314159 INVITE", SDP),
    sip("BYE sip:bob@127.0.0.1 SIP/2.0", "314160 BYE"),
    sip("OPTIONS sip:bob@127.0.0.1 SIP/2.0", "1 OPTIONS", extra="Accept: application/sdp\r\n"),
    sip("INFO sip:bob@127.0.0.1 SIP/2.0", "2 INFO", extra="Content-Type: application/dtmf\r\n"),
    sip("SIP/2.0 200 OK", "314159 INVITE", SDP),
    sip("SIP/2.0 487 Request Terminated", "314159 INVITE"),
]
TOKENS = [
    b":", b";", b",", b"<", b">", b'"', b"=", b" ", b"\r\n", b"\r\n\r\n", b"\n", b"@", b"%",
    b"sip:", b"sips:", b"tel:", b"http:", b"tag=", b"branch=", b"z9hG4bK", b"rport", b"received=",
    b"maddr=", b"[", b"]", b"[::1]", b"99999999999999999999", b"-1", b"0", b"\xff", b"\x00",
    b"\xc3\xa9", b"Content-Length: 99999\r\n", b"Content-Length: x\r\n", b"Via: \r\n",
    b"CSeq: 1 BYE\r\n", b"Call-ID: \r\n", b"l: 5\r\n", b"i: x\r\n", b"v: SIP/2.0/TCP h\r\n",
]  # fmt: skip
"""Byte strings the parser branches on, spliced in by the mutations."""


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], tokens: list[bytes]) -> bytes:
    """One of ``seeds`` with a few byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "splice", "delete", "truncate"]))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "splice":
            data[pos:pos] = draw(st.sampled_from(tokens) | st.binary(max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


sip_inputs = st.one_of(mutated(MESSAGES, TOKENS), st.binary(max_size=400))


@settings(max_examples=400, deadline=None)
@given(sip_inputs)
def test_sip_parser_raises_only_its_typed_error(data: bytes) -> None:
    try:
        message = parse_message(data)
    except MalformedMessageError as exc:
        reason = exc.reason
    else:
        assert isinstance(message, SipRequest | SipResponse)
        assert message.call_id
        return
    assert reason


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from([*MESSAGES, b"\r\n\r\n", b"\r\n"]) | sip_inputs, max_size=5),
    st.lists(st.integers(1, 200), min_size=1, max_size=8),
)
def test_stream_framer_raises_only_framing_errors(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    framer = StreamFramer(max_bytes=2048)
    items: list[Any] = []
    try:
        offset = 0
        for size in itertools.cycle(cuts):
            if offset >= len(stream):
                break
            items += framer.feed(stream[offset : offset + size])
            offset += size
            assert framer.buffered <= framer.max_bytes + size
    except FramingError as exc:
        reason = exc.reason
    else:
        for item in items:
            assert item is KEEPALIVE or isinstance(item, bytes)
            if isinstance(item, bytes):
                with contextlib.suppress(MalformedMessageError):
                    parse_message(item, stream=True)
        return
    assert reason


@settings(max_examples=300, deadline=None)
@given(st.one_of(mutated([SDP.encode()], [b" ", b"/", b":", b"=", b"\r\n", b"0", b"abc"])))
def test_sip_sdp_raises_only_negotiation_errors(data: bytes) -> None:
    try:
        negotiated = negotiate(parse_sdp(data))
    except SdpNegotiationError as exc:
        reason = str(exc)
    else:
        assert negotiated.remote_port >= 0
        return
    assert reason


# ------------------------------------------------------------------------- RTP


@st.composite
def rtp_datagrams(draw: st.DrawFn) -> bytes:
    """An RTP-looking datagram: a header with random flags, CSRCs, extension and padding."""
    version = draw(st.sampled_from([2, 2, 2, 0, 1, 3]))
    padding, extension = draw(st.booleans()), draw(st.booleans())
    csrc_count = draw(st.integers(0, 15))
    pt = draw(st.sampled_from([0, 9, 101, 13, 8, 96]) | st.integers(0, 127))
    first = version << 6 | padding << 5 | extension << 4 | csrc_count
    second = draw(st.booleans()) << 7 | pt
    seq, ts = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFFFFFF))
    ssrc = draw(st.sampled_from([1, 2, 0xFFFFFFFF]))
    data = struct.pack("!BBHII", first, second, seq, ts, ssrc)
    data += draw(st.binary(min_size=0, max_size=csrc_count * 4 + 4))
    if extension:
        words = draw(st.integers(0, 4))
        data += struct.pack("!HH", draw(st.sampled_from([0xBEDE, 0x1000, 0])), words)
        data += draw(st.binary(max_size=words * 4 + 2))
    data += draw(st.binary(max_size=200))
    if padding:
        data += bytes([draw(st.integers(0, 255))])
    return data


datagrams = st.one_of(
    rtp_datagrams(),
    st.binary(max_size=80),
    st.builds(lambda t, b: bytes([0x80, t]) + b, st.integers(200, 206), st.binary(max_size=40)),
    st.just(b"\x80" * (MAX_DATAGRAM + 1)),
)


@settings(max_examples=500, deadline=None)
@given(datagrams)
def test_rtp_parser_raises_only_what_the_session_counts_as_garbage(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except (ValueError, struct.error):
        return
    assert 0 <= packet.payload_type < 128


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=8), st.integers(0, 3)), max_size=12))
def test_dtmf_reader_and_detector(packets: list[tuple[bytes, int]]) -> None:
    detector = DtmfDetector(8000)
    for payload, timestamp in packets:
        try:
            event = parse_event(payload)
        except DtmfFormatError:
            assert len(payload) < 4
        else:
            assert 0 <= event.volume <= 63
        for digit in detector.feed(payload, timestamp):
            assert digit.digit in "0123456789*#ABCD"
    detector.flush()


def expected_garbage(data: bytes) -> bool:
    """Whether ``RtpSession`` counts ``data`` as garbage (see its inbound policy)."""
    if len(data) > MAX_DATAGRAM:
        return True
    if len(data) >= 2 and data[0] >> 6 == 2 and data[1] in range(200, 207):
        return False  # RTCP
    try:
        RtpPacket.parse(data)
    except (ValueError, struct.error):
        return True
    return False


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler while a test runs."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(datagrams, min_size=1, max_size=12), st.sampled_from(["PCMU", "G722"]))
async def test_an_rtp_session_survives_random_datagrams(
    loop_errors: list[dict[str, Any]], batch: list[bytes], codec_name: str
) -> None:
    codec = G711Codec("PCMU") if codec_name == "PCMU" else G722Codec()
    session = await RtpSession.open("127.0.0.1", (30_000, 39_999), codec, dtmf_pt=101)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # sends empty datagrams too
    try:
        marker = b"\x00" * (MAX_DATAGRAM + 1)  # garbage, sent last: all before it were read
        for data in [*batch, marker]:
            sender.sendto(data, ("127.0.0.1", session.local_port))
        want = sum(expected_garbage(d) for d in batch) + 1
        for _ in range(1000):  # hang guard: 5 s
            if session.stats.garbage >= want:
                break
            await asyncio.sleep(0.005)
        assert session.stats.garbage == want
        assert session.ended_reason is None
    finally:
        sender.close()
        await session.close()
    assert loop_errors == []
