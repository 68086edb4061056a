"""SIP transactions (RFC 3261 section 17, RFC 6026), asyncio-native.

Server transactions make a request's processing idempotent against the
network's retransmissions:

- ``InviteServerTransaction``: *Proceeding* (the last provisional response is
  resent for each retransmitted INVITE) -> on a 2xx, *Accepted*: the 2xx is
  retransmitted at T1, 2T1, ... capped at T2 until the dialog layer reports
  the ACK (``acknowledge``), and timer H (64*T1) gives up with
  ``on_failure("no ack")``; retransmitted INVITEs are absorbed until timer L
  -> on a 3xx-6xx, *Completed*: retransmitted over UDP (timer G) until the
  ACK, which matches this transaction by branch (*Confirmed*, timer I);
  timer H ends it without an ACK.
- ``NonInviteServerTransaction``: *Trying*/*Proceeding* -> *Completed*: the
  final response is cached and resent for each retransmitted request until
  timer J (64*T1 over UDP, 0 over TCP).

Client transactions are only the non-INVITE kind (the server sends BYE,
REFER): timer E retransmits over UDP (T1 doubling to T2, T2 once a
provisional arrived), timer F (64*T1) times out, timer K absorbs
retransmitted final responses.

Timers are ``loop.call_later`` handles owned by their transaction and
cancelled when it terminates, so a transaction never outlives its state
machine and ``TransactionLayer.close()`` leaves nothing scheduled. Sends go
through a ``Flow`` (a UDP peer address or a TCP connection) whose ``send``
is synchronous and raises ``TransportError``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sipmessage import Request, Response

from media.sip.messages import MAGIC_COOKIE, SipError, SipRequest, SipResponse, call_ref

log = logging.getLogger(__name__)

DEFAULT_MAX_TRANSACTIONS = 4096
"""Server plus client transactions alive at once; past it new requests get 503."""


class TransportError(SipError):
    """A message could not be sent (the TCP connection is gone, the socket failed)."""


class TransactionTimeoutError(SipError):
    """A client transaction got no final response before timer F."""


class TransactionClosedError(SipError):
    """The transaction layer closed (server shutdown) before a final response."""


class TransactionLimitError(SipError):
    """Too many transactions alive; the request is refused with 503."""


class Flow(Protocol):
    """Where messages of a transaction go: a UDP peer address or a TCP connection."""

    @property
    def transport(self) -> str:
        """``"udp"`` or ``"tcp"``."""
        ...

    @property
    def remote(self) -> tuple[str, int]:
        """The peer's address."""
        ...

    @property
    def reliable(self) -> bool:
        """True for a stream transport (no retransmissions of non-2xx finals)."""
        ...

    def send(self, data: bytes) -> None:
        """Send one message; raise ``TransportError`` if it cannot be sent."""
        ...


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 timer values (section 17 and table 4), configurable for tests."""

    t1: float = 0.5
    """RTT estimate: first retransmission interval."""
    t2: float = 4.0
    """Cap of the retransmission interval."""
    t4: float = 5.0
    """How long the network may hold a message (timers I and K over UDP)."""
    timeout: float = 32.0
    """64*T1: timers B, F, H, J and L."""

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2 or self.t4 < 0 or self.timeout <= 0:
            raise ValueError("timers need 0 < T1 <= T2, T4 >= 0 and a positive timeout")


class TransactionState(enum.Enum):
    """States of RFC 3261 / RFC 6026 transactions (each kind uses a subset)."""

    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class _Timers:
    """Named ``call_later`` handles; restarting a name cancels its previous handle."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def start(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.stop(name)
        self._handles[name] = self._loop.call_later(delay, self._fire, name, callback)

    def _fire(self, name: str, callback: Callable[[], None]) -> None:
        self._handles.pop(name, None)
        callback()

    def stop(self, name: str) -> None:
        if (handle := self._handles.pop(name, None)) is not None:
            handle.cancel()

    def stop_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()


ServerKey = tuple[str, ...]


