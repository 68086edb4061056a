"""Phone calls: the SIP server's call handler, admitting each call into the product.

For every INVITE the SIP server accepted (source allowlist, digest
authentication), ``SipCalls.invite``:

1. negotiates the media (G.722 preferred, then PCMU, PCMA; telephone-event):
   nothing usable is a 488;
2. opens an RTP session on a port of ``PARLEY_RTP_PORTS`` (none free: 503);
3. opens the call through the admission gate (capacity: 486 Busy Here, as a
   phone expects of a full line), a session with transport ``sip`` and the
   caller's From URI and Call-ID;
4. answers with its SDP; the caller's ACK starts the call bridge, which runs
   it like every other call.

The dialog ending from the caller's side (BYE, no ACK, server shutdown)
ends the call with that cause; the call ending on our side (the session
closed, idle, shutdown) sends a BYE. CANCEL while the call is being set up
cancels ``invite``, which releases what it opened.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections import Counter
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Header

from media.sip.codecs import codec_for
from media.sip.dialogs import DialogStateError
from media.sip.rtp import RtpSession
from media.sip.sdp import SdpNegotiationError, build_answer, mirror, negotiate, parse_sdp
from media.sip.server import Acceptance, IncomingCall, SipRejection, SipServer, SipSettings
from media.sip.transport import SipTransport
from signaling.admission import AdmissionError, open_protocol_call, start_call
from signaling.calls import Call
from signaling.openapi import error_responses
from signaling.sessions_api import require_admin
from signaling.state import ApiError, AppState, State

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")

CAUSES = {
    "bye": "caller hung up (BYE)",
    "cancel": "caller cancelled",
    "no ack": "no ACK from the caller",
    "shutdown": "server shutdown",
}
"""Hang-up causes as the store keeps them, by the SIP server's dialog end cause."""


class SipCalls:
    """The ``CallHandler`` of the SIP server (see the module docstring)."""

    def __init__(
        self,
        st: AppState,
        *,
        media_address: str,
        rtp_host: str,
        rtp_ports: tuple[int, int],
        no_rtp_timeout_s: float,
    ) -> None:
        self._st = st
        self._media_address = media_address
        self._rtp_host = rtp_host
        self._rtp_ports = rtp_ports
        self._no_rtp_timeout_s = no_rtp_timeout_s
        self._live: dict[RtpSession, Call] = {}
        self._rtp_totals: Counter[str] = Counter()

    def rtp_totals(self) -> dict[str, int]:
        """RTP counters summed over every SIP call so far (for metrics)."""
        totals = Counter(self._rtp_totals)
        for rtp, call in list(self._live.items()):
            stats = asdict(rtp.stats)
            if call.ended:  # its stats are final: fold them into the totals
                del self._live[rtp]
                self._rtp_totals.update({k: v for k, v in stats.items() if isinstance(v, int)})
            totals.update({k: v for k, v in stats.items() if isinstance(v, int)})
        return dict(totals)

    async def invite(self, call: IncomingCall) -> Acceptance:
        """Admit one call: media, capacity, session; answer (see the module docstring)."""
        try:
            negotiated = negotiate(parse_sdp(call.offer_sdp))
        except SdpNegotiationError as exc:
            log.info("sip %s: 488 (%s)", call.call_id[:8], exc)
            raise SipRejection(488, "Not Acceptable Here") from exc
        codec = codec_for(negotiated)
        try:
            rtp = await RtpSession.open(
                self._rtp_host,
                self._rtp_ports,
                codec,
                negotiated.dtmf_payload_type,
                no_rtp_timeout_s=self._no_rtp_timeout_s,
            )
        except OSError as exc:
            log.warning("sip %s: no RTP port free (%s)", call.call_id[:8], type(exc).__name__)
            raise SipRejection(503, "Service Unavailable", {"Retry-After": "5"}) from exc
        opened: Call | None = None
        try:
            try:
                opened = await open_protocol_call(
                    self._st,
                    "sip",
                    output_rate=codec.sample_rate,
                    attributes={"from_uri": call.from_uri, "call_id": call.call_id},
                )
            except AdmissionError as exc:
                raise SipRejection(486, "Busy Here", {"Retry-After": "5"}) from exc
            rtp.set_remote(negotiated.remote_address, negotiated.remote_port)
            direction = mirror(negotiated.direction)
            rtp.set_direction(direction)
            session_id = secrets.randbelow(2**31)
            transport = SipTransport(
                call,
                rtp,
                answer_address=self._media_address,
                session_id=session_id,
                on_confirmed=self._confirmed(opened),
                on_ended=self._ended(opened),
                echo_cancel=self._st.settings.sip_echo_cancel,
            )
            # The call owns its transport from now on: however it ends (even before
            # the ACK: CANCEL, no ACK), closing the call closes the RTP session.
            opened.link = transport
            answer = build_answer(
                negotiated,
                address=self._media_address,
                port=rtp.local_port,
                session_id=session_id,
                version=1,
                direction=direction,
            )
        except BaseException:  # refused, failed or CANCELled: release what was opened
            if opened is not None:
                await self._st.calls.end(opened, "call setup failed")
            await rtp.close()
            raise
        self._live[rtp] = opened
        log.info("sip %s: answering with %s", call.call_id[:8], codec.name)
        return Acceptance(answer, transport)

    def _confirmed(self, opened: Call) -> SipTransport.Callback:
        def start(transport: SipTransport) -> None:
            if not opened.ended and opened.end_reason is None:
                start_call(self._st, opened, transport)

        return start

    def _ended(self, opened: Call) -> SipTransport.EndCallback:
        def end(cause: str) -> None:
            self._st.calls.end_soon(opened, CAUSES.get(cause, f"dialog ended ({cause})"))

        return end


