"""SIP dialogs (RFC 3261 section 12) of the calls the server answered.

A ``Dialog`` exists from the moment the server sends its 200 OK to an
INVITE. Its state machine::

    EARLY --ACK--> CONFIRMED --BYE (either side), no ACK, shutdown--> TERMINATED
      \\------------------ BYE, no ACK, shutdown ------------------------/

(``early`` here means "answered, ACK not yet received": the API reports the
ACK as the moment the call is up.)

The listener (``DialogEvents``) hears about the remote side: ``confirmed``
once, ``reinvite``/``dtmf`` while the call lasts, and ``ended(cause)`` once,
for every end the local application did not ask for (``"bye"``, ``"no ack"``,
``"shutdown"``, ``"transport error"``). ``Dialog.hangup()`` is the local end:
it sends BYE and does not call ``ended``.

In-dialog requests the server sends (BYE, REFER) go back over the flow the
caller's last request came from (its UDP source address, or its TCP
connection) rather than to the Contact URI: that is what works behind NAT,
and the server never sends signalling to an address that has not first sent
it an allowed request.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sipmessage import URI, Address

from media.sip.messages import SipError, SipRequest, call_ref
from media.sip.transactions import Flow, InviteServerTransaction

log = logging.getLogger(__name__)

DTMF_DIGITS = "0123456789*#ABCD"
DEFAULT_DTMF_DURATION_MS = 250
MAX_DTMF_DURATION_MS = 60_000
_DTMF_CODES = {str(i): DTMF_DIGITS[i] for i in range(16)}


class DialogEvents(Protocol):
    """The per-call listener returned by the call handler in ``Acceptance``.

    Methods are called on the event loop and must not block. An exception
    other than ``SipRejection`` (from ``reinvite``) is logged and ignored.
    """

    def confirmed(self, dialog: Dialog) -> None:
        """The caller acknowledged our 200 OK: the call is up."""
        ...

    def reinvite(self, offer_sdp: str) -> str:
        """A re-INVITE (hold, unhold, codec change): return the answer SDP.

        Raise ``SipRejection`` (e.g. 488) to refuse it; the call goes on.
        """
        ...

    def dtmf(self, digit: str, duration_ms: int) -> None:
        """The caller pressed a key (SIP INFO, ``application/dtmf-relay`` or ``/dtmf``)."""
        ...

    def ended(self, cause: str) -> None:
        """The call ended for a reason the application did not choose.

        ``"bye"`` (the caller hung up), ``"no ack"``, ``"shutdown"``,
        ``"transport error"``. Called at most once; never after ``hangup()``.
        """
        ...


class DialogState(enum.StrEnum):
    """Dialog states; values are the strings ``Dialog.state`` compares equal to."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogStateError(SipError):
    """The dialog is not in a state that allows the operation (e.g. REFER before the ACK)."""


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """An in-dialog request built by the dialog; the server adds Via and sends it."""

    method: str
    uri: URI
    headers: Sequence[tuple[str, str]]
    body: bytes = b""
    content_type: str | None = None


class DialogHost(Protocol):
    """What a dialog needs from the server that owns it."""

    async def send_in_dialog(self, dialog: Dialog, request: OutgoingRequest) -> int:
        """Send a request over the dialog's flow and return the final status code.

        A timeout reads as 408 and a transport failure as 503 (RFC 3261 8.1.3.1).
        """
        ...

    def release(self, dialog: Dialog) -> None:
        """The dialog is over: forget it."""
        ...