class _ServerTransaction:
    """What the two server transaction kinds share: a key, a flow, timers, a state."""

    def __init__(
        self,
        key: ServerKey,
        request: SipRequest,
        flow: Flow,
        timers: Timers,
        layer: TransactionLayer,
        initial: TransactionState,
    ) -> None:
        self.key = key
        self.request = request
        self.flow = flow
        self._config = timers
        self._layer = layer
        self._timers = _Timers()
        self._state = initial
        self._last: bytes | None = None
        self.final_code: int | None = None
        """Status code of the final response sent (None before it)."""

    @property
    def state(self) -> TransactionState:
        """The transaction's current state."""
        return self._state

    def _send(self, data: bytes) -> bool:
        try:
            self.flow.send(data)
        except TransportError as exc:
            log.info(
                "%s call=%s: cannot send a response (%s)",
                self.request.method,
                call_ref(self.request.call_id),
                exc,
            )
            self._transport_failed()
            return False
        return True

    def _transport_failed(self) -> None:
        self._terminate()

    def _resend(self) -> bool:
        """Send the last response again; False if the transport failed (now terminated)."""
        if self._last is None:
            return True
        if not self._send(self._last):
            return False
        self._layer.retransmissions_sent += 1
        return True

    def _terminate(self) -> None:
        if self._state is TransactionState.TERMINATED:
            return
        self._state = TransactionState.TERMINATED
        self._timers.stop_all()
        self._layer._forget_server(self)

    def close(self) -> None:
        """Stop every timer and forget the transaction (layer shutdown)."""
        self._terminate()


class NonInviteServerTransaction(_ServerTransaction):
    """RFC 3261 17.2.2: the final response is cached and resent until timer J."""

    def __init__(
        self,
        key: ServerKey,
        request: SipRequest,
        flow: Flow,
        timers: Timers,
        layer: TransactionLayer,
    ) -> None:
        super().__init__(key, request, flow, timers, layer, TransactionState.TRYING)

    def respond(self, response: Response) -> None:
        """Send a response (provisional or final); a final one is cached until timer J."""
        if self._state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            raise RuntimeError(f"the transaction is {self._state.value}; it cannot respond")
        data = bytes(response)
        self._last = data
        if response.code < 200:
            self._state = TransactionState.PROCEEDING
            self._send(data)
            return
        self._state = TransactionState.COMPLETED
        self.final_code = response.code
        if self._send(data):
            wait = 0.0 if self.flow.reliable else self._config.timeout
            self._timers.start("J", wait, self._terminate)

    def receive_retransmission(self) -> None:
        """The same request arrived again: resend the last response, if any."""
        self._layer.retransmissions_absorbed += 1
        self._resend()


class InviteServerTransaction(_ServerTransaction):
    """RFC 3261 17.2.1 with RFC 6026's Accepted state, plus the 2xx retransmission of 13.3.1.4.

    ``on_failure(reason)`` is called once if a 2xx is never acknowledged:
    ``"no ack"`` at timer H, ``"transport error"`` when it cannot be resent.
    """

    def __init__(
        self,
        key: ServerKey,
        request: SipRequest,
        flow: Flow,
        timers: Timers,
        layer: TransactionLayer,
    ) -> None:
        super().__init__(key, request, flow, timers, layer, TransactionState.PROCEEDING)
        self.on_failure: Callable[[str], None] | None = None
        self._acked = False
        self._interval = timers.t1

    @property
    def acknowledged(self) -> bool:
        """True once the ACK for the final response arrived."""
        return self._acked

    def respond(self, response: Response) -> None:
        """Send a response: 1xx keeps Proceeding; a final one starts its retransmissions."""
        if self._state is not TransactionState.PROCEEDING:
            raise RuntimeError(f"the transaction is {self._state.value}; it cannot respond")
        data = bytes(response)
        self._last = data
        if response.code < 200:
            self._send(data)
            return
        self.final_code = response.code
        if response.code < 300:
            self._state = TransactionState.ACCEPTED
            retransmit = True  # 13.3.1.4: the 2xx is retransmitted end to end, on any transport
        else:
            self._state = TransactionState.COMPLETED
            retransmit = not self.flow.reliable
        if not self._send(data):
            return
        if retransmit:
            self._timers.start("G", self._interval, self._retransmit)
        self._timers.start("H", self._config.timeout, self._timeout)

    def _retransmit(self) -> None:
        if self._state not in (TransactionState.ACCEPTED, TransactionState.COMPLETED):
            return
        if not self._resend():
            return
        self._interval = min(self._interval * 2, self._config.t2)
        self._timers.start("G", self._interval, self._retransmit)

    def _timeout(self) -> None:
        failed = self._state is TransactionState.ACCEPTED and not self._acked
        if self._state is TransactionState.COMPLETED:
            log.info(
                "INVITE call=%s: no ACK for the final response", call_ref(self.request.call_id)
            )
        self._terminate()
        if failed:
            self._fail("no ack")

    def _transport_failed(self) -> None:
        failed = self._state is TransactionState.ACCEPTED and not self._acked
        self._terminate()
        if failed:
            self._fail("transport error")

    def _fail(self, reason: str) -> None:
        callback, self.on_failure = self.on_failure, None
        if callback is not None:
            callback(reason)

    def receive_retransmission(self) -> None:
        """A retransmitted INVITE: resend the last response (absorbed once acknowledged)."""
        self._layer.retransmissions_absorbed += 1
        if self._state is TransactionState.CONFIRMED or self._acked:
            return
        self._resend()

    def receive_ack(self) -> None:
        """An ACK matching this transaction's branch (an ACK to a non-2xx final)."""
        if self._state is not TransactionState.COMPLETED:
            self._layer.retransmissions_absorbed += 1
            return
        self._acked = True
        self._state = TransactionState.CONFIRMED
        self._timers.stop("G")
        self._timers.stop("H")
        wait = 0.0 if self.flow.reliable else self._config.t4
        self._timers.start("I", wait, self._terminate)

    def acknowledge(self) -> None:
        """The dialog layer received the ACK for our 2xx: stop retransmitting it.

        The transaction stays in Accepted (absorbing retransmitted INVITEs)
        until timer L, as RFC 6026 asks.
        """
        if self._state is not TransactionState.ACCEPTED or self._acked:
            return
        self._acked = True
        self.on_failure = None
        self._timers.stop("G")

    def abandon(self) -> None:
        """Stop waiting for an ACK without reporting a failure (the dialog already ended)."""
        self.on_failure = None
        if self._state is TransactionState.ACCEPTED:
            self._acked = True
            self._timers.stop("G")