async def start_sip(st: AppState) -> tuple[SipServer, SipCalls] | None:
    """Start the SIP server the settings ask for (``PARLEY_SIP_LISTEN``); None when off.

    Raises ``OSError`` when the port is taken and ``ValueError`` for settings
    that cannot be used (each with one clear line).
    """
    settings = st.settings
    endpoint = settings.sip_endpoint()
    if endpoint is None:
        return None
    host, port = endpoint
    media_address = settings.sip_public_ip or host
    if media_address in ("0.0.0.0", "::"):
        media_address = socket.gethostbyname(socket.gethostname())
        log.warning(
            "sip: listening on all interfaces without PARLEY_SIP_PUBLIC_IP; "
            "SDP and Contact carry %s",
            media_address,
        )
    handler = SipCalls(
        st,
        media_address=media_address,
        rtp_host=host,
        rtp_ports=settings.rtp_port_range(),
        no_rtp_timeout_s=settings.sip_no_rtp_timeout_s,
    )
    server = SipServer(
        SipSettings(
            host=host,
            port=port,
            public_ip=settings.sip_public_ip,
            allow=settings.sip_networks(),
            users=settings.sip_user_passwords(),
        ),
        handler,
    )
    await server.start()
    st.metrics.watch_sip(lambda: server.stats, handler.rtp_totals)
    bound_host, bound_port = server.bound
    log.info(
        "sip: listening on %s:%d (UDP and TCP), RTP ports %s, digest auth %s",
        bound_host,
        bound_port,
        settings.rtp_ports,
        "on" if settings.sip_users is not None else "off",
    )
    return server, handler


@router.post("/calls/{call_id}/transfer", responses=error_responses(401, 403, 404, 409, 503))
async def transfer_call(
    call_id: str, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Blind-transfer a phone call to ``PARLEY_SIP_TRANSFER_URI`` (an admin credential).

    Sends a REFER in the call's dialog and returns its final status (202:
    the caller's side accepted and will call the target, then hang up).
    """
    await require_admin(st, authorization)
    target = st.settings.sip_transfer_uri
    if target is None:
        raise ApiError(503, "no_transfer_target", "PARLEY_SIP_TRANSFER_URI is not set")
    call = st.calls.get(call_id)
    if call is None:
        raise ApiError(404, "call_not_found", "no such call")
    transport = call.link
    if not isinstance(transport, SipTransport):
        raise ApiError(409, "not_a_phone_call", "only SIP calls can be transferred")
    try:
        status = await transport.transfer(target)
    except DialogStateError as exc:
        raise ApiError(409, "call_not_transferable", str(exc)) from exc
    log.info("sip %s: transfer answered %d", transport.call.call_id[:8], status)
    return {"call_id": call_id, "target": target, "status": status}
