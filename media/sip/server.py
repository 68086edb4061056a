"""The SIP user-agent server: UDP and TCP listeners, admission, calls and dialogs.

``SipServer`` answers phone calls on behalf of a ``CallHandler``::

    INVITE -> 100 Trying (at once) -> 180 Ringing -> handler.invite(call)
           -> 200 OK + SDP answer, retransmitted until the ACK (timers G/H)
           -> ACK -> events.confirmed(dialog) ... BYE either way

Around that flow it implements what a trunk or a PBX expects of a UAS:
CANCEL before the answer (200, then 487 to the INVITE, and the handler's
coroutine is cancelled), OPTIONS keep-alives, re-INVITE (hold/unhold) through
``DialogEvents.reinvite``, SIP INFO DTMF, NOTIFY for the REFER it sends, 481
for requests outside any dialog, 405/501 for methods it does not take, 420
for extensions it does not support, and 482 for a looped or merged INVITE.

Admission happens before any state is created: a source outside
``SipSettings.allow`` gets a stateless 403 (UDP) or has its TCP connection
closed at once; with ``users`` set, an INVITE without valid digest
credentials gets 401 (``media.sip.auth``); past ``max_calls``, 486.

Robustness: every datagram and every TCP frame goes through the strict
parser (``media.sip.messages``); malformed requests get 400 when a Via can
be read and are dropped otherwise; TCP framing is bounded per connection;
idle connections that carry no call are closed; the number of transactions
and connections is bounded; a handler that does not answer within
``answer_timeout_s`` gets the call refused with 480. Responses always go to
the source address of the request (RFC 3261 18.2.2 ``received``, RFC 3581
``rport``), so the server cannot be used to reflect traffic elsewhere.

Every task the server starts (one per ringing call for the answer, the
handler's own coroutine, BYEs after a missing ACK) is owned and reaped by
``aclose()``, which also BYEs every answered call with cause ``"shutdown"``.
Log lines carry the method, the status code and a Call-ID prefix; never a
message body, a DTMF digit or credentials.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import logging
import socket
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sipmessage import Via
from sipmessage.parameters import Parameters

from media.sip.auth import DEFAULT_NONCE_TTL_S, AuthOutcome, DigestAuthenticator
from media.sip.dialogs import (
    Dialog,
    DialogEvents,
    DialogState,
    OutgoingRequest,
    parse_dtmf,
    parse_sipfrag_status,
)
from media.sip.flows import Flow, TcpConnection, UdpEndpoint, UdpFlow
from media.sip.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MalformedMessageError,
    SipRejection,
    SipRequest,
    SipResponse,
    call_ref,
    make_request,
    make_response,
    make_stateless_response,
    new_branch,
    parse_message,
    random_token,
    response_address,
)
from media.sip.transactions import (
    DEFAULT_MAX_TRANSACTIONS,
    InviteServerTransaction,
    ServerTransaction,
    Timers,
    TransactionClosedError,
    TransactionLayer,
    TransactionLimitError,
    TransactionState,
    TransactionTimeoutError,
    TransportError,
)

__all__ = [
    "LOOPBACK",
    "Acceptance",
    "CallHandler",
    "IncomingCall",
    "SipRejection",
    "SipServer",
    "SipSettings",
    "SipStats",
]

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "NOTIFY")
"""Methods this server accepts (the ``Allow`` header)."""
KNOWN_METHODS = frozenset(
    ("REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "UPDATE", "PRACK", "REFER")
)
"""Methods answered 405 (known, not allowed) rather than 501 (unknown)."""
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset()
"""Option tags a ``Require`` header may name (none: 100rel, timer... get 420)."""
FORWARDED_HEADERS = ("User-Agent", "Subject", "P-Asserted-Identity", "Diversion", "Organization")
"""Headers of an INVITE passed to the handler in ``IncomingCall.headers``."""
MAX_FORWARDED_HEADER = 256
"""A TCP peer that lets this much of our output pile up is disconnected."""
DTMF_TYPES = ("application/dtmf-relay", "application/dtmf")
_ALLOW = ", ".join(ALLOWED_METHODS)


@dataclass(frozen=True)
class SipSettings:
    """Where the server listens and how strict it is. Timers are configurable for tests."""

    host: str = "127.0.0.1"
    port: int = 5060
    """UDP and TCP share it; 0 picks an ephemeral port (see ``SipServer.bound``)."""
    public_ip: str | None = None
    """Address put in Contact/Via (and, by the integration, in SDP) behind NAT."""
    allow: tuple[IPNetwork, ...] = LOOPBACK
    """Source networks allowed to send requests (everyone else: 403)."""
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Digest users -> passwords; empty: no authentication."""
    realm: str = "parley"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Larger messages get 400 (or are dropped when no reply can be addressed)."""
    t1_s: float = 0.5
    timer_h_s: float = 32.0
    """64*T1: how long a final response waits for its ACK (also timers F, J, L)."""
    user_agent: str = "parley"
    t2_s: float = 4.0
    t4_s: float = 5.0
    answer_timeout_s: float = 60.0
    """How long the handler may take to answer an INVITE before it is refused with 480."""
    tcp_idle_s: float = 120.0
    """A TCP connection that carries no call and no message for this long is closed."""
    max_tcp_connections: int = 256
    max_transactions: int = DEFAULT_MAX_TRANSACTIONS
    nonce_ttl_s: float = DEFAULT_NONCE_TTL_S
    shutdown_bye_wait_s: float = 2.0
    """How long ``aclose()`` waits for the answers to its BYEs before closing anyway."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("the SIP port must be in 0-65535")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if min(self.answer_timeout_s, self.tcp_idle_s, self.nonce_ttl_s) <= 0 or (
            self.shutdown_bye_wait_s < 0
        ):
            raise ValueError("timeouts must be positive")
        if self.max_tcp_connections < 1 or self.max_transactions < 1:
            raise ValueError("connection and transaction limits must be at least 1")
        if '"' in self.realm or "\\" in self.realm:
            raise ValueError("the realm cannot contain quotes or backslashes")
        self.timers()  # validates the timer values

    def timers(self) -> Timers:
        """The transaction timers these settings describe."""
        return Timers(t1=self.t1_s, t2=self.t2_s, t4=self.t4_s, timeout=self.timer_h_s)