ServerTransaction = NonInviteServerTransaction | InviteServerTransaction


class ClientTransaction:
    """RFC 3261 17.1.2: a non-INVITE client transaction (BYE, REFER).

    ``await response()`` returns the final response, or raises
    ``TransactionTimeoutError`` (timer F), ``TransportError`` or
    ``TransactionClosedError``. The transaction runs on its own timers, so a
    caller that stops waiting does not stop the retransmissions.
    """

    def __init__(
        self,
        branch: str,
        request: Request,
        flow: Flow,
        timers: Timers,
        layer: TransactionLayer,
    ) -> None:
        self.branch = branch
        self.method = request.method
        self.call_id = request.call_id
        self.flow = flow
        self._data = bytes(request)
        self._config = timers
        self._layer = layer
        self._timers = _Timers()
        self._state = TransactionState.TRYING
        self._interval = timers.t1
        loop = asyncio.get_running_loop()
        self._result: asyncio.Future[SipResponse] = loop.create_future()
        # an outcome nobody awaits (the caller went away) must not be reported as lost
        self._result.add_done_callback(_consume)

    @property
    def state(self) -> TransactionState:
        """The transaction's current state."""
        return self._state

    def start(self) -> None:
        """Send the request and start timers E (UDP) and F."""
        try:
            self.flow.send(self._data)
        except TransportError as exc:
            self._finish(exc)
            return
        if not self.flow.reliable:
            self._timers.start("E", self._interval, self._retransmit)
        self._timers.start("F", self._config.timeout, self._timeout)

    async def response(self) -> SipResponse:
        """The final response (see the class docstring for the errors)."""
        return await asyncio.shield(self._result)

    def _retransmit(self) -> None:
        try:
            self.flow.send(self._data)
        except TransportError as exc:
            self._finish(exc)
            return
        self._layer.retransmissions_sent += 1
        if self._state is TransactionState.PROCEEDING:
            self._interval = self._config.t2
        else:
            self._interval = min(self._interval * 2, self._config.t2)
        self._timers.start("E", self._interval, self._retransmit)

    def _timeout(self) -> None:
        log.info("%s call=%s: no final response (timer F)", self.method, call_ref(self.call_id))
        self._finish(TransactionTimeoutError(f"no final response to {self.method}"))

    def receive(self, response: SipResponse) -> None:
        """A response matching this transaction arrived."""
        if self._state in (TransactionState.COMPLETED, TransactionState.TERMINATED):
            self._layer.retransmissions_absorbed += 1
            return
        if response.code < 200:
            self._state = TransactionState.PROCEEDING
            return
        self._state = TransactionState.COMPLETED
        self._timers.stop("E")
        self._timers.stop("F")
        if not self._result.done():
            self._result.set_result(response)
        wait = 0.0 if self.flow.reliable else self._config.t4
        self._timers.start("K", wait, self._terminate)

    def _finish(self, error: Exception) -> None:
        if not self._result.done():
            self._result.set_exception(error)
        self._terminate()

    def _terminate(self) -> None:
        if self._state is TransactionState.TERMINATED:
            return
        self._state = TransactionState.TERMINATED
        self._timers.stop_all()
        self._layer._forget_client(self)

    def close(self) -> None:
        """Stop the timers; a caller still waiting gets ``TransactionClosedError``."""
        self._finish(TransactionClosedError("the SIP server is closing"))


