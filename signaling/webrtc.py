"""WebRTC calls: answer a caller's SDP offer with an aiortc peer that runs the agent.

The offer is checked, the call admitted (``signaling.admission``), and the
agent's peer created as a ``media.webrtc.WebRtcTransport``: the caller's Opus
track in, the agent's paced audio track out, JSON events out and control
messages (``{"type": "text", "text": ...}``, ``{"type": "hangup"}``) in on the
``events`` data channel. The call then runs on the bridge like any other.
"""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from media.webrtc import WebRtcTransport
from signaling.admission import Admitted, Grant, open_call, start_call
from signaling.state import AppState

MAX_SDP_BYTES = 64 * 1024


class SdpError(ValueError):
    """An offer that is not a usable SDP audio offer."""


def check_offer(sdp: str, kind: str) -> None:
    """Reject what is obviously not an SDP offer with audio before aiortc sees it."""
    if kind != "offer":
        raise SdpError(f"expected an SDP offer, got type {kind!r}")
    if len(sdp) > MAX_SDP_BYTES:
        raise SdpError("SDP is too large")
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    if not any(line.startswith("m=audio") for line in lines):
        raise SdpError("SDP offer has no audio media section")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise SdpError("SDP offer has no DTLS fingerprint")


async def answer_offer(
    st: AppState, grant: Grant, sdp: str, kind: str
) -> tuple[Admitted, RTCSessionDescription]:
    """Admit a WebRTC call for an offer; returns it and the agent's SDP answer.

    Raises ``SdpError`` for a malformed offer (before any call is opened) and
    ``AdmissionError`` when the server is full.
    """
    check_offer(sdp, kind)
    rate = st.settings.output_rate
    admitted = await open_call(st, grant, "webrtc", output_rate=rate)
    call = admitted.call
    ice = [RTCIceServer(s.urls, s.username, s.credential) for s in st.settings.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    transport = WebRtcTransport(pc, rate)
    try:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, IndexError) as exc:
            raise SdpError(f"malformed SDP offer: {exc}") from exc
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException:
        await st.calls.end(call, "offer failed")
        await transport.close("offer failed")
        raise
    start_call(st, call, transport)
    return admitted, pc.localDescription
