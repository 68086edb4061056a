"""The strict WebRTC offer checks (``signaling.sdp_offer``), with Hypothesis fuzzers.

Browser offers (Chrome's and Firefox's shapes) and offers made by a real
aiortc peer pass; each defect of the issue and every structural rule gets a
clear ``SdpError``; random and mutated text never raises anything else; and
what the checks accept, the agent's real aiortc peer answers (the property
that keeps the checks and aiortc in step).
"""

from __future__ import annotations

import re

import pytest
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from signaling.sdp_offer import (
    MAX_CANDIDATES,
    MAX_SDP_BYTES,
    SdpError,
    SdpTooLargeError,
    check_offer,
    decode_offer,
)
from tests.offers import (
    AIORTC_OFFER,
    CHROME_MDNS,
    CHROME_OFFER,
    CRLF,
    FIREFOX_OFFER,
    SHA256,
    answer_with_aiortc,
    drop,
    edit,
    hex_bytes,
)

# ------------------------------------------------------------------ accepted


@pytest.mark.parametrize(
    ("offer", "codecs", "data_channel"),
    [
        (AIORTC_OFFER, ("opus/48000", "G722/8000", "PCMU/8000", "PCMA/8000"), True),
        (CHROME_OFFER, ("opus/48000", "G722/8000", "PCMU/8000", "PCMA/8000"), True),
        (FIREFOX_OFFER, ("opus/48000", "G722/8000", "PCMU/8000", "PCMA/8000"), True),
    ],
    ids=["aiortc", "chrome", "firefox"],
)
def test_browser_offers_pass(offer: str, codecs: tuple[str, ...], data_channel: bool) -> None:
    checked = check_offer(offer)
    assert checked.codecs == codecs
    assert checked.data_channel is data_channel


def test_chrome_mdns_candidate_and_whip_style_offer_pass() -> None:
    with_mdns = edit(CHROME_OFFER, "a=ice-ufrag:EsAw", CHROME_MDNS + CRLF + "a=ice-ufrag:EsAw", 1)
    assert check_offer(with_mdns).candidates == 5
    # WHIP clients often send audio only, LF line ends and a trailing blank line
    audio_only = AIORTC_OFFER.split("m=application")[0].replace(" 1\r\n", "\r\n", 1)
    assert check_offer(audio_only.replace(CRLF, "\n") + "\n").data_channel is False
    # PCMU alone, on its static payload type
    pcmu = edit(AIORTC_OFFER, "SAVPF 96 9 0 8", "SAVPF 0")
    for line in ("a=rtpmap:96 ", "a=rtpmap:9 ", "a=rtpmap:8 "):
        pcmu = drop(pcmu, line)
    assert check_offer(pcmu).codecs == ("PCMU/8000",)


async def test_offers_of_real_aiortc_peers_pass_and_are_answered() -> None:
    for data_channel in (True, False):
        caller = RTCPeerConnection()
        try:
            caller.addTransceiver("audio", direction="sendrecv")
            if data_channel:
                caller.createDataChannel("events")
            await caller.setLocalDescription(await caller.createOffer())
            sdp = caller.localDescription.sdp
        finally:
            await caller.close()
        assert check_offer(sdp).data_channel is data_channel
        assert "m=audio" in await answer_with_aiortc(sdp)


@pytest.mark.parametrize("offer", [AIORTC_OFFER, CHROME_OFFER, FIREFOX_OFFER])
async def test_accepted_fixtures_are_answered_by_aiortc(offer: str) -> None:
    answer = await answer_with_aiortc(offer)
    assert re.search(r"a=rtpmap:(96|109|111) opus/48000/2", answer)


# ------------------------------------------------------------------ refused