@dataclass(frozen=True)
class IncomingCall:
    """An INVITE the handler is asked to answer."""

    call_id: str
    from_uri: str
    to_uri: str
    from_display: str | None
    remote: tuple[str, int]
    """Source address of the INVITE."""
    transport: str
    """``"udp"`` or ``"tcp"``."""
    offer_sdp: str
    headers: Mapping[str, str]
    """A few informative headers (``FORWARDED_HEADERS``); never credentials."""


@dataclass(frozen=True)
class Acceptance:
    """The handler's answer: the SDP answer and the listener of the call's dialog."""

    answer_sdp: str
    events: DialogEvents


class CallHandler(Protocol):
    """Decides about incoming calls."""

    async def invite(self, call: IncomingCall) -> Acceptance:
        """Answer (return an ``Acceptance``) or refuse (raise ``SipRejection``).

        May take time (the caller hears ringing). If the caller CANCELs
        meanwhile, or the server closes, the coroutine is cancelled.
        """
        ...


@dataclass
class SipStats:
    """Counters of the server's traffic (for metrics)."""

    responses_sent: dict[int, int] = field(default_factory=dict)
    """Responses sent by status code (first sends, not retransmissions)."""
    requests_received: dict[str, int] = field(default_factory=dict)
    """Requests received by method (unknown ones as ``OTHER``), retransmissions included."""
    requests_sent: dict[str, int] = field(default_factory=dict)
    malformed_dropped: int = 0
    """Malformed or oversized messages dropped without a reply."""
    malformed_answered: int = 0
    """Malformed or oversized requests answered 400 (also in ``responses_sent``)."""
    retransmissions_sent: int = 0
    retransmissions_absorbed: int = 0


class _ServerState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(eq=False)
class _PendingCall:
    """An INVITE being answered by the handler (ringing)."""

    request: SipRequest
    transaction: InviteServerTransaction
    flow: Flow
    local_tag: str
    call: IncomingCall
    task: asyncio.Task[None] | None = None
    handler_task: asyncio.Task[Acceptance] | None = None
    cancelled: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.request.call_id, self.request.from_tag)