class Dialog:
    """One answered call, seen from the server (the UAS side of the dialog).

    Public attributes: ``call_id``, ``from_uri`` (the caller), ``to_uri``,
    ``remote`` (the INVITE's source address) and ``transport``.
    """

    def __init__(
        self,
        *,
        host: DialogHost,
        request: SipRequest,
        local_tag: str,
        contact: str,
        flow: Flow,
        events: DialogEvents,
        local_sdp: str,
    ) -> None:
        self._host = host
        self.call_id = request.call_id
        self.local_tag = local_tag
        self.remote_tag = request.from_tag
        self.from_uri = str(request.from_address.uri)
        self.to_uri = str(request.to_address.uri)
        self.remote: tuple[str, int] = flow.remote
        self.transport = flow.transport
        self.flow = flow
        """Where in-dialog requests go: the flow of the caller's latest request."""
        self.contact = contact
        """Our Contact header value."""
        self.events = events
        self.local_sdp = local_sdp
        """The last SDP we sent (the answer; resent for a re-INVITE without an offer)."""
        self.transfer_status: int | None = None
        """Last status reported by the transfer target in a NOTIFY (RFC 3515), if any."""
        self._local_address = request.message.headers["To"]  # as received; our tag is added
        self._remote_address = request.message.headers["From"]
        self.remote_target: URI = _contact_uri(request) or request.from_address.uri
        self._route_set = list(request.message.headers.getlist("Record-Route"))
        self.remote_cseq = request.cseq.sequence
        self._local_cseq = 0
        self._state = DialogState.EARLY
        self._awaiting_ack: dict[int, InviteServerTransaction] = {}
        self._hangup_requested = False
        self._settled = asyncio.Event()
        """Set once the dialog leaves EARLY (ACK, or an end)."""
        self._done = asyncio.Event()
        """Set once the dialog is terminated and its BYE (if any) completed."""

    def __repr__(self) -> str:
        return f"<Dialog call={call_ref(self.call_id)} {self._state.value}>"

    @property
    def state(self) -> DialogState:
        """``"early"`` (answered, no ACK yet), ``"confirmed"`` or ``"terminated"``."""
        return self._state

    @property
    def key(self) -> tuple[str, str, str]:
        """(Call-ID, local tag, remote tag): what in-dialog requests are matched by."""
        return (self.call_id, self.local_tag, self.remote_tag)

    # --- the application's side ---------------------------------------------------

    async def hangup(self, reason: str = "") -> None:
        """End the call with BYE; return once the BYE got its final response (or timer F).

        Idempotent and safe to call concurrently. Before the ACK arrives, the
        BYE waits for it (RFC 3261 15: a UAS does not BYE before the ACK)
        or for timer H. ``reason`` goes into a ``Reason`` header (RFC 3326).
        ``DialogEvents.ended`` is not called for this end.
        """
        self._hangup_requested = True
        if self._state is DialogState.EARLY:
            await self._settled.wait()
        if self._finish(None):
            await self._bye(reason)
        else:
            await self._done.wait()

    async def refer(self, target_uri: str) -> int:
        """Blind transfer (RFC 3515): send REFER with ``Refer-To: <target_uri>``.

        Returns the final status code (202 when the caller accepted to
        transfer; 408 on timeout). Raises ``ValueError`` for a target that is
        not a SIP/SIPS/TEL URI and ``DialogStateError`` unless confirmed.
        """
        URI.parse(target_uri)  # validates; sent as written
        if self._state is not DialogState.CONFIRMED:
            raise DialogStateError(f"cannot transfer a dialog that is {self._state.value}")
        request = self._request(
            "REFER", [("Refer-To", f"<{target_uri}>"), ("Referred-By", f"<{self.to_uri}>")]
        )
        code = await self._host.send_in_dialog(self, request)
        log.info("REFER call=%s -> %d", call_ref(self.call_id), code)
        return code

    # --- the server's side (package-internal) ------------------------------------

    def _request(self, method: str, extra: Sequence[tuple[str, str]] = ()) -> OutgoingRequest:
        """Build an in-dialog request (RFC 3261 12.2.1.1)."""
        self._local_cseq += 1
        uri = self.remote_target
        routes = list(self._route_set)
        if routes and ";lr" not in routes[0].lower():
            # strict routing: the first route becomes the Request-URI
            uri = Address.parse(routes[0]).uri
            routes = [*routes[1:], f"<{self.remote_target}>"]
        headers = [
            ("From", f"{self._local_address};tag={self.local_tag}"),
            ("To", self._remote_address),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self._local_cseq} {method}"),
            ("Max-Forwards", "70"),
            *[("Route", route) for route in routes],
            ("Contact", self.contact),
            *extra,
        ]
        return OutgoingRequest(method, uri, headers)

    def _expect_ack(self, cseq: int, transaction: InviteServerTransaction) -> None:
        """A 2xx to the INVITE with this CSeq is being retransmitted until its ACK."""
        self._awaiting_ack[cseq] = transaction

    def _receive_ack(self, cseq: int) -> None:
        """The ACK for our 2xx arrived (a new transaction, matched by dialog and CSeq)."""
        transaction = self._awaiting_ack.pop(cseq, None)
        if transaction is not None:
            transaction.acknowledge()
        if self._state is DialogState.EARLY and transaction is not None:
            self._state = DialogState.CONFIRMED
            self._settled.set()
            log.info("ACK call=%s: confirmed", call_ref(self.call_id))
            self._notify("confirmed", functools.partial(self.events.confirmed, self))

    def _update_target(self, request: SipRequest, flow: Flow) -> None:
        """A request from the caller: refresh the flow (and the target on a re-INVITE)."""
        self.flow = flow
        if request.method == "INVITE" and (uri := _contact_uri(request)) is not None:
            self.remote_target = uri

    def _finish(self, cause: str | None) -> bool:
        """Move to TERMINATED, once. Tell the listener ``cause`` unless the application hung up.

        Returns False when the dialog had already ended.
        """
        if self._state is DialogState.TERMINATED:
            return False
        self._state = DialogState.TERMINATED
        self._settled.set()
        for transaction in self._awaiting_ack.values():
            transaction.abandon()
        self._awaiting_ack.clear()
        if cause is not None and not self._hangup_requested:
            log.info("call=%s ended: %s", call_ref(self.call_id), cause)
            self._notify("ended", functools.partial(self.events.ended, cause))
        return True

    def _release(self) -> None:
        """The dialog is over and nothing more will be sent: forget it."""
        self._host.release(self)
        self._done.set()

    async def _bye(self, reason: str = "") -> None:
        """Send BYE (the dialog is already TERMINATED) and wait for its final response."""
        try:
            extra = [("Reason", _reason_header(reason))] if reason else []
            code = await self._host.send_in_dialog(self, self._request("BYE", extra))
            log.info("BYE call=%s -> %d", call_ref(self.call_id), code)
        finally:
            self._release()

    def _end_remote(self, cause: str) -> None:
        """The caller ended the dialog (BYE) or it cannot go on: no BYE to send."""
        self._finish(cause)
        self._release()

    def _notify(self, event: str, call: Callable[[], None]) -> None:
        """Call the listener; its failure is logged, never propagated into the protocol."""
        try:
            call()
        except Exception:
            log.exception(
                "call=%s: the dialog listener failed in %s", call_ref(self.call_id), event
            )