REFUSED: list[tuple[str, str, str]] = [
    # the three defects
    (
        "all codecs unknown",
        AIORTC_OFFER.replace("opus/48000/2", "speex/48000")
        .replace("G722/8000", "iLBC/8000")
        .replace("PCMU/8000", "AMR/8000")
        .replace("PCMA/8000", "GSM/8000"),
        r"no codec this server can answer \(offered: 'speex/48000'.*supported: opus/48000",
    ),
    ("non-numeric port", edit(AIORTC_OFFER, "m=audio 45555", "m=audio abc"), r"port must be"),
    (
        "bogus fingerprint hash",
        edit(AIORTC_OFFER, "sha-256", "sha-999"),
        r"unknown fingerprint hash 'sha-999'",
    ),
    # text
    ("answer type", AIORTC_OFFER, r"expected an SDP offer"),
    ("no v=0", AIORTC_OFFER[5:], r"must start with the line v=0"),
    ("not x=value", edit(AIORTC_OFFER, "s=-", "s=-\r\nhello"), r"line 4 is not of the form"),
    ("unknown line type", edit(AIORTC_OFFER, "t=0 0", "t=0 0\r\nx=1"), r"unknown SDP line type"),
    ("NUL", edit(AIORTC_OFFER, "s=-", "s=\x00"), r"control character"),
    ("lone surrogate", edit(AIORTC_OFFER, "s=-", "s=\ud800"), r"not valid Unicode"),
    ("no origin", drop(AIORTC_OFFER, "o="), r"no o= \(origin\) line"),
    ("bad timing", edit(AIORTC_OFFER, "t=0 0", "t=now"), r"t= must be two numbers"),
    # media structure
    ("no audio", AIORTC_OFFER.replace("m=audio", "m=text"), r"m=text .* is not supported"),
    (
        "video",
        AIORTC_OFFER + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\n",
        r"m=video \(line \d+\) is not supported",
    ),
    (
        "two audio sections",
        edit(
            AIORTC_OFFER,
            "m=application 44833 UDP/DTLS/SCTP webrtc-datachannel",
            "m=audio 9 UDP/TLS/RTP/SAVPF 0",
        ),
        r"more than one m=audio",
    ),
    ("plain RTP", edit(AIORTC_OFFER, "UDP/TLS/RTP/SAVPF", "RTP/AVP"), r"is not DTLS-SRTP"),
    ("port 0", edit(AIORTC_OFFER, "m=audio 45555", "m=audio 0"), r"port must be a number 1-65535"),
    (
        "bad payload type",
        edit(AIORTC_OFFER, "SAVPF 96 9 0 8", "SAVPF 96 9 0 x"),
        r"'x' is not an RTP payload type",
    ),
    ("recvonly caller", edit(AIORTC_OFFER, "a=sendrecv", "a=recvonly"), r"must send audio"),
    ("no direction", drop(AIORTC_OFFER, "a=sendrecv"), r"needs one direction attribute"),
    ("no rtcp-mux", drop(AIORTC_OFFER, "a=rtcp-mux"), r"needs a=rtcp-mux"),
    (
        "opus on a static payload type",
        drop(
            drop(
                drop(edit(AIORTC_OFFER, "SAVPF 96 9 0 8", "SAVPF 0"), "a=rtpmap:96"), "a=rtpmap:9 "
            ),
            "a=rtpmap:8 ",
        ).replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 opus/48000/2"),
        r"no codec this server can answer",
    ),
    (
        "rtpmap for an unlisted payload type",
        edit(AIORTC_OFFER, "SAVPF 96 9 0 8", "SAVPF 96 9 0"),
        r"a=rtpmap:8 is not a payload type of the m= line",
    ),
    (
        "fmtp without rtpmap",
        edit(AIORTC_OFFER, "a=rtpmap:8 PCMA/8000", "a=rtpmap:8 PCMA/8000\r\na=fmtp:97 x=1"),
        r"a=fmtp for a payload type with no a=rtpmap",
    ),
    (
        "fmtp integer parameter",
        edit(AIORTC_OFFER, "a=rtpmap:8 PCMA/8000", "a=rtpmap:8 PCMA/8000\r\na=fmtp:96 stereo=yes"),
        r"a=fmtp parameter 'stereo' must be a number",
    ),
    (
        "extmap with attributes",
        edit(AIORTC_OFFER, "sdes:mid", "sdes:mid extra"),
        r"a=extmap must be",
    ),
    # transport
    ("no mid", drop(AIORTC_OFFER, "a=mid:0"), r"m=audio \(line 7\) needs exactly one a=mid"),
    ("same mid twice", AIORTC_OFFER.replace("a=mid:1", "a=mid:0"), r"same a=mid"),
    (
        "BUNDLE of an unknown mid",
        edit(AIORTC_OFFER, "BUNDLE 0 1", "BUNDLE 0 7"),
        r"BUNDLE names a mid",
    ),
    ("no ICE ufrag", drop(AIORTC_OFFER, "a=ice-ufrag"), r"no ICE credentials"),
    ("short ICE password", edit(AIORTC_OFFER, "Htj", ""), r"a=ice-pwd must be 22-256 ice-chars"),
    ("no fingerprint", drop(AIORTC_OFFER, "a=fingerprint"), r"no DTLS fingerprint"),
    (
        "sha-1 only",
        AIORTC_OFFER.replace(f"sha-256 {SHA256}", f"sha-1 {hex_bytes(20)}"),
        r"no fingerprint uses a hash this server verifies \(sha-256, sha-384, sha-512\)",
    ),
    (
        "fingerprint of the wrong length",
        edit(AIORTC_OFFER, SHA256, SHA256[:-3]),
        r"a sha-256 fingerprint is 32 colon-separated hex bytes",
    ),
    (
        "fingerprint not hex",
        edit(AIORTC_OFFER, SHA256, "ZZ" + SHA256[2:]),
        r"colon-separated hex bytes",
    ),
    ("fingerprint without hash", edit(AIORTC_OFFER, "sha-256 ", ""), r"must be '<hash> <hex>'"),
    ("setup holdconn", edit(AIORTC_OFFER, "setup:actpass", "setup:holdconn"), r"a=setup must be"),
    ("no setup", drop(AIORTC_OFFER, "a=setup"), r"no DTLS role"),
    (
        "candidate with a host name",
        edit(AIORTC_OFFER, "127.0.0.1 45555 typ", "evil.example.com 45555 typ"),
        r"a=candidate has an invalid address",
    ),
    (
        "candidate of the wrong type",
        edit(AIORTC_OFFER, "45555 typ host", "45555 typ bogus"),
        r"a=candidate has an invalid type",
    ),
    ("short candidate", edit(AIORTC_OFFER, " 45555 typ host", ""), r"a=candidate needs eight"),
    # data channel
    ("data channel without port", drop(AIORTC_OFFER, "a=sctp-port"), r"needs a=sctp-port"),
    (
        "data channel format",
        edit(AIORTC_OFFER, "webrtc-datachannel", "5000"),
        r"the format of a data channel is webrtc-datachannel",
    ),
]