class _DialogHost:
    """The server as its dialogs see it (``media.sip.dialogs.DialogHost``)."""

    def __init__(self, server: SipServer) -> None:
        self._server = server

    async def send_in_dialog(self, dialog: Dialog, request: OutgoingRequest) -> int:
        return await self._server._send_in_dialog(dialog, request)

    def release(self, dialog: Dialog) -> None:
        self._server._release(dialog)


class SipServer:
    """A SIP user-agent server for incoming calls (see the module docstring)."""

    def __init__(
        self, settings: SipSettings, handler: CallHandler, *, max_calls: int | None = None
    ) -> None:
        if max_calls is not None and max_calls < 0:
            raise ValueError("max_calls cannot be negative")
        self.settings = settings
        self._handler = handler
        self._max_calls = max_calls
        self._layer = TransactionLayer(
            settings.timers(), max_transactions=settings.max_transactions
        )
        self._auth = (
            DigestAuthenticator(settings.realm, settings.users, nonce_ttl_s=settings.nonce_ttl_s)
            if settings.users
            else None
        )
        self._host = _DialogHost(self)
        self._stats = SipStats()
        self._state = _ServerState.NEW
        self._udp: UdpEndpoint | None = None
        self._tcp: asyncio.Server | None = None
        self._bound: tuple[str, int] | None = None
        self._connections: set[TcpConnection] = set()
        self._pending: dict[tuple[str, str], _PendingCall] = {}
        self._dialogs: dict[tuple[str, str, str], Dialog] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on the same port; raises ``OSError`` if it is taken."""
        if self._state is not _ServerState.NEW:
            raise RuntimeError("the SIP server can only be started once")
        loop = asyncio.get_running_loop()
        host, port = self.settings.host, self.settings.port
        attempts = 5 if port == 0 else 1  # an ephemeral UDP port may be taken on TCP
        for attempt in range(attempts):
            udp_transport, endpoint = await loop.create_datagram_endpoint(
                lambda: UdpEndpoint(self), local_addr=(host, port)
            )
            bound_port = int(udp_transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await loop.create_server(
                    lambda: TcpConnection(
                        self,
                        max_message_bytes=self.settings.max_message_bytes,
                        idle_s=self.settings.tcp_idle_s,
                    ),
                    host,
                    bound_port,
                )
            except OSError:
                udp_transport.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp = endpoint
            self._bound = (host, bound_port)
            break
        self._state = _ServerState.RUNNING
        log.info("SIP listening on %s:%d (UDP and TCP)", host, self.bound[1])

    @property
    def bound(self) -> tuple[str, int]:
        """The host and port actually bound (UDP and TCP share them)."""
        if self._bound is None:
            raise RuntimeError("the SIP server is not started")
        return self._bound

    @property
    def stats(self) -> SipStats:
        """Live traffic counters."""
        self._stats.retransmissions_sent = self._layer.retransmissions_sent
        self._stats.retransmissions_absorbed = self._layer.retransmissions_absorbed
        return self._stats

    def dialogs(self) -> list[Dialog]:
        """The answered calls that have not ended (early: answered, ACK not yet received)."""
        return [d for d in self._dialogs.values() if d.state is not DialogState.TERMINATED]

    async def aclose(self) -> None:
        """Close the server; idempotent.

        Ringing calls are refused with 503 (their handlers cancelled); every
        answered call ends with cause ``"shutdown"`` and a BYE, whose answers
        are awaited for at most ``shutdown_bye_wait_s``; then the sockets
        close and every task is reaped.
        """
        if self._state is _ServerState.NEW:
            self._state = _ServerState.CLOSED
            self._closed.set()
            return
        if self._state is not _ServerState.RUNNING:
            await self._closed.wait()
            return
        self._state = _ServerState.CLOSING
        try:
            ringing = [p.task for p in self._pending.values() if p.task is not None]
            for task in ringing:
                task.cancel()
            if ringing:
                await asyncio.wait(ringing)
            byes = [
                self._spawn(dialog._bye("shutdown"), f"sip-bye-{call_ref(dialog.call_id)}")
                for dialog in list(self._dialogs.values())
                if dialog._finish("shutdown")
            ]
            if byes:  # BYEs still unanswered then end with the transaction layer
                await asyncio.wait(byes, timeout=self.settings.shutdown_bye_wait_s)
        finally:
            self._layer.close()
            for connection in list(self._connections):
                connection.close()
            if self._tcp is not None:
                self._tcp.close()
            if self._udp is not None:
                self._udp.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            if self._tcp is not None:
                await self._tcp.wait_closed()
            self._state = _ServerState.CLOSED
            self._closed.set()
            log.info("SIP server closed")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if task.get_name().startswith("sip-handler"):
                return  # the handler's outcome is read (and logged) by its answer task
            log.error("SIP task %s failed", task.get_name(), exc_info=exc)

    # --- transport side -----------------------------------------------------------

    def _allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.settings.allow)

    def admit_connection(self, connection: TcpConnection) -> bool:
        """See ``FlowOwner``: refuse sources outside ``allow`` and past the bound."""
        if self._state is not _ServerState.RUNNING or not self._allowed(connection.remote[0]):
            log.info("refused a TCP connection from %s:%d", *connection.remote)
            return False
        if len(self._connections) >= self.settings.max_tcp_connections:
            log.warning("refused a TCP connection: %d open", len(self._connections))
            return False
        self._connections.add(connection)
        return True

    def connection_lost(self, connection: TcpConnection) -> None:
        """See ``FlowOwner``."""
        self._connections.discard(connection)

    def flow_in_use(self, connection: TcpConnection) -> bool:
        """See ``FlowOwner``: a dialog or a ringing call still answers on it."""
        return any(d.flow is connection for d in self._dialogs.values()) or any(
            p.flow is connection for p in self._pending.values()
        )

    def _reply_flow(self, request: SipRequest, flow: Flow) -> Flow:
        if isinstance(flow, UdpFlow):
            return flow.to(response_address(request.top_via, flow.remote))
        return flow

    def _local_host(self, flow: Flow) -> str:
        """Our address as the peer should see it (Contact, Via)."""
        host = self.settings.public_ip or self.settings.host
        if _is_unspecified(host):
            if isinstance(flow, TcpConnection):
                host = flow.local_host
            else:
                host = _route_source(flow.remote[0])
        return f"[{host}]" if ":" in host else host

    def _contact(self, flow: Flow) -> str:
        suffix = ";transport=tcp" if flow.reliable else ""
        return f"<sip:{self._local_host(flow)}:{self.bound[1]}{suffix}>"

    def _via(self, flow: Flow, branch: str) -> Via:
        parameters = Parameters(rport=None, branch=branch)
        return Via(flow.transport.upper(), self._local_host(flow), self.bound[1], parameters)

    def receive(self, data: bytes, flow: Flow) -> None:
        """Every received message (a datagram, or a frame cut from a TCP stream)."""
        if self._state in (_ServerState.NEW, _ServerState.CLOSED):
            return
        if not data.strip(b"\r\n\t \x00"):
            return  # keep-alive
        try:
            message = parse_message(
                data, max_bytes=self.settings.max_message_bytes, stream=flow.reliable
            )
        except MalformedMessageError as exc:
            self.malformed(exc, flow)
            return
        allowed = self._allowed(flow.remote[0])
        if isinstance(message, SipResponse):
            if not allowed or not self._layer.receive_response(message):
                log.debug("dropped a stray %d response", message.code)
            return
        method = message.method
        key = method if method in ALLOWED_METHODS or method in KNOWN_METHODS else "OTHER"
        self._stats.requests_received[key] = self._stats.requests_received.get(key, 0) + 1
        message.stamp_via(flow.remote)
        reply_flow = self._reply_flow(message, flow)
        if not allowed:
            log.info(
                "%s call=%s from %s: source not allowed",
                method,
                call_ref(message.call_id),
                flow.remote[0],
            )
            if method != "ACK":
                self._respond_stateless(message, reply_flow, 403)
            return
        try:
            self._receive_request(message, flow, reply_flow)
        except Exception:
            log.exception("%s call=%s: processing failed", method, call_ref(message.call_id))
            if method != "ACK":
                self._respond_stateless(message, reply_flow, 500)

    def malformed(self, exc: MalformedMessageError, flow: Flow) -> None:
        """See ``FlowOwner``: 400 when the message names where to answer, else dropped."""
        context = exc.reply_to
        if context is None or not self._allowed(flow.remote[0]):
            self._stats.malformed_dropped += 1
            log.debug("dropped a malformed message from %s: %s", flow.remote[0], exc.reason)
            return
        self._stats.malformed_answered += 1
        log.debug("answering %d to a malformed request: %s", exc.code, exc.reason)
        response = make_stateless_response(
            context, exc.code, source=flow.remote, server=self.settings.user_agent
        )
        target: Flow = flow
        if isinstance(flow, UdpFlow):
            target = flow.to(response_address(context.vias[0], flow.remote))
        self._send_stateless(target, bytes(response), exc.code)

    def _send_stateless(self, flow: Flow, data: bytes, code: int) -> None:
        self._count_response(code)
        try:
            flow.send(data)
        except TransportError as exc:
            log.debug("could not send a %d: %s", code, exc)

    def _count_response(self, code: int) -> None:
        self._stats.responses_sent[code] = self._stats.responses_sent.get(code, 0) + 1

    def _respond_stateless(
        self,
        request: SipRequest,
        flow: Flow,
        code: int,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        response = make_response(
            request, code, to_tag=random_token(), headers=headers, server=self.settings.user_agent
        )
        self._send_stateless(flow, bytes(response), code)

    def _respond(
        self,
        transaction: ServerTransaction,
        code: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        request = transaction.request
        if to_tag is None and code > 100 and not request.to_tag:
            to_tag = random_token()
        response = make_response(
            request,
            code,
            reason,
            to_tag=to_tag,
            headers=headers,
            body=body,
            content_type=content_type,
            server=self.settings.user_agent,
        )
        self._count_response(code)
        level = logging.DEBUG if request.method == "OPTIONS" or code < 200 else logging.INFO
        log.log(level, "%s call=%s -> %d", request.method, call_ref(request.call_id), code)
        transaction.respond(response)

    # --- requests -----------------------------------------------------------------

    def _receive_request(self, request: SipRequest, flow: Flow, reply_flow: Flow) -> None:
        found = self._layer.find_server(request)
        if found is not None:
            if request.method != "ACK":
                found.receive_retransmission()
                return
            if isinstance(found, InviteServerTransaction) and found.state in (
                TransactionState.COMPLETED,
                TransactionState.CONFIRMED,
            ):
                found.receive_ack()
                return
        if request.method == "ACK":
            dialog = self._dialogs.get((request.call_id, request.to_tag, request.from_tag))
            if dialog is None:
                log.debug("ACK call=%s: no dialog", call_ref(request.call_id))
            else:
                dialog._receive_ack(request.cseq.sequence)
            return
        try:
            transaction = self._layer.create_server(request, reply_flow)
        except TransactionLimitError:
            log.warning("%s refused: too many transactions", request.method)
            self._respond_stateless(request, reply_flow, 503, [("Retry-After", "5")])
            return
        if request.method == "CANCEL":
            self._receive_cancel(request, transaction)
            return
        unsupported = [tag for tag in request.message.require if tag not in SUPPORTED_EXTENSIONS]
        if unsupported:
            self._respond(transaction, 420, headers=[("Unsupported", ", ".join(unsupported))])
            return
        if request.to_tag:
            dialog = self._dialogs.get((request.call_id, request.to_tag, request.from_tag))
            if dialog is None:
                self._respond(transaction, 481)
            else:
                self._in_dialog(dialog, request, transaction, flow)
            return
        if request.method == "INVITE":
            assert isinstance(transaction, InviteServerTransaction)
            self._new_call(request, transaction, flow)
        elif request.method == "OPTIONS":
            self._respond(transaction, 200, headers=self._capabilities())
        elif request.method in ALLOWED_METHODS:
            self._respond(transaction, 481)  # BYE, INFO, NOTIFY need a dialog
        elif request.method in KNOWN_METHODS:
            self._respond(transaction, 405, headers=[("Allow", _ALLOW)])
        else:
            self._respond(transaction, 501)

    def _capabilities(self) -> list[tuple[str, str]]:
        return [("Allow", _ALLOW), ("Accept", "application/sdp")]

    def _receive_cancel(self, cancel: SipRequest, transaction: ServerTransaction) -> None:
        invite = self._layer.find_invite(cancel)
        if invite is None:
            self._respond(transaction, 481)
            return
        pending = self._pending.get((cancel.call_id, cancel.from_tag))
        if pending is not None and pending.transaction is not invite:
            pending = None
        to_tag = pending.local_tag if pending is not None else None
        if to_tag is None:
            # answered already: the CANCEL's 200 carries the dialog's tag (RFC 3261 9.2),
            # so a BYE the caller then sends with it finds the dialog
            to_tag = next(
                (
                    d.local_tag
                    for d in self._dialogs.values()
                    if d.call_id == cancel.call_id and d.remote_tag == cancel.from_tag
                ),
                None,
            )
        self._respond(transaction, 200, to_tag=to_tag)
        if invite.state is not TransactionState.PROCEEDING:
            return  # already answered: the CANCEL has no effect (RFC 3261 9.2)
        self._respond(invite, 487, to_tag=to_tag)
        if pending is not None:
            pending.cancelled = True
            if pending.handler_task is not None:
                pending.handler_task.cancel()

    def _active_calls(self) -> int:
        return len(self._pending) + len(self.dialogs())

    def _new_call(
        self, request: SipRequest, transaction: InviteServerTransaction, flow: Flow
    ) -> None:
        if self._state is not _ServerState.RUNNING:
            self._respond(transaction, 503)
            return
        if self._max_calls is not None and self._active_calls() >= self._max_calls:
            self._respond(transaction, 486)
            return
        key = (request.call_id, request.from_tag)
        if key in self._pending or any(
            d.call_id == request.call_id and d.remote_tag == request.from_tag
            for d in self._dialogs.values()
        ):
            self._respond(transaction, 482)  # a merged or looped request (RFC 3261 8.2.2.2)
            return
        if self._auth is not None:
            outcome = self._auth.verify("INVITE", request.uri, request.header("Authorization"))
            if outcome is not AuthOutcome.OK:
                log.info("INVITE call=%s: digest %s", call_ref(request.call_id), outcome.value)
                challenge = self._auth.challenge(stale=outcome is AuthOutcome.STALE)
                self._respond(transaction, 401, headers=[("WWW-Authenticate", str(challenge))])
                return
        if not request.body:
            self._respond(transaction, 488)  # offerless INVITEs are not supported
            return
        if request.content_type != "application/sdp":
            self._respond(transaction, 415, headers=[("Accept", "application/sdp")])
            return
        try:
            offer = request.body.decode("utf-8")
        except UnicodeDecodeError:
            self._respond(transaction, 400, "Bad Request (SDP is not UTF-8)")
            return

        self._respond(transaction, 100)
        local_tag = random_token()
        call = IncomingCall(
            call_id=request.call_id,
            from_uri=str(request.from_address.uri),
            to_uri=str(request.to_address.uri),
            from_display=request.from_address.name or None,
            remote=flow.remote,
            transport=flow.transport,
            offer_sdp=offer,
            headers=_forwarded_headers(request),
        )
        pending = _PendingCall(request, transaction, flow, local_tag, call)
        self._pending[key] = pending
        log.info(
            "INVITE call=%s from %s:%d (%s)",
            call_ref(request.call_id),
            *flow.remote,
            flow.transport,
        )
        self._respond(
            transaction, 180, to_tag=local_tag, headers=[("Contact", self._contact(flow))]
        )
        pending.task = self._spawn(self._answer(pending), f"sip-answer-{call_ref(call.call_id)}")

    async def _answer(self, pending: _PendingCall) -> None:
        """Run the handler for a ringing call and send the final response."""
        handler_task = self._spawn(
            self._handler.invite(pending.call), f"sip-handler-{call_ref(pending.call.call_id)}"
        )
        pending.handler_task = handler_task
        timed_out = False
        try:
            done, _ = await asyncio.wait({handler_task}, timeout=self.settings.answer_timeout_s)
            if not done:
                timed_out = True
                handler_task.cancel()
                await asyncio.wait({handler_task})
        except asyncio.CancelledError:
            handler_task.cancel()
            if pending.transaction.state is TransactionState.PROCEEDING:
                self._respond(pending.transaction, 503, to_tag=pending.local_tag)
            raise
        finally:
            if self._pending.get(pending.key) is pending:
                del self._pending[pending.key]
        self._conclude(pending, handler_task, timed_out)

    def _conclude(
        self, pending: _PendingCall, handler_task: asyncio.Task[Acceptance], timed_out: bool
    ) -> None:
        transaction, ref = pending.transaction, call_ref(pending.call.call_id)
        outcome = None if handler_task.cancelled() else handler_task.exception()
        if pending.cancelled or transaction.state is not TransactionState.PROCEEDING:
            log.info("INVITE call=%s: cancelled by the caller", ref)
            if outcome is None and not handler_task.cancelled():
                # The handler had already answered when the CANCEL was read: its call is
                # never accepted, so its listener must hear that it ended.
                acceptance = handler_task.result()
                if isinstance(acceptance, Acceptance):
                    try:
                        acceptance.events.ended("cancel")
                    except Exception:
                        log.exception("INVITE call=%s: the listener failed", ref)
            return
        if timed_out:
            self._respond(transaction, 480, "No Answer", to_tag=pending.local_tag)
        elif handler_task.cancelled():
            self._respond(transaction, 500, to_tag=pending.local_tag)
        elif isinstance(outcome, SipRejection):
            self._respond(
                transaction,
                outcome.code,
                outcome.reason,
                to_tag=pending.local_tag,
                headers=outcome.headers.items(),
            )
        elif outcome is not None:
            log.error("INVITE call=%s: the call handler failed", ref, exc_info=outcome)
            self._respond(transaction, 500, to_tag=pending.local_tag)
        else:
            acceptance = handler_task.result()
            if not isinstance(acceptance, Acceptance) or not acceptance.answer_sdp:
                log.error("INVITE call=%s: the handler returned no SDP answer", ref)
                self._respond(transaction, 500, to_tag=pending.local_tag)
                return
            self._accept(pending, acceptance)

    def _accept(self, pending: _PendingCall, acceptance: Acceptance) -> None:
        contact = self._contact(pending.flow)
        dialog = Dialog(
            host=self._host,
            request=pending.request,
            local_tag=pending.local_tag,
            contact=contact,
            flow=pending.flow,
            events=acceptance.events,
            local_sdp=acceptance.answer_sdp,
        )
        self._dialogs[dialog.key] = dialog
        self._send_answer(dialog, pending.transaction, acceptance.answer_sdp)

    def _send_answer(
        self, dialog: Dialog, transaction: InviteServerTransaction, answer_sdp: str
    ) -> None:
        """200 OK with the SDP answer, retransmitted until the ACK (timers G and H)."""
        dialog._expect_ack(transaction.request.cseq.sequence, transaction)
        transaction.on_failure = functools.partial(self._answer_failed, dialog)
        self._respond(
            transaction,
            200,
            to_tag=dialog.local_tag,
            headers=[("Contact", dialog.contact), *self._capabilities()],
            body=answer_sdp.encode("utf-8"),
            content_type="application/sdp",
        )

    def _answer_failed(self, dialog: Dialog, reason: str) -> None:
        """A 2xx was never acknowledged: end the dialog (with BYE when it can be sent)."""
        if not dialog._finish(reason):
            return
        if reason == "no ack":
            self._spawn(dialog._bye(), f"sip-bye-{call_ref(dialog.call_id)}")
        else:
            dialog._release()

    def _in_dialog(
        self, dialog: Dialog, request: SipRequest, transaction: ServerTransaction, flow: Flow
    ) -> None:
        if request.cseq.sequence <= dialog.remote_cseq:
            self._respond(transaction, 500, "CSeq Out of Order")
            return
        dialog.remote_cseq = request.cseq.sequence
        dialog._update_target(request, flow)
        method = request.method
        if method == "BYE":
            self._respond(transaction, 200)
            log.info("BYE call=%s: the caller hung up", call_ref(dialog.call_id))
            dialog._end_remote("bye")
        elif dialog.state is DialogState.TERMINATED:
            self._respond(transaction, 481)  # our BYE is on its way
        elif method == "INVITE":
            assert isinstance(transaction, InviteServerTransaction)
            self._reinvite(dialog, request, transaction)
        elif method == "INFO":
            self._info(dialog, request, transaction)
        elif method == "OPTIONS":
            self._respond(transaction, 200, headers=self._capabilities())
        elif method == "NOTIFY":
            self._notify(dialog, request, transaction)
        elif method in KNOWN_METHODS:
            self._respond(transaction, 405, headers=[("Allow", _ALLOW)])
        else:
            self._respond(transaction, 501)

    def _reinvite(
        self, dialog: Dialog, request: SipRequest, transaction: InviteServerTransaction
    ) -> None:
        if not request.body:
            answer = dialog.local_sdp  # no offer: ours again (the ACK carries the answer)
        elif request.content_type != "application/sdp":
            self._respond(transaction, 415, headers=[("Accept", "application/sdp")])
            return
        else:
            try:
                offer = request.body.decode("utf-8")
            except UnicodeDecodeError:
                self._respond(transaction, 400, "Bad Request (SDP is not UTF-8)")
                return
            try:
                answer = dialog.events.reinvite(offer)
            except SipRejection as rejection:
                self._respond(
                    transaction, rejection.code, rejection.reason, headers=rejection.headers.items()
                )
                return
            except Exception:
                log.exception("re-INVITE call=%s: the listener failed", call_ref(dialog.call_id))
                self._respond(transaction, 500)
                return
            if not isinstance(answer, str) or not answer:
                self._respond(transaction, 500)
                return
        dialog.local_sdp = answer
        self._send_answer(dialog, transaction, answer)

    def _info(self, dialog: Dialog, request: SipRequest, transaction: ServerTransaction) -> None:
        if not request.body:
            self._respond(transaction, 200)  # an empty INFO is a keep-alive
            return
        content_type = request.content_type or ""
        if content_type not in DTMF_TYPES:
            self._respond(transaction, 415, headers=[("Accept", ", ".join(DTMF_TYPES))])
            return
        try:
            digit, duration_ms = parse_dtmf(content_type, request.body)
        except ValueError:
            self._respond(transaction, 400, "Bad Request (DTMF body)")
            return
        self._respond(transaction, 200)
        try:
            dialog.events.dtmf(digit, duration_ms)
        except Exception:
            log.exception("INFO call=%s: the dtmf listener failed", call_ref(dialog.call_id))

    def _notify(self, dialog: Dialog, request: SipRequest, transaction: ServerTransaction) -> None:
        event = (request.header("Event") or "").split(";", 1)[0].strip().lower()
        if event != "refer":
            self._respond(transaction, 489)
            return
        self._respond(transaction, 200)
        status = parse_sipfrag_status(request.body)
        if status is not None:
            dialog.transfer_status = status
            log.info("NOTIFY call=%s: transfer %d", call_ref(dialog.call_id), status)

    # --- dialogs' requests --------------------------------------------------------

    async def _send_in_dialog(self, dialog: Dialog, outgoing: OutgoingRequest) -> int:
        flow = cast(Flow, dialog.flow)
        branch = new_branch()
        request = make_request(
            outgoing.method,
            outgoing.uri,
            via=self._via(flow, branch),
            headers=outgoing.headers,
            body=outgoing.body,
            content_type=outgoing.content_type,
            user_agent=self.settings.user_agent,
        )
        sent = self._stats.requests_sent
        sent[outgoing.method] = sent.get(outgoing.method, 0) + 1
        try:
            transaction = self._layer.create_client(branch, request, flow)
            response = await transaction.response()
        except TransactionTimeoutError:
            return 408
        except (TransportError, TransactionClosedError, TransactionLimitError):
            return 503
        return response.code

    def _release(self, dialog: Dialog) -> None:
        if self._dialogs.get(dialog.key) is dialog:
            del self._dialogs[dialog.key]


def _forwarded_headers(request: SipRequest) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in FORWARDED_HEADERS:
        value = request.header(name)
        if value is not None:
            found[name] = value[:MAX_FORWARDED_HEADER]
    return found


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name: used as it is


@functools.lru_cache(maxsize=256)
def _route_source(remote_host: str) -> str:
    """The local address the kernel would use to reach ``remote_host`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote_host, 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1" if family == socket.AF_INET else "::1"
