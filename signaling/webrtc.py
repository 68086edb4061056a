"""WebRTC calls: answer a caller's SDP offer with an aiortc peer that runs the agent.

The offer is checked (``signaling.sdp_offer``) and answered by the agent's
peer, created as a ``media.webrtc.WebRtcTransport``, before the call is
admitted (``signaling.admission``): an offer that cannot be answered never
takes a call slot or starts a session. The peer carries the caller's Opus
track in, the agent's paced audio track out, JSON events out and control
messages (``{"type": "text", "text": ...}``, ``{"type": "hangup"}``) in on
the ``events`` data channel. The call then runs on the bridge like any other.
"""

from __future__ import annotations

import logging

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import OperationError

from media.webrtc import WebRtcTransport
from signaling.admission import Admitted, Grant, open_call, start_call
from signaling.sdp_offer import MAX_SDP_BYTES, SdpError, check_offer
from signaling.state import AppState

__all__ = ["MAX_SDP_BYTES", "SdpError", "answer_offer", "check_offer"]

log = logging.getLogger(__name__)


async def _answer(pc: RTCPeerConnection, sdp: str) -> RTCSessionDescription:
    """Apply a checked offer and create the answer; ``SdpError`` if aiortc still refuses it.

    The offer is the only input of these two steps, so whatever they raise is
    the offer's fault: it is reported as ``SdpError`` (400), never a 500.
    """
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer: RTCSessionDescription = await pc.createAnswer()
    except OperationError as exc:
        raise SdpError("the offer has no codec in common with this server") from exc
    except Exception as exc:  # aiortc's own checks: ValueError, KeyError, InvalidStateError...
        log.info("offer refused by aiortc: %s", type(exc).__name__)
        raise SdpError(f"the offer cannot be answered ({type(exc).__name__})") from exc
    return answer


async def answer_offer(
    st: AppState, grant: Grant, sdp: str, kind: str
) -> tuple[Admitted, RTCSessionDescription]:
    """Admit a WebRTC call for an offer; returns it and the agent's SDP answer.

    Raises ``SdpError`` for an offer that cannot be answered (before any call
    is opened: no slot, no session) and ``AdmissionError`` when the server is
    full.
    """
    check_offer(sdp, kind)
    rate = st.settings.output_rate
    ice = [RTCIceServer(s.urls, s.username, s.credential) for s in st.settings.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    transport = WebRtcTransport(pc, rate, inbound_prefetch=st.settings.webrtc_inbound_prefetch)
    admitted: Admitted | None = None
    try:
        answer = await _answer(pc, sdp)
        admitted = await open_call(st, grant, "webrtc", output_rate=rate)
        await pc.setLocalDescription(answer)
    except BaseException:
        if admitted is not None:
            await st.calls.end(admitted.call, "offer failed")
        await transport.close("offer failed")
        raise
    start_call(st, admitted.call, transport)
    return admitted, pc.localDescription