def _contact_uri(request: SipRequest) -> URI | None:
    try:
        contacts = request.message.contact
    except ValueError:
        return None
    return contacts[0].uri if contacts else None


def _reason_header(text: str) -> str:
    clean = re.sub(r'[\x00-\x1f\x7f"\\]', "", text)[:128]
    return f'SIP;cause=200;text="{clean}"'


def parse_dtmf(content_type: str, body: bytes) -> tuple[str, int]:
    """The digit and duration of a SIP INFO DTMF body.

    ``application/dtmf-relay``: ``Signal=5`` and ``Duration=160`` lines
    (Signal may also be an RFC 4733 event number 0-15). ``application/dtmf``:
    the digit alone. Raises ``ValueError`` for anything else.
    """
    text = body.decode("ascii").strip()
    if content_type == "application/dtmf":
        signal, duration = text, str(DEFAULT_DTMF_DURATION_MS)
    elif content_type == "application/dtmf-relay":
        fields: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep:
                fields[name.strip().lower()] = value.strip()
        signal = fields.get("signal", "")
        duration = fields.get("duration", str(DEFAULT_DTMF_DURATION_MS))
    else:
        raise ValueError(f"not a DTMF content type: {content_type}")
    digit = _DTMF_CODES.get(signal, signal.upper())
    if len(digit) != 1 or digit not in DTMF_DIGITS:
        raise ValueError("not a DTMF digit")
    if not duration.isdigit() or not duration.isascii():
        raise ValueError("invalid DTMF duration")
    return digit, min(int(duration), MAX_DTMF_DURATION_MS)


def parse_sipfrag_status(body: bytes) -> int | None:
    """The status code of a ``message/sipfrag`` NOTIFY body (``SIP/2.0 200 OK``), if any."""
    match = re.match(rb"^SIP/2\.0 ([1-6]\d\d)\b", body.lstrip())
    return int(match.group(1)) if match else None
