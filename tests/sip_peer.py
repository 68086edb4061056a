"""A scripted SIP caller for tests: raw SIP text over UDP or TCP, replies collected.

Used by the SIP signalling tests (against ``SipServer`` alone) and by the
phone call tests (against the whole app). Only loopback addresses.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sipmessage import Message, Request, Response

WAIT = 3.0
"""Bound on waiting for one expected message (a failure bound, not a speed claim)."""

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
)


def parse(data: bytes) -> Request | Response:
    return Message.parse(data)


class Peer:
    """A caller: sends raw SIP text, collects what the server sends back."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.port = 0
        self.inbox: asyncio.Queue[Request | Response] = asyncio.Queue(maxsize=1000)
        self._send: Callable[[bytes], None] = lambda data: None

    async def recv(self, within: float = WAIT) -> Request | Response:
        return await asyncio.wait_for(self.inbox.get(), within)

    async def response(self, code: int | None = None, within: float = WAIT) -> Response:
        message = await self.recv(within)
        assert isinstance(message, Response), f"expected a response, got {message}"
        if code is not None:
            assert message.code == code, f"expected {code}, got {message.code} {message.phrase}"
        return message

    async def request(self, method: str, within: float = WAIT) -> Request:
        message = await self.recv(within)
        assert isinstance(message, Request), f"expected a {method}"
        assert message.method == method
        return message

    async def quiet(self, seconds: float) -> list[Request | Response]:
        """Everything that arrives within ``seconds``."""
        await asyncio.sleep(seconds)
        found = []
        while not self.inbox.empty():
            found.append(self.inbox.get_nowait())
        return found

    def send(self, data: bytes | str) -> None:
        self._send(data.encode() if isinstance(data, str) else data)

    def reply(self, request: Request, code: int, phrase: str = "OK") -> None:
        """Answer a request the server sent (copying its Via/From/To/Call-ID/CSeq)."""
        headers = "".join(
            f"{name}: {value}\r\n"
            for name in ("Via", "From", "To", "Call-ID", "CSeq")
            for value in request.headers.getlist(name)
        )
        self.send(f"SIP/2.0 {code} {phrase}\r\n{headers}Content-Length: 0\r\n\r\n")

    def close(self) -> None:
        """Release the socket (the UDP and TCP peers override this)."""


class UdpPeer(Peer, asyncio.DatagramProtocol):
    def __init__(self) -> None:
        Peer.__init__(self, "UDP")
        self._transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.inbox.put_nowait(parse(data))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @classmethod
    async def open(cls, server: tuple[str, int]) -> UdpPeer:
        loop = asyncio.get_running_loop()
        transport, peer = await loop.create_datagram_endpoint(
            cls, local_addr=("127.0.0.1", 0), remote_addr=server
        )
        peer._transport = transport
        peer.port = transport.get_extra_info("sockname")[1]
        peer._send = transport.sendto
        return peer


class TcpPeer(Peer):
    def __init__(self) -> None:
        super().__init__("TCP")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pongs = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, server: tuple[str, int]) -> TcpPeer:
        peer = cls()
        peer.reader, peer.writer = await asyncio.open_connection(*server)
        peer.port = peer.writer.get_extra_info("sockname")[1]
        writer = peer.writer
        peer._send = writer.write
        peer._task = asyncio.create_task(peer._read())
        return peer

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while True:
                start = await self.reader.readexactly(2)
                if start == b"\r\n":
                    self.pongs += 1
                    continue
                head = start + await self.reader.readuntil(b"\r\n\r\n")
                length = parse(head).content_length or 0
                self.inbox.put_nowait(parse(head + await self.reader.readexactly(length)))
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def closed(self) -> bool:
        """Whether the server closed the connection (waits for the reader to end)."""
        assert self._task is not None
        await asyncio.wait_for(self._task, WAIT)
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._task is not None:
            self._task.cancel()


@dataclass
class Call:
    """One call's identifiers as the peer writes them."""

    peer: Peer
    call_id: str = field(default_factory=lambda: f"{random.getrandbits(64):x}@test")
    from_tag: str = field(default_factory=lambda: f"{random.getrandbits(32):x}")
    to_tag: str = ""
    cseq: int = 1
    branch: str = field(default_factory=lambda: f"z9hG4bK{random.getrandbits(64):x}")

    def new_branch(self) -> str:
        self.branch = f"z9hG4bK{random.getrandbits(64):x}"
        return self.branch

    def request(
        self,
        method: str,
        *,
        body: str = "",
        extra: str = "",
        content_type: str = "application/sdp",
        cseq: int | None = None,
        to_tag: str | None = None,
    ) -> str:
        to_tag = self.to_tag if to_tag is None else to_tag
        to = f"<sip:agent@127.0.0.1>{f';tag={to_tag}' if to_tag else ''}"
        peer = self.peer
        lines = [
            f"{method} sip:agent@127.0.0.1 SIP/2.0",
            f"Via: SIP/2.0/{peer.transport} 127.0.0.1:{peer.port};branch={self.branch}",
            f'From: "Alice" <sip:alice@127.0.0.1:{peer.port}>;tag={self.from_tag}',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq if cseq is None else cseq} {method}",
            f"Contact: <sip:alice@127.0.0.1:{peer.port}>",
            "Max-Forwards: 70",
            "User-Agent: test-phone",
        ]
        if extra:
            lines.append(extra.rstrip("\r\n"))
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def send(self, method: str, **kwargs: Any) -> None:
        self.peer.send(self.request(method, **kwargs))

    def invite(self, extra: str = "") -> None:
        self.send("INVITE", body=OFFER, extra=extra)

    def ack(self) -> None:
        """ACK for a 2xx: a new transaction (new branch)."""
        self.new_branch()
        self.send("ACK", cseq=self.cseq)

    def in_dialog(self, method: str, **kwargs: Any) -> None:
        self.cseq += 1
        self.new_branch()
        self.send(method, **kwargs)
