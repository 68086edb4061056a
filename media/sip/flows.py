"""The server's transports: the UDP socket, UDP peer addresses and TCP connections.

Each is a *flow* the server answers on (``Flow``): a UDP peer address or a
TCP connection. Every datagram and every TCP frame goes to the flows' owner
(``FlowOwner``, the ``SipServer``); TCP framing is bounded per connection
(``StreamFramer``), a connection idle for ``idle_s`` that carries no call is
closed, and a peer that stops reading is cut off past
``MAX_TCP_WRITE_BUFFER`` bytes of unsent output.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from media.sip.messages import KeepAlive, MalformedMessageError, StreamFramer
from media.sip.transactions import TransportError

log = logging.getLogger(__name__)

MAX_TCP_WRITE_BUFFER = 256 * 1024
"""Unsent bytes to a TCP peer beyond which it is cut off (it is not reading)."""


class FlowOwner(Protocol):
    """What the flows report to (the ``SipServer``)."""

    def receive(self, data: bytes, flow: Flow) -> None:
        """A datagram or a framed TCP message arrived on ``flow``."""
        ...

    def admit_connection(self, connection: TcpConnection) -> bool:
        """Whether a new TCP connection may stay (its source is allowed, room is left)."""
        ...

    def malformed(self, exc: MalformedMessageError, flow: Flow) -> None:
        """A TCP stream could not be framed."""
        ...

    def connection_lost(self, connection: TcpConnection) -> None:
        """A TCP connection closed."""
        ...

    def flow_in_use(self, connection: TcpConnection) -> bool:
        """Whether a call still needs ``connection`` (it is then kept past its idle time)."""
        ...


class UdpEndpoint(asyncio.DatagramProtocol):
    """The UDP socket: every datagram goes to the server."""

    def __init__(self, owner: FlowOwner) -> None:
        self._server = owner
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._server.receive(data, UdpFlow(self, (str(addr[0]), int(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        if self._transport is None or self._transport.is_closing():
            raise TransportError("the UDP socket is closed")
        try:
            self._transport.sendto(data, address)
        except OSError as exc:
            raise TransportError(str(exc)) from exc

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class UdpFlow:
    """A UDP peer address (a ``Flow``)."""

    __slots__ = ("_endpoint", "_remote")

    def __init__(self, endpoint: UdpEndpoint, remote: tuple[str, int]) -> None:
        self._endpoint = endpoint
        self._remote = remote

    @property
    def transport(self) -> str:
        return "udp"

    @property
    def remote(self) -> tuple[str, int]:
        return self._remote

    @property
    def reliable(self) -> bool:
        return False

    def send(self, data: bytes) -> None:
        self._endpoint.sendto(data, self._remote)

    def to(self, remote: tuple[str, int]) -> UdpFlow:
        return UdpFlow(self._endpoint, remote)


class TcpConnection(asyncio.Protocol):
    """One TCP connection (a ``Flow``): bounded framing, idle timeout, bounded output."""

    def __init__(self, owner: FlowOwner, *, max_message_bytes: int, idle_s: float) -> None:
        self._server = owner
        self._idle_s = idle_s
        self._transport: asyncio.Transport | None = None
        self._framer = StreamFramer(max_message_bytes)
        self._remote: tuple[str, int] = ("", 0)
        self._idle: asyncio.TimerHandle | None = None
        self.local_host = ""

    @property
    def transport(self) -> str:
        return "tcp"

    @property
    def remote(self) -> tuple[str, int]:
        return self._remote

    @property
    def reliable(self) -> bool:
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = (str(peer[0]), int(peer[1]))
        self.local_host = str(transport.get_extra_info("sockname")[0])
        if not self._server.admit_connection(self):
            self._transport.abort()
            return
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._arm_idle()
        try:
            items = self._framer.feed(data)
        except MalformedMessageError as exc:
            self._server.malformed(exc, self)
            self.close()
            return
        for item in items:
            if self._transport is None or self._transport.is_closing():
                return
            if isinstance(item, KeepAlive):
                self._transport.write(b"\r\n")  # RFC 5626 pong
            else:
                self._server.receive(item, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._server.connection_lost(self)

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._idle_s, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        if self._server.flow_in_use(self):
            self._arm_idle()
        else:
            log.debug("closing idle TCP connection from %s:%d", *self._remote)
            self.close()

    def send(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise TransportError("the TCP connection is closed")
        if transport.get_write_buffer_size() > MAX_TCP_WRITE_BUFFER:
            transport.abort()
            raise TransportError("the TCP peer is not reading")
        transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


Flow = UdpFlow | TcpConnection
