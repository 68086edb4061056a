"""SDP offers for the tests: the shapes aiortc, Chrome and Firefox write, and edit helpers.

Fingerprints are well-formed but made up; candidates point at loopback.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCSessionDescription

from media.webrtc import WebRtcTransport


def hex_bytes(count: int, start: int = 0) -> str:
    """``count`` colon-separated hex bytes (a fingerprint's shape)."""
    return ":".join(f"{(start + i) % 256:02X}" for i in range(count))


SHA256 = hex_bytes(32)
CRLF = "\r\n"

AIORTC_OFFER = CRLF.join(
    [
        "v=0",
        "o=- 4004460411 4004460411 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=audio 45555 UDP/TLS/RTP/SAVPF 96 9 0 8",
        "c=IN IP4 127.0.0.1",
        "a=sendrecv",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=mid:0",
        "a=msid:ed902df7-1bb8-4287-8ec6-d692b3954f1c 3ac98cbd-d950-4ef2-a8af-d157f566e438",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=ssrc:748894547 cname:54f53e67-bc71-4bee-b1c4-df63ac0e7956",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 45555 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:wpSn",
        "a=ice-pwd:aCnSNJNHoNtBXMbiwa5Htj",
        f"a=fingerprint:sha-256 {SHA256}",
        "a=setup:actpass",
        "m=application 44833 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 127.0.0.1",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 44833 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:wpSn",
        "a=ice-pwd:aCnSNJNHoNtBXMbiwa5Htj",
        f"a=fingerprint:sha-256 {SHA256}",
        "a=setup:actpass",
        "",
    ]
)
"""An offer as aiortc's own peer writes it (audio and the events data channel)."""

CHROME_MDNS = (
    "a=candidate:2362591210 1 udp 2113937151 3b1c9a4e-6f0a-4f5e-8a8c-2d5b7e9f1a23.local "
    "54400 typ host generation 0 network-cost 999"
)
CHROME_OFFER = CRLF.join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS 5c6dbd8b-8d5e-4c6a-9b5f-0f4a1d0c9e11",
        "m=audio 54400 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 127.0.0.1",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1467250027 1 udp 2122260223 127.0.0.1 54400 typ host generation 0 "
        "network-id 1",
        "a=candidate:1853887674 1 udp 1845501695 198.51.100.7 54400 typ srflx raddr "
        "127.0.0.1 rport 54400 generation 0 network-id 1",
        "a=candidate:435653019 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active "
        "generation 0 network-id 1",
        "a=ice-ufrag:EsAw",
        "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1",
        "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {hex_bytes(32, 7)}",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendrecv",
        "a=msid:5c6dbd8b-8d5e-4c6a-9b5f-0f4a1d0c9e11 0f6a1c1e-2b7d-4c3a-9e8f-7a6b5c4d3e2f",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:3570614608 cname:4TOk42mSjXCkVIa6",
        "a=ssrc:3570614608 msid:5c6dbd8b-8d5e-4c6a-9b5f-0f4a1d0c9e11 "
        "0f6a1c1e-2b7d-4c3a-9e8f-7a6b5c4d3e2f",
        "m=application 54401 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 127.0.0.1",
        "a=candidate:1467250027 1 udp 2122260223 127.0.0.1 54401 typ host generation 0 "
        "network-id 1",
        "a=ice-ufrag:EsAw",
        "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1",
        "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {hex_bytes(32, 7)}",
        "a=setup:actpass",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "",
    ]
)
"""Chrome's offer shape: RED, CN, telephone-event, transport-cc, srflx and TCP candidates."""

FIREFOX_OFFER = CRLF.join(
    [
        "v=0",
        "o=mozilla...THIS_IS_SDPARTA-99.0 7052848360639826063 0 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        f"a=fingerprint:sha-256 {hex_bytes(32, 100)}",
        "a=group:BUNDLE 0 1",
        "a=ice-options:trickle",
        "a=msid-semantic:WMS *",
        "m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101",
        "c=IN IP4 0.0.0.0",
        "a=sendrecv",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level",
        "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1",
        "a=fmtp:101 0-15",
        "a=ice-pwd:c3a5dd6c5bd6d2b6a4a1b2c3d4e5f6a7",
        "a=ice-ufrag:8f3b2a1c",
        "a=mid:0",
        "a=msid:{6a1b2c3d-1111-2222-3333-444455556666} {9c2d3e4f-7777-8888-9999-aaaabbbbcccc}",
        "a=rtcp-mux",
        "a=rtpmap:109 opus/48000/2",
        "a=rtpmap:9 G722/8000/1",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=setup:actpass",
        "a=ssrc:2655508255 cname:{b1c2d3e4-aaaa-bbbb-cccc-ddddeeeeffff}",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=sendrecv",
        "a=ice-pwd:c3a5dd6c5bd6d2b6a4a1b2c3d4e5f6a7",
        "a=ice-ufrag:8f3b2a1c",
        "a=mid:1",
        "a=setup:actpass",
        "a=sctp-port:5000",
        "a=max-message-size:1073741823",
        "",
    ]
)
"""Firefox's offer shape: session-level fingerprint, fmtp before rtpmap, no candidates."""


def edit(offer: str, old: str, new: str, count: int = -1) -> str:
    """``offer`` with ``old`` replaced (which must be there)."""
    assert old in offer, old
    return offer.replace(old, new, count)


def drop(offer: str, prefix: str) -> str:
    """``offer`` without its lines that start with ``prefix`` (there must be one)."""
    lines = offer.split(CRLF)
    kept = [line for line in lines if not line.startswith(prefix)]
    assert len(kept) < len(lines), prefix
    return CRLF.join(kept)


async def answer_with_aiortc(sdp: str) -> str:
    """The agent peer's answer to ``sdp``, as the server makes it (raises what aiortc raises)."""
    pc = RTCPeerConnection()
    transport = WebRtcTransport(pc, 48_000)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await pc.createAnswer()
        assert answer is not None
        text: str = answer.sdp
        return text
    finally:
        await transport.close("test done")
