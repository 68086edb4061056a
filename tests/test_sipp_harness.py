"""The sipp harness proven against sipp itself: a sipp caller (the scenarios the SIP tests
use) calls a sipp callee (tests/sipp/uas_*.xml) over loopback, and both RTP paths are
captured in Python: the caller's stream reaches the port the callee's answer names, the
callee's reaches the port the caller's offer names (the ``RtpCapture`` the SIP tests read
the agent from).

Without sipp the tests that run it are skipped (they fail under ``CI``); the codec,
RTP and template checks run everywhere.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from media.frames import PCM
from tests.rtp import G722Decoder, decode_audio, g711_decode, g711_encode, parse_rtp, rtp_packet
from tests.sipp import (
    G722,
    LOOPBACK,
    PCMA,
    PCMU,
    AnswerInfo,
    AnswerReinvite,
    Codec,
    DtmfInfo,
    DtmfPcap,
    Party,
    Pause,
    Reinvite,
    RtpCapture,
    Scenario,
    SippResult,
    Stream,
    audio_seconds,
    call,
    callee,
    callee_cancelled,
    callee_options,
    callee_refusing,
    can_play_pcap,
    cancel,
    dtmf_pcap,
    options,
    parse_messages,
    rejected,
    render,
    run_sipp,
    sdp,
    sipp_or_skip,
    spoken_audio,
    start_sipp,
    write_audio,
)

QUESTION = "What time does the library open on Sunday?"


# --- without sipp: codecs, RTP, templates, traces ------------------------------------------


def _ffmpeg(codec_name: str, pcm: PCM) -> bytes:
    ctx: Any = av.CodecContext.create(codec_name, "w")
    ctx.sample_rate = 8000
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.open()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


@pytest.mark.parametrize(("codec", "ffmpeg_name"), [(PCMU, "pcm_mulaw"), (PCMA, "pcm_alaw")])
def test_g711_agrees_with_ffmpeg(codec: Codec, ffmpeg_name: str) -> None:
    # Decoding is defined exactly by G.711: the same 256 levels as FFmpeg's decoder.
    words = bytes(range(256))
    decoded = g711_decode(words, codec)
    reference: Any = av.CodecContext.create(ffmpeg_name, "r")
    reference.sample_rate = 8000
    reference.layout = "mono"
    frames = reference.decode(av.Packet(words))
    assert np.array_equal(np.concatenate([f.to_ndarray().reshape(-1) for f in frames]), decoded)
    # Encoding: every level encodes to its own code word (mu-law's two zeros to one) ...
    again = g711_encode(decoded, codec)
    assert all(a == w or decoded[a] == decoded[w] for a, w in zip(again, words, strict=True))
    # ... and any sample to one of the two levels around it (Sun's decision thresholds,
    # which differ from FFmpeg's midpoints only at the boundaries).
    every = np.arange(-32768, 32768, dtype=np.int16)
    mine = np.frombuffer(g711_encode(every, codec), np.uint8)
    levels = np.unique(decoded.astype(np.int32))
    above = levels[np.minimum(np.searchsorted(levels, every), len(levels) - 1)]
    below = levels[np.maximum(np.searchsorted(levels, every, side="right") - 1, 0)]
    got = decoded[mine].astype(np.int32)
    assert np.all((got == above) | (got == below))
    ffmpeg = np.frombuffer(_ffmpeg(ffmpeg_name, every), np.uint8)
    assert np.mean(mine == ffmpeg) > 0.98


@pytest.mark.parametrize("codec", [PCMU, PCMA, G722])
def test_audio_files_are_whole_packets_and_decode_back(codec: Codec, tmp_path: Path) -> None:
    t = np.arange(int(codec.sample_rate * 0.51)) / codec.sample_rate
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    path = write_audio(tmp_path, "tone", tone, codec.sample_rate, codec)
    assert path.name == f"tone{codec.suffix}"
    assert path.stat().st_size == 26 * 160  # 510 ms padded to 26 packets of 20 ms
    assert audio_seconds(path, codec) == pytest.approx(0.52)
    back = decode_audio(path.read_bytes(), codec)
    assert len(back) == 26 * codec.sample_rate // 50
    spectrum = np.abs(np.fft.rfft(back[: len(t)].astype(np.float64)))
    assert np.argmax(spectrum) * codec.sample_rate / len(t) == pytest.approx(440, abs=5)
    with pytest.raises(ValueError, match="unsafe"):
        write_audio(tmp_path, "a,b", tone, codec.sample_rate, codec)


def test_rtp_parsing_handles_csrc_extension_and_padding() -> None:
    plain = rtp_packet(0, 65535, 1234, 0xABC, b"\x01\x02", marker=True)
    p = parse_rtp(plain, 1.0, (LOOPBACK, 9))
    assert p is not None and (p.payload_type, p.marker, p.seq, p.timestamp, p.ssrc) == (
        0,
        True,
        65535,
        1234,
        0xABC,
    )
    assert p.payload == b"\x01\x02"
    # 1 CSRC, a one-word extension and 3 bytes of padding around a 2-byte payload.
    fancy = (
        struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 1, 8, 7, 160, 5)
        + b"CSRC"
        + struct.pack("!HH", 0xBEDE, 1)
        + b"EXT!"
        + b"\xaa\xbb"
        + b"\x00\x00\x03"
    )
    p = parse_rtp(fancy, 1.0, (LOOPBACK, 9))
    assert p is not None and p.payload == b"\xaa\xbb" and p.payload_type == 8
    for junk in (b"", b"\x00" * 12, b"\x80\x00", plain[:11], fancy[:-3] + b"\x00\x00\x09"):
        assert parse_rtp(junk, 1.0, (LOOPBACK, 9)) is None


async def test_capture_rebuilds_the_timeline_across_wrap_reorder_and_loss() -> None:
    async with RtpCapture() as capture:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        sender = sock.getsockname()
        try:
            level = [1000 * (i + 1) for i in range(6)]
            packets = [
                rtp_packet(
                    0,
                    (65533 + i) & 0xFFFF,
                    4_294_967_000 + 160 * i,
                    7,
                    g711_encode(np.full(160, level[i], np.int16), PCMU),
                )
                for i in range(6)
            ]
            # Arrival order: the wrap-around reordered, packet 3 lost, packet 1 duplicated.
            for i in (0, 2, 1, 1, 4, 5):
                sock.sendto(packets[i], (LOOPBACK, capture.port))
            sock.sendto(b"not rtp", (LOOPBACK, capture.port))
            await capture.wait_for(6)
            await asyncio.sleep(0.05)
        finally:
            sock.close()
    assert capture.invalid == 1
    audio = capture.audio(rate=8000)
    assert len(audio) == 6 * 160
    blocks = audio.reshape(6, 160)
    for i in range(6):
        expected = 0 if i == 3 else level[i]
        assert abs(int(np.median(blocks[i])) - expected) <= expected * 0.04, (i, blocks[i][:4])
    assert capture.sources() == {sender}


def _pcap_rtp(path: Path) -> list[bytes]:
    """The RTP payloads (with headers) of an Ethernet/IPv4/UDP pcap."""
    data = path.read_bytes()
    offset, out = 24, []
    while offset < len(data):
        incl = struct.unpack("<I", data[offset + 8 : offset + 12])[0]
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ihl = (frame[14] & 0x0F) * 4
        out.append(frame[14 + ihl + 8 :])
    return out


async def test_capture_reads_rfc4733_digits_from_sipps_pcaps() -> None:
    digits = "1#"
    async with RtpCapture() as capture:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for digit in digits:
                path = dtmf_pcap(digit)
                if not path.exists():
                    sipp_or_skip()
                    pytest.fail(f"sipp is installed but {path} is missing")
                for packet in _pcap_rtp(path):
                    sock.sendto(packet, (LOOPBACK, capture.port))
            await capture.wait_for(20)
        finally:
            sock.close()
    events = capture.dtmf()
    assert capture.digits() == digits
    assert all(e.ended and e.duration == 2240 and e.volume == 10 for e in events)
    assert [e.packets for e in events] == [10, 10]  # 7 updates, the end sent 3 times
    assert capture.audio().size == 0  # events are not audio
    with pytest.raises(ValueError, match="no DTMF pcap"):
        dtmf_pcap("A")


def test_templates_fill_strictly_and_drop_empty_lines(tmp_path: Path) -> None:
    party = Party(rtp_port=40000, codecs=(G722, PCMU))
    scenario = call(tmp_path, party, [Pause(1.5), Reinvite("sendonly"), DtmfInfo("7")])
    xml = scenario.path.read_text()
    assert "{{" not in xml
    assert "m=audio 40000 RTP/AVP 9 0 101" in xml
    assert "a=rtpmap:9 G722/8000" in xml and "a=rtpmap:101 telephone-event/8000" in xml
    assert '<pause milliseconds="1500"/>' in xml
    assert xml.count("a=sendonly") == 1 and "o=sipp 4242 2 IN IP4" in xml
    assert "Signal=7" in xml
    assert "[authentication]" not in xml  # the empty placeholder's line is gone
    headers = xml.split("INVITE sip:agent@", 1)[1].split("\n\n", 1)[0]
    assert "\n\n" not in headers and "Subject: call" in headers
    assert "[authentication]" in call(tmp_path, party, name="digest", digest=True).path.read_text()
    with pytest.raises(KeyError, match="missing"):
        render("uac_bye.xml", {"caller": "a", "caller_name": "b"})
    with pytest.raises(KeyError, match="unused"):
        render("uas_info.xml", {"extra": 1})
    with pytest.raises(ValueError, match="direction"):
        sdp(1, direction="sideways")
    with pytest.raises(ValueError, match="300-699"):
        rejected(tmp_path, party, (200,))


def test_message_log_parsing() -> None:
    log = (
        "----------------------------------------------- 2026-11-23 17:33:10.609589\n"
        "UDP message sent (100 bytes):\n\n"
        "INVITE sip:agent@127.0.0.1:5070 SIP/2.0\nVia: SIP/2.0/UDP x;branch=z9hG4bK-1\n"
        "CSeq: 1 INVITE\nContent-Length: 3\n\nv=0\n\n"
        "----------------------------------------------- 2026-11-23 17:33:10.609641\n"
        "TCP message received [311] bytes :\n\n"
        "SIP/2.0 486 Busy Here\nCSeq: 1 INVITE\ncontent-length: 0\n\n\n"
    )
    messages = parse_messages(log)
    assert [(m.direction, m.start_line) for m in messages] == [
        ("sent", "INVITE sip:agent@127.0.0.1:5070 SIP/2.0"),
        ("received", "SIP/2.0 486 Busy Here"),
    ]
    assert messages[0].method == "INVITE" and messages[0].status is None
    assert (
        messages[0].body == "v=0" and messages[0].header("via") == "SIP/2.0/UDP x;branch=z9hG4bK-1"
    )
    assert messages[1].status == 486 and messages[1].method == "INVITE"
    assert messages[1].header("Content-Length") == "0"


# --- with sipp: a sipp caller against a sipp callee ---------------------------------------


@dataclass
class Pair:
    caller: SippResult
    callee: SippResult
    caller_media_port: int
    callee_media_port: int


async def _call(
    caller_scenario: Scenario,
    callee_scenario: Scenario,
    *,
    transport: str = "udp",
    auth: tuple[str, str] | None = None,
    timeout_s: float = 20.0,
    callee_finishes: bool = True,
) -> Pair:
    """Run the callee, then the caller against it; both results once the call is over."""
    server = await start_sipp(callee_scenario, timeout_s=timeout_s, transport=transport)
    async with server:
        await server.wait_listening()
        client = await start_sipp(
            caller_scenario,
            (LOOPBACK, server.local_port),
            timeout_s=timeout_s,
            transport=transport,
            auth=auth,
        )
        async with client:
            caller = await client.wait()
        if not callee_finishes:
            await server.kill()
        result = await server.wait()
    return Pair(caller, result, client.media_port, server.media_port)


def _tone(seconds: float, hz: float, rate: int = 8000) -> PCM:
    t = np.arange(int(seconds * rate)) / rate
    return (6000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def _dominant_hz(pcm: PCM, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(pcm))


def _rms_db(pcm: PCM) -> float:
    return float(10 * np.log10(np.mean(pcm.astype(np.float64) ** 2) + 1e-9))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("codec", "offer"),
    [(PCMU, (PCMU, PCMA)), (PCMA, (PCMA, PCMU)), (G722, (G722, PCMU))],
    ids=["PCMU", "PCMA", "G722"],
)
async def test_call_streams_speech_both_ways(
    codec: Codec, offer: tuple[Codec, ...], tmp_path: Path
) -> None:
    sipp_or_skip()
    question = spoken_audio(tmp_path, QUESTION, codec, lead_s=0.2, tail_s=0.3)
    reply = write_audio(
        tmp_path, "reply", _tone(1.0, 440, codec.sample_rate), codec.sample_rate, codec
    )
    async with RtpCapture() as at_caller, RtpCapture() as at_callee:
        caller = call(
            tmp_path / "caller",
            Party(at_caller.port, offer),
            [Stream(question, codec), Pause(audio_seconds(question, codec) + 0.4)],
        )
        answerer = callee(
            tmp_path / "callee", Party(at_callee.port, (codec,)), [Stream(reply, codec)]
        )
        pair = await _call(caller, answerer)
    assert pair.caller.ok, pair.caller.describe()
    assert pair.callee.ok, pair.callee.describe()

    # The SIP exchange: the offer named the caller's capture port, the answer the callee's.
    assert [m.start_line.split()[0] for m in pair.caller.sent()] == ["INVITE", "ACK", "BYE"]
    assert pair.caller.statuses() == [100, 180, 200, 200]
    invite = pair.caller.sent("INVITE")[0]
    assert f"m=audio {at_caller.port} RTP/AVP" in invite.body
    assert f"sipp sends audio from port {pair.caller_media_port}" in invite.body
    assert (
        f"m=audio {at_callee.port} RTP/AVP {codec.payload_type}"
        in pair.caller.received(200)[0].body
    )
    assert invite.header("Call-ID") == pair.callee.received("INVITE")[0].header("Call-ID")

    # Caller -> callee: every byte of the question, paced at 20 ms, from sipp's media port.
    sent = question.read_bytes()
    got = at_callee.select(codec.payload_type)
    assert len(got) == len(sent) // 160 and len(at_callee.packets) == len(got)
    assert b"".join(p.payload for p in got) == sent
    assert {p.source for p in got} == {(LOOPBACK, pair.caller_media_port)}
    assert len({p.ssrc for p in got}) == 1
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(got))
    assert all(b.timestamp - a.timestamp == 160 for a, b in itertools.pairwise(got))
    gaps = at_callee.arrival_gaps_ms()
    assert 19.0 <= float(np.median(gaps)) <= 21.0, gaps
    heard = at_callee.audio(rate=codec.sample_rate)
    expected = G722Decoder().decode(sent) if codec is G722 else decode_audio(sent, codec)
    assert np.array_equal(heard, expected)
    assert _rms_db(heard) > 50  # speech, not silence

    # Callee -> caller: the callee's tone reached the port the offer advertised.
    back = at_caller.select(codec.payload_type)
    assert len(back) == 50, len(back)
    assert {p.source for p in back} == {(LOOPBACK, pair.callee_media_port)}
    tone = at_caller.audio(rate=codec.sample_rate)
    assert _dominant_hz(tone, codec.sample_rate) == pytest.approx(440, abs=5)


@pytest.mark.slow
async def test_call_over_tcp(tmp_path: Path) -> None:
    sipp_or_skip()
    tone = write_audio(tmp_path, "tone", _tone(0.4, 300), 8000, PCMU)
    async with RtpCapture() as at_caller, RtpCapture() as at_callee:
        pair = await _call(
            call(tmp_path / "caller", Party(at_caller.port), [Stream(tone), Pause(0.8)]),
            callee(tmp_path / "callee", Party(at_callee.port)),
            transport="tcp",
        )
    assert pair.caller.ok, pair.caller.describe()
    assert pair.callee.ok, pair.callee.describe()
    assert "SIP/2.0/TCP" in (pair.caller.sent("INVITE")[0].header("Via") or "")
    assert len(at_callee.select(0)) == 20


@pytest.mark.slow
async def test_dtmf_from_sipps_pcaps_reaches_the_answered_port(tmp_path: Path) -> None:
    sipp_or_skip()
    if not can_play_pcap():
        reason = "sipp's play_pcap_audio needs root or CAP_NET_RAW (a raw socket)"
        pytest.skip(reason)
    async with RtpCapture() as at_caller, RtpCapture() as at_callee:
        pair = await _call(
            call(tmp_path / "caller", Party(at_caller.port), [Pause(0.2), DtmfPcap("5*9")]),
            callee(tmp_path / "callee", Party(at_callee.port)),
        )
    assert pair.caller.ok, pair.caller.describe()
    assert at_callee.digits() == "5*9"
    events = at_callee.dtmf()
    assert all(e.ended for e in events)
    packets = at_callee.select(101)
    assert {p.source for p in packets} == {(LOOPBACK, pair.caller_media_port)}
    assert sum(p.marker for p in packets) == 3  # one marker per event


@pytest.mark.slow
async def test_dtmf_as_sip_info(tmp_path: Path) -> None:
    sipp_or_skip()
    async with RtpCapture() as at_caller, RtpCapture() as at_callee:
        pair = await _call(
            call(tmp_path / "caller", Party(at_caller.port), [DtmfInfo("42", duration_ms=250)]),
            callee(tmp_path / "callee", Party(at_callee.port), [AnswerInfo(), AnswerInfo()]),
        )
    assert pair.caller.ok, pair.caller.describe()
    assert pair.callee.ok, pair.callee.describe()
    infos = pair.callee.received("INFO")
    assert [m.header("Content-Type") for m in infos] == ["application/dtmf-relay"] * 2
    assert [re.findall(r"Signal=(\S+)", m.body) for m in infos] == [["4"], ["2"]]
    assert all("Duration=250" in m.body for m in infos)
    cseqs = [int((m.header("CSeq") or "0").split()[0]) for m in pair.caller.sent()]
    assert cseqs == [1, 1, 2, 3, 4]  # INVITE, ACK, INFO, INFO, BYE


@pytest.mark.slow
async def test_hold_and_unhold_reinvites(tmp_path: Path) -> None:
    sipp_or_skip()
    async with RtpCapture() as at_caller, RtpCapture() as at_callee:
        pair = await _call(
            call(
                tmp_path / "caller",
                Party(at_caller.port),
                [Pause(0.2), Reinvite("sendonly"), Pause(0.3), Reinvite("sendrecv")],
            ),
            callee(
                tmp_path / "callee",
                Party(at_callee.port),
                [AnswerReinvite("recvonly"), AnswerReinvite("sendrecv")],
            ),
        )
    assert pair.caller.ok, pair.caller.describe()
    assert pair.callee.ok, pair.callee.describe()
    invites = pair.callee.received("INVITE")
    assert [re.findall(r"a=(sendonly|sendrecv)", m.body) for m in invites] == [
        ["sendrecv"],
        ["sendonly"],
        ["sendrecv"],
    ]
    assert [re.findall(r"o=sipp 4242 (\d+)", m.body) for m in invites] == [["1"], ["2"], ["3"]]
    # In-dialog: the callee's tag in To, to its Contact, CSeq going up.
    tag = (pair.caller.received(200)[0].header("To") or "").split("tag=")[1]
    for m in invites[1:]:
        assert f"tag={tag}" in (m.header("To") or "")
        assert m.start_line.startswith("INVITE sip:agent@127.0.0.1:")
    assert [m.header("CSeq") for m in invites] == ["1 INVITE", "2 INVITE", "3 INVITE"]
    answers = [m for m in pair.caller.received(200) if m.method == "INVITE"]
    assert [re.findall(r"a=(recvonly|sendrecv)", m.body) for m in answers] == [
        ["sendrecv"],
        ["recvonly"],
        ["sendrecv"],
    ]


@pytest.mark.slow
async def test_callee_hangs_up_during_the_callers_pause(tmp_path: Path) -> None:
    sipp_or_skip()
    tone = write_audio(tmp_path, "tone", _tone(0.2, 300), 8000, PCMU)
    async with RtpCapture() as at_caller, RtpCapture() as at_callee:
        started = asyncio.get_running_loop().time()
        pair = await _call(
            call(
                tmp_path / "caller",
                Party(at_caller.port),
                [Stream(tone, loops=-1), Pause(15.0), Pause(15.0)],
                hangup="callee",
                bye_timeout_s=5,
            ),
            callee(tmp_path / "callee", Party(at_callee.port), hangup="callee", hangup_after_s=0.5),
        )
        elapsed = asyncio.get_running_loop().time() - started
    assert pair.caller.ok, pair.caller.describe()
    assert pair.callee.ok, pair.callee.describe()
    assert elapsed < 10  # the BYE cut the 30 s of pauses short
    assert len(pair.caller.received("BYE")) == 1
    assert [m.start_line for m in pair.caller.sent()][-1] == "SIP/2.0 200 OK"
    assert not pair.caller.sent("BYE")
    assert len(at_callee.select(0)) >= 20  # the looped stream played until the BYE


@pytest.mark.slow
async def test_caller_waiting_for_a_bye_that_never_comes_fails(tmp_path: Path) -> None:
    sipp_or_skip()
    async with RtpCapture() as at_caller, RtpCapture() as at_callee:
        pair = await _call(
            call(tmp_path / "caller", Party(at_caller.port), hangup="callee", bye_timeout_s=0.5),
            callee(tmp_path / "callee", Party(at_callee.port)),
            callee_finishes=False,
        )
    assert not pair.caller.ok
    assert pair.caller.returncode == 1 and not pair.caller.timed_out


@pytest.mark.slow
async def test_options_keepalive(tmp_path: Path) -> None:
    sipp_or_skip()
    pair = await _call(
        options(tmp_path / "caller", Party(free_port())), callee_options(tmp_path / "callee")
    )
    assert pair.caller.ok, pair.caller.describe()
    assert pair.callee.ok, pair.callee.describe()
    assert [m.start_line.split()[0] for m in pair.caller.sent()] == ["OPTIONS"]
    assert pair.caller.statuses() == [200]


@pytest.mark.slow
async def test_cancel_before_answer(tmp_path: Path) -> None:
    sipp_or_skip()
    async with RtpCapture() as at_caller:
        pair = await _call(
            cancel(tmp_path / "caller", Party(at_caller.port), ring_s=0.1),
            callee_cancelled(tmp_path / "callee"),
        )
    assert pair.caller.ok, pair.caller.describe()
    assert pair.callee.ok, pair.callee.describe()
    assert sorted(pair.caller.statuses()) == [100, 180, 200, 487]
    invite, cancel_request, ack = pair.caller.sent()
    assert cancel_request.start_line.startswith("CANCEL sip:agent@")
    branch = re.compile(r"branch=([^;\s]+)")
    (invite_branch,) = branch.findall(invite.header("Via") or "")
    assert branch.findall(cancel_request.header("Via") or "") == [invite_branch]
    assert branch.findall(ack.header("Via") or "") == [invite_branch]
    assert cancel_request.header("CSeq") == "1 CANCEL" and ack.header("CSeq") == "1 ACK"
    assert "tag=" in (ack.header("To") or "")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("expected", "code", "reason"),
    [
        ((486, 503), 503, "Service Unavailable"),
        ((486, 503), 486, "Busy Here"),
        ((403,), 403, "Forbidden"),
    ],
)
async def test_refused_calls(
    expected: tuple[int, ...], code: int, reason: str, tmp_path: Path
) -> None:
    sipp_or_skip()
    pair = await _call(
        rejected(tmp_path / "caller", Party(free_port()), expected),
        callee_refusing(tmp_path / "callee", code, reason),
    )
    assert pair.caller.ok, pair.caller.describe()
    assert pair.callee.ok, pair.callee.describe()
    assert pair.caller.statuses() == [code]
    ack = pair.caller.sent("ACK")[0]
    assert (ack.header("Via") or "") == (pair.caller.received(code)[0].header("Via") or "")


@pytest.mark.slow
async def test_an_unexpected_answer_fails_the_caller(tmp_path: Path) -> None:
    sipp_or_skip()
    async with RtpCapture() as at_callee:
        pair = await _call(
            rejected(tmp_path / "caller", Party(free_port()), (403,)),
            callee(tmp_path / "callee", Party(at_callee.port)),
            callee_finishes=False,
        )
    assert not pair.caller.ok
    assert 200 in pair.caller.statuses()
    assert "200" in pair.caller.errors or "unexpected" in pair.caller.errors.lower()


@pytest.mark.slow
@pytest.mark.parametrize("password", ["s3cret", "wrong"])
async def test_digest_challenge(password: str, tmp_path: Path) -> None:
    sipp_or_skip()
    async with RtpCapture() as at_caller, RtpCapture() as at_callee:
        pair = await _call(
            call(tmp_path / "caller", Party(at_caller.port), name="digest", digest=True),
            callee(tmp_path / "callee", Party(at_callee.port), digest=("alice", "s3cret")),
            auth=("alice", password),
            callee_finishes=password == "s3cret",
        )
    invites = pair.caller.sent("INVITE")
    assert pair.caller.statuses()[:1] == [401]
    assert invites[0].header("Authorization") is None
    authorization = invites[1].header("Authorization") or ""
    assert authorization.startswith("Digest ") and 'username="alice"' in authorization
    assert 'realm="parley.test"' in authorization and "response=" in authorization
    request_uri = invites[1].start_line.split()[1]
    assert f'uri="{request_uri}"' in authorization
    assert invites[0].header("Call-ID") == invites[1].header("Call-ID")
    assert [m.header("CSeq") for m in invites] == ["1 INVITE", "2 INVITE"]
    if password == "s3cret":
        assert pair.caller.ok, pair.caller.describe()
        assert pair.caller.statuses()[-2:] == [200, 200]  # the INVITE's, then the BYE's
    else:
        assert not pair.caller.ok
        assert 403 in pair.caller.statuses()


@pytest.mark.slow
async def test_sipp_is_killed_when_the_test_gives_up(tmp_path: Path) -> None:
    sipp_or_skip()
    scenario = call(tmp_path, Party(free_port()))
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a server that never answers
    silent.bind((LOOPBACK, 0))
    try:
        proc = await start_sipp(scenario, silent.getsockname(), timeout_s=60)
        task = asyncio.create_task(proc.wait())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert proc.returncode is not None  # killed and reaped, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)
        # sipp's own -timeout ends a run the harness waits for.
        result = await run_sipp(scenario, silent.getsockname(), timeout_s=1)
    finally:
        silent.close()
    assert not result.ok and result.returncode == 255 and not result.timed_out
    assert "timed out" in result.errors
    assert len(result.sent("INVITE")) >= 2  # retransmitted into the void


def free_port() -> int:
    """An unused UDP port (an RTP port nobody listens on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port