@pytest.mark.parametrize(
    ("sdp", "reason"), [(s, r) for _, s, r in REFUSED], ids=[n for n, _, _ in REFUSED]
)
def test_refused_with_a_clear_reason(sdp: str, reason: str) -> None:
    kind = "answer" if reason == "expected an SDP offer" else "offer"
    with pytest.raises(SdpError, match=reason) as refused:
        check_offer(sdp, kind)
    assert refused.value.status == 400 and refused.value.code == "bad_sdp"


def test_size_limits() -> None:
    padding = "a=x-pad:" + "p" * 1000 + CRLF
    big = AIORTC_OFFER + padding * (MAX_SDP_BYTES // len(padding) + 1)
    with pytest.raises(SdpTooLargeError, match=rf"at most {MAX_SDP_BYTES}") as refused:
        check_offer(big)
    assert (refused.value.status, refused.value.code) == (413, "sdp_too_large")
    # the limit is in UTF-8 bytes, not characters
    wide = AIORTC_OFFER + "a=x-pad:" + "é" * (MAX_SDP_BYTES // 2) + CRLF
    assert len(wide) < MAX_SDP_BYTES + 100_000
    with pytest.raises(SdpTooLargeError):
        check_offer(wide)
    with pytest.raises(SdpTooLargeError):
        decode_offer(big.encode())
    with pytest.raises(SdpError, match="not UTF-8 text"):
        decode_offer(AIORTC_OFFER.encode() + b"\xff")
    candidates = "".join(
        f"a=candidate:{i} 1 udp 2130706431 127.0.0.{i} 9 typ host\r\n"
        for i in range(MAX_CANDIDATES + 1)
    )
    with pytest.raises(SdpError, match="ICE candidates; at most"):
        check_offer(
            edit(AIORTC_OFFER, "a=end-of-candidates", candidates + "a=end-of-candidates", 1)
        )
    mdns = "".join(
        f"a=candidate:{i} 1 udp 2130706431 host-{i}.local 9 typ host\r\n" for i in range(9)
    )
    with pytest.raises(SdpError, match="mDNS candidates; at most 8"):
        check_offer(edit(AIORTC_OFFER, "a=end-of-candidates", mdns + "a=end-of-candidates", 1))


# ------------------------------------------------------------------ fuzzers

SDP_LINES = [line for line in (AIORTC_OFFER + CHROME_OFFER).split(CRLF) if line]
SDP_TOKENS = [
    "0", "9", "96", "111", "127", "128", "255", "65535", "65536", "-1", "abc", "", " ",
    "audio", "video", "application", "UDP/TLS/RTP/SAVPF", "RTP/AVP", "UDP/DTLS/SCTP",
    "webrtc-datachannel", "opus/48000/2", "PCMU/8000", "foo/8000", "opus", "/", ":", ";",
    "=", "sha-256", "sha-1", "SHA-256", "md5", SHA256, "actpass", "holdconn", "active",
    "sendrecv", "recvonly", "inactive", "BUNDLE", "0 1", "typ", "host", "relay", "udp",
    "127.0.0.1", "::1", "not-an-ip", "IN IP4", "IN IP6 ::1", "\u00e9", "\u00a0", "\t",
]  # fmt: skip
"""Tokens a mutation splices in: the values the checks and aiortc's parser branch on."""


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    """A valid offer with a few line-level mutations (delete, duplicate, swap, splice)."""
    base = draw(st.sampled_from([AIORTC_OFFER, CHROME_OFFER, FIREFOX_OFFER]))
    lines = base.split(CRLF)[:-1]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "splice", "insert", "cut"]))
        i = draw(st.integers(1, len(lines) - 1))  # v=0 stays first (random text tests it)
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "swap":
            j = draw(st.integers(1, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "splice":
            words = lines[i].split(" ")
            k = draw(st.integers(0, len(words) - 1))
            words[k] = draw(st.sampled_from(SDP_TOKENS) | st.text(max_size=8))
            lines[i] = " ".join(words)
        elif op == "insert":
            line = draw(st.sampled_from(SDP_LINES))
            lines.insert(draw(st.integers(1, len(lines))), line)
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return CRLF.join(lines) + CRLF


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.builds("v=0\r\n".__add__, st.text(max_size=300)))
def test_random_text_is_refused_with_sdp_error_only(text: str) -> None:
    with pytest.raises(SdpError) as refused:
        check_offer(text)
    assert str(refused.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bodies_decode_or_fail_with_sdp_error(raw: bytes) -> None:
    try:
        text = decode_offer(raw)
    except SdpError:
        return
    with pytest.raises(SdpError):
        check_offer(text)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutated_offers())
async def test_mutated_offers_fail_cleanly_or_are_answered(sdp: str) -> None:
    """What the checks refuse is an ``SdpError``; what they accept, aiortc answers."""
    try:
        checked = check_offer(sdp)
    except SdpError as exc:
        reason = str(exc)
        event("refused: " + re.sub(r"line \d+|'[^']*'|\(.*", "", reason)[:60])
    else:
        event("accepted")
        assert checked.codecs
        answer = await answer_with_aiortc(sdp)
        assert "m=audio" in answer
        return
    assert reason