def _consume(future: asyncio.Future[SipResponse]) -> None:
    if not future.cancelled():
        future.exception()


class TransactionLayer:
    """The table of live transactions, and the matching rules of RFC 3261 17.2.3 / 17.1.3.

    Server transactions are keyed by (branch, sent-by, method) with ACK
    mapped to INVITE; requests from RFC 2543 peers (no magic cookie) fall back
    to (Call-ID, From-tag, CSeq number, method, sent-by). Client transactions
    are keyed by (branch, method).
    """

    def __init__(self, timers: Timers, *, max_transactions: int = DEFAULT_MAX_TRANSACTIONS):
        self.timers = timers
        self.max_transactions = max_transactions
        self._server: dict[ServerKey, ServerTransaction] = {}
        self._client: dict[tuple[str, str], ClientTransaction] = {}
        self.retransmissions_sent = 0
        """Responses and requests sent again by the timers or for a retransmitted request."""
        self.retransmissions_absorbed = 0
        """Retransmitted requests and responses that matched a transaction."""

    def __len__(self) -> int:
        return len(self._server) + len(self._client)

    @staticmethod
    def server_key(request: SipRequest, method: str | None = None) -> ServerKey:
        """The key matching ``request`` (``method`` overrides its method, e.g. for CANCEL)."""
        method = method or request.method
        if method == "ACK":
            method = "INVITE"
        via = request.top_via
        sent_by = f"{via.host.lower()}:{via.port or 5060}"
        branch = request.branch
        if branch.startswith(MAGIC_COOKIE):
            return (branch, sent_by, method)
        return (
            "2543",
            request.call_id,
            request.from_tag,
            str(request.cseq.sequence),
            method,
            sent_by,
        )

    def find_server(self, request: SipRequest) -> ServerTransaction | None:
        """The server transaction of a request (a retransmission, or an ACK to a non-2xx)."""
        return self._server.get(self.server_key(request))

    def find_invite(self, cancel: SipRequest) -> InviteServerTransaction | None:
        """The INVITE transaction a CANCEL targets (RFC 3261 9.2), if still alive."""
        found = self._server.get(self.server_key(cancel, "INVITE"))
        return found if isinstance(found, InviteServerTransaction) else None

    def create_server(self, request: SipRequest, flow: Flow) -> ServerTransaction:
        """A new server transaction for ``request`` (not an ACK)."""
        if request.method == "ACK":
            raise ValueError("an ACK does not create a server transaction")
        self._check_room()
        key = self.server_key(request)
        transaction: ServerTransaction
        if request.method == "INVITE":
            transaction = InviteServerTransaction(key, request, flow, self.timers, self)
        else:
            transaction = NonInviteServerTransaction(key, request, flow, self.timers, self)
        self._server[key] = transaction
        return transaction

    def create_client(self, branch: str, request: Request, flow: Flow) -> ClientTransaction:
        """Start a non-INVITE client transaction; ``request``'s top Via carries ``branch``."""
        if request.method in ("INVITE", "ACK"):
            raise ValueError("only non-INVITE client transactions are supported")
        self._check_room()
        transaction = ClientTransaction(branch, request, flow, self.timers, self)
        self._client[(branch, request.method)] = transaction
        transaction.start()
        return transaction

    def receive_response(self, response: SipResponse) -> bool:
        """Route a response to its client transaction; False when none matches."""
        transaction = self._client.get((response.branch, response.cseq.method))
        if transaction is None:
            return False
        transaction.receive(response)
        return True

    def _check_room(self) -> None:
        if len(self) >= self.max_transactions:
            raise TransactionLimitError("too many SIP transactions")

    def _forget_server(self, transaction: _ServerTransaction) -> None:
        if self._server.get(transaction.key) is transaction:
            del self._server[transaction.key]

    def _forget_client(self, transaction: ClientTransaction) -> None:
        key = (transaction.branch, transaction.method)
        if self._client.get(key) is transaction:
            del self._client[key]

    def close(self) -> None:
        """Terminate every transaction: timers cancelled, waiting callers released."""
        for server in list(self._server.values()):
            server.close()
        for client in list(self._client.values()):
            client.close()
