"""The SIP user-agent server against a tiny raw-text SIP peer over loopback UDP and TCP.

The peer writes requests as text and reads the server's messages with
``sipmessage`` directly (not with the parser under test). Timers are short
(T1 = 20 ms) so retransmission and timeout behaviour runs in well under a
second; the assertions are about what was sent, never about how fast.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from sipmessage import AuthChallenge, Request, Response

from media.sip.auth import AuthOutcome, DigestAuthenticator, digest_response
from media.sip.dialogs import Dialog, parse_dtmf
from media.sip.messages import (
    KEEPALIVE,
    FramingError,
    MalformedMessageError,
    SipRejection,
    SipRequest,
    StreamFramer,
    parse_message,
    response_address,
)
from media.sip.server import Acceptance, IncomingCall, SipServer, SipSettings
from tests.sip_peer import OFFER, Call, Peer, TcpPeer, UdpPeer

pytestmark = pytest.mark.timeout(60)

ANSWER = OFFER.replace("40000", "41000").replace("o=- 1 1", "o=parley 2 2")
HOLD = OFFER.replace("o=- 1 1", "o=- 1 2") + "a=sendonly\r\n"
FAST = SipSettings(
    port=0,
    t1_s=0.02,
    t2_s=0.08,
    t4_s=0.05,
    timer_h_s=0.6,
    answer_timeout_s=5.0,
    shutdown_bye_wait_s=0.1,
)
WAIT = 3.0
"""Bound on waiting for one expected message (a failure bound, not a speed claim)."""


# --- the fake application ------------------------------------------------------------


@dataclass
class FakeEvents:
    """Records what the dialog tells the application."""

    reinvite_answer: str | None = None
    reinvite_reject: SipRejection | None = None
    dialogs: list[Dialog] = field(default_factory=list)
    offers: list[str] = field(default_factory=list)
    digits: list[tuple[str, int]] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    ended_event: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed_event: asyncio.Event = field(default_factory=asyncio.Event)

    def confirmed(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog)
        self.confirmed_event.set()

    def reinvite(self, offer_sdp: str) -> str:
        self.offers.append(offer_sdp)
        if self.reinvite_reject is not None:
            raise self.reinvite_reject
        return self.reinvite_answer or ANSWER

    def dtmf(self, digit: str, duration_ms: int) -> None:
        self.digits.append((digit, duration_ms))

    def ended(self, cause: str) -> None:
        self.causes.append(cause)
        self.ended_event.set()


class FakeHandler:
    """A call handler that answers, waits on a gate, or refuses."""

    def __init__(self, *, gate: asyncio.Event | None = None, reject: SipRejection | None = None):
        self.gate = gate
        self.reject = reject
        self.calls: list[IncomingCall] = []
        self.events: list[FakeEvents] = []
        self.cancelled = 0
        self.called = asyncio.Event()

    async def invite(self, call: IncomingCall) -> Acceptance:
        self.calls.append(call)
        self.called.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.reject is not None:
            raise self.reject
        events = FakeEvents()
        self.events.append(events)
        return Acceptance(ANSWER, events)


# --- the raw SIP peer ----------------------------------------------------------------


_peers: list[Peer] = []


async def udp_peer(server: SipServer) -> UdpPeer:
    peer = await UdpPeer.open(server.bound)
    _peers.append(peer)
    return peer


async def tcp_peer(server: SipServer) -> TcpPeer:
    peer = await TcpPeer.open(server.bound)
    _peers.append(peer)
    return peer


async def ringing(call: Call) -> Response:
    await call.peer.response(100)
    ring = await call.peer.response(180)
    tag = ring.to_address.parameters.get("tag")
    assert tag
    call.to_tag = tag
    return ring


async def establish(server: SipServer, handler: FakeHandler, call: Call) -> FakeEvents:
    """INVITE -> 100 -> 180 -> 200 -> ACK: a confirmed call."""
    call.invite()
    await ringing(call)
    ok = await call.peer.response(200)
    assert ok.to_address.parameters.get("tag") == call.to_tag
    call.ack()
    events = handler.events[-1]
    await asyncio.wait_for(events.confirmed_event.wait(), WAIT)
    return events


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[SipServer]]]:
    servers: list[SipServer] = []

    async def make(handler: Any, settings: SipSettings = FAST, **kwargs: Any) -> SipServer:
        server = SipServer(settings, handler, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.aclose()
        assert not server._tasks, "the server left tasks behind"
    for peer in _peers:
        peer.close()
    _peers.clear()


def leftover_tasks() -> list[str]:
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("sip-") and not t.done()
    ]


# --- calls ---------------------------------------------------------------------------


async def test_invite_ack_bye_over_udp(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()

    trying = await peer.response(100)
    assert "tag" not in trying.to_address.parameters
    ring = await peer.response(180)
    assert ring.contact and ring.contact[0].uri.port == server.bound[1]
    call.to_tag = ring.to_address.parameters["tag"] or ""
    ok = await peer.response(200)
    assert ok.body.decode() == ANSWER
    assert ok.content_type is not None and ok.content_type.mime_type == "application/sdp"
    assert ok.to_address.parameters.get("tag") == call.to_tag
    assert ok.contact[0].uri.host == "127.0.0.1"
    assert "INVITE" in ok.headers["Allow"] and "INFO" in ok.headers["Allow"]
    assert ok.via[0].parameters.get("branch") == call.branch

    incoming = handler.calls[0]
    assert incoming.call_id == call.call_id
    assert incoming.from_uri == f"sip:alice@127.0.0.1:{peer.port}"
    assert incoming.from_display == "Alice"
    assert incoming.to_uri == "sip:agent@127.0.0.1"
    assert incoming.remote == ("127.0.0.1", peer.port)
    assert incoming.transport == "udp"
    assert incoming.offer_sdp == OFFER
    assert incoming.headers["User-Agent"] == "test-phone"

    call.ack()
    events = handler.events[0]
    await asyncio.wait_for(events.confirmed_event.wait(), WAIT)
    (dialog,) = server.dialogs()
    assert events.dialogs == [dialog]
    assert dialog.state == "confirmed"
    assert dialog.call_id == call.call_id and dialog.remote == ("127.0.0.1", peer.port)

    call.in_dialog("BYE")
    bye_ok = await peer.response(200)
    assert bye_ok.cseq.method == "BYE"
    await asyncio.wait_for(events.ended_event.wait(), WAIT)
    assert events.causes == ["bye"]
    assert dialog.state == "terminated"
    assert server.dialogs() == []
    stats = server.stats
    assert stats.responses_sent[100] == 1 and stats.responses_sent[180] == 1
    assert stats.responses_sent[200] == 2
    assert stats.requests_received["INVITE"] == 1 and stats.requests_received["BYE"] == 1
    assert len(handler.calls) == 1


async def test_call_over_tcp_with_split_frames_and_keepalive(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await tcp_peer(server)
    call = Call(peer)
    data = call.request("INVITE", body=OFFER).encode()
    for i in range(0, len(data), 97):  # the stream is cut anywhere
        peer.send(data[i : i + 97])
        await asyncio.sleep(0)
    await ringing(call)
    ok = await peer.response(200)
    assert ok.body.decode() == ANSWER
    assert ok.contact[0].uri.parameters.get("transport") == "tcp"
    assert handler.calls[0].transport == "tcp"
    call.ack()
    events = handler.events[0]
    await asyncio.wait_for(events.confirmed_event.wait(), WAIT)

    peer.send(b"\r\n\r\n")  # RFC 5626 ping
    call.in_dialog("OPTIONS")
    await peer.response(200)
    assert peer.pongs == 1

    (dialog,) = server.dialogs()
    hangup = asyncio.create_task(dialog.hangup("done"))
    bye = await peer.request("BYE")
    assert bye.headers["Reason"] == 'SIP;cause=200;text="done"'
    assert bye.via[0].transport == "TCP"
    peer.reply(bye, 200)
    await asyncio.wait_for(hangup, WAIT)
    assert dialog.state == "terminated"
    assert events.causes == []  # a local hang-up is not reported as a remote end


async def test_200_retransmitted_until_ack(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()
    await ringing(call)
    await peer.response(200)
    # without an ACK, timer G resends the 200 (T1, 2T1, 4T1 capped at T2)
    for _ in range(3):
        again = await peer.response(200)
        assert again.body.decode() == ANSWER
    call.ack()
    await asyncio.wait_for(handler.events[0].confirmed_event.wait(), WAIT)
    # at most one retransmission may already have been on its way
    late = await peer.quiet(4 * FAST.t2_s)
    assert len(late) <= 1 and all(isinstance(m, Response) and m.code == 200 for m in late)
    assert server.stats.retransmissions_sent >= 3


async def test_no_ack_ends_the_dialog_with_bye(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()
    await ringing(call)
    oks = 0
    while True:
        message = await peer.recv()
        if isinstance(message, Response):
            assert message.code == 200
            oks += 1
            continue
        assert message.method == "BYE"
        break
    assert oks >= 3  # the 200 and its retransmissions until timer H
    assert message.call_id == call.call_id
    assert message.to_address.parameters.get("tag") == call.from_tag
    assert message.from_address.parameters.get("tag") == call.to_tag
    peer.reply(message, 200)
    events = handler.events[0]
    await asyncio.wait_for(events.ended_event.wait(), WAIT)
    assert events.causes == ["no ack"]
    assert events.dialogs == []  # never confirmed
    for _ in range(100):
        if not server.dialogs() and not leftover_tasks():
            break
        await asyncio.sleep(0.01)
    assert server.dialogs() == []


async def test_retransmitted_invite_is_absorbed(make_server: Any) -> None:
    gate = asyncio.Event()
    handler = FakeHandler(gate=gate)
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()
    await ringing(call)
    call.invite()  # same branch: a retransmission
    again = await peer.response(180)
    assert again.to_address.parameters.get("tag") == call.to_tag
    gate.set()
    await peer.response(200)
    call.invite()  # after the 200, before the ACK: the 200 again
    assert (await peer.response(200)).cseq.sequence == 1
    call.ack()
    await asyncio.wait_for(handler.events[0].confirmed_event.wait(), WAIT)
    assert len(handler.calls) == 1
    assert server.stats.requests_received["INVITE"] == 3
    assert server.stats.retransmissions_absorbed >= 2


async def test_rfc2543_peer_without_magic_cookie(make_server: Any) -> None:
    gate = asyncio.Event()
    handler = FakeHandler(gate=gate)
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer, branch="oldstyle1")
    call.invite()
    await ringing(call)
    call.invite()  # matched by Call-ID, From tag, CSeq and sent-by
    await peer.response(180)
    gate.set()
    await peer.response(200)
    call.ack()
    await asyncio.wait_for(handler.events[0].confirmed_event.wait(), WAIT)
    assert len(handler.calls) == 1


async def test_cancel_before_answer(make_server: Any) -> None:
    handler = FakeHandler(gate=asyncio.Event())  # never answers
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()
    await ringing(call)
    await asyncio.wait_for(handler.called.wait(), WAIT)
    call.send("CANCEL", to_tag="")
    responses = [await peer.response(), await peer.response()]
    by_method = {r.cseq.method: r for r in responses}
    assert by_method["CANCEL"].code == 200
    assert by_method["INVITE"].code == 487
    assert by_method["INVITE"].to_address.parameters.get("tag") == call.to_tag
    call.send("ACK")  # the ACK to the 487 (same branch): absorbed, no answer
    assert [m for m in await peer.quiet(0.2) if isinstance(m, Response)] == []
    for _ in range(100):
        if handler.cancelled:
            break
        await asyncio.sleep(0.01)
    assert handler.cancelled == 1
    assert server.dialogs() == []
    # a CANCEL for nothing
    other = Call(peer)
    other.send("CANCEL")
    await peer.response(481)


async def test_cancel_after_the_answer_keeps_the_dialog_and_its_tag(make_server: Any) -> None:
    """A CANCEL that crosses the 200: 200 with the dialog's To tag, no 487 (RFC 3261 9.2)."""
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()
    await ringing(call)
    await peer.response(200)
    call.send("CANCEL", to_tag="")  # same branch as the INVITE: it arrived too late
    ok = await peer.response(200)
    while ok.cseq.method == "INVITE":  # the 200 to the INVITE is retransmitted until the ACK
        ok = await peer.response(200)
    assert ok.cseq.method == "CANCEL"
    assert ok.to_address.parameters.get("tag") == call.to_tag  # the dialog's, so BYE finds it
    assert not [m for m in await peer.quiet(0.1) if isinstance(m, Response) and m.code == 487]
    call.ack()
    await asyncio.wait_for(handler.events[0].confirmed_event.wait(), WAIT)
    call.in_dialog("BYE")
    await peer.response(200)
    assert handler.events[0].causes == ["bye"]


async def test_rejection_is_forwarded(make_server: Any) -> None:
    handler = FakeHandler(reject=SipRejection(486, "Busy Here", {"Retry-After": "5"}))
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()
    await ringing(call)
    busy = await peer.response(486)
    assert busy.headers["Retry-After"] == "5"
    call.send("ACK", to_tag=busy.to_address.parameters.get("tag") or "")
    assert await peer.quiet(0.2) == []  # ACK absorbed, no more 486 retransmissions
    assert server.dialogs() == []


async def test_handler_timeout_and_capacity(make_server: Any) -> None:
    handler = FakeHandler(gate=asyncio.Event())
    server = await make_server(handler, replace(FAST, answer_timeout_s=0.2), max_calls=1)
    peer = await udp_peer(server)
    first, second = Call(peer), Call(peer)
    first.invite()
    await ringing(first)
    second.invite()
    busy = await peer.response(486)  # one call at a time
    second.send("ACK", to_tag=busy.to_address.parameters.get("tag") or "")
    while (final := await peer.response()).code == 486:
        pass  # a retransmission that crossed the ACK
    assert final.code == 480 and final.call_id == first.call_id  # the handler never answered
    assert handler.cancelled == 1


async def test_options(make_server: Any) -> None:
    server = await make_server(FakeHandler())
    peer = await udp_peer(server)
    Call(peer).send("OPTIONS")
    ok = await peer.response(200)
    assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO"} <= {
        m.strip() for m in ok.headers["Allow"].split(",")
    }
    assert ok.headers["Accept"] == "application/sdp"
    assert ok.to_address.parameters.get("tag")


async def test_via_is_echoed_byte_for_byte(make_server: Any) -> None:
    server = await make_server(FakeHandler())
    peer = await udp_peer(server)
    call = Call(peer, branch="z9hG4bK*odd!branch%41")
    extra = "Via: SIP/2.0/UDP proxy.example:5080;branch=z9hG4bKp1;x=%41"
    call.send("OPTIONS", extra=extra)
    ok = await peer.response(200)
    vias = ok.headers.getlist("Via")
    assert vias[0] == f"SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK*odd!branch%41"
    assert vias[1] == "SIP/2.0/UDP proxy.example:5080;branch=z9hG4bKp1;x=%41"
    # rport (RFC 3581): filled in, with received, wherever the parameter sits
    nat = Call(peer)
    request = nat.request("OPTIONS").replace(";branch=", ";rport;branch=")
    peer.send(request.replace("Via: SIP/2.0/UDP 127.0.0.1", "Via: SIP/2.0/UDP 192.0.2.1"))
    ok = await peer.response(200)
    assert ok.headers.getlist("Via")[0] == (
        f"SIP/2.0/UDP 192.0.2.1:{peer.port};branch={nat.branch}"
        f";received=127.0.0.1;rport={peer.port}"
    )


async def test_methods_not_taken(make_server: Any) -> None:
    server = await make_server(FakeHandler())
    peer = await udp_peer(server)
    Call(peer).send("REGISTER")
    refused = await peer.response(405)
    assert "INVITE" in refused.headers["Allow"]
    Call(peer).send("FROB")
    await peer.response(501)
    Call(peer).send("BYE", to_tag="nosuchdialog")
    await peer.response(481)
    Call(peer).send("INFO")
    await peer.response(481)
    Call(peer).send("INVITE", body=OFFER, extra="Require: 100rel")
    unsupported = await peer.response(420)
    assert unsupported.headers["Unsupported"] == "100rel"
    Call(peer).send("INVITE")  # no offer
    await peer.response(488)


async def test_reinvite_hold_and_rejection(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    events = await establish(server, handler, call)
    events.reinvite_answer = ANSWER + "a=recvonly\r\n"

    call.in_dialog("INVITE", body=HOLD)
    ok = await peer.response(200)
    assert ok.body.decode().endswith("a=recvonly\r\n")
    assert events.offers == [HOLD]
    ok_again = await peer.response(200)  # retransmitted until the ACK, as for the first
    assert ok_again.cseq.sequence == call.cseq
    call.ack()
    await peer.quiet(0.1)

    events.reinvite_reject = SipRejection(488, "Not Acceptable Here")
    call.in_dialog("INVITE", body=OFFER)
    await peer.response(488)
    call.send("ACK")  # ACK to the 488 (same branch)
    assert server.dialogs()[0].state == "confirmed"

    events.reinvite_reject = None
    call.in_dialog("INVITE")  # no offer: our last SDP again
    offerless = await peer.response(200)
    assert offerless.body.decode().endswith("a=recvonly\r\n")
    call.ack()

    call.in_dialog("INVITE", body=OFFER, cseq=1)  # an old CSeq
    await peer.response(500)


async def test_info_dtmf(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    events = await establish(server, handler, call)
    relay = "application/dtmf-relay"
    call.in_dialog("INFO", body="Signal=5\r\nDuration=160\r\n", content_type=relay)
    await peer.response(200)
    call.in_dialog("INFO", body="#", content_type="application/dtmf")
    await peer.response(200)
    call.in_dialog("INFO", body="Signal=11\r\n", content_type=relay)
    await peer.response(200)
    call.in_dialog("INFO", body="Signal=Z\r\n", content_type=relay)
    await peer.response(400)
    call.in_dialog("INFO", body="hello", content_type="text/plain")
    unsupported = await peer.response(415)
    assert "application/dtmf-relay" in unsupported.headers["Accept"]
    call.in_dialog("INFO")  # empty: a keep-alive
    await peer.response(200)
    assert events.digits == [("5", 160), ("#", 250), ("#", 250)]
    # a retransmitted INFO gets the cached response and is not delivered twice
    call.send("INFO", body="Signal=1\r\n", content_type=relay)
    await peer.response(200)
    assert events.digits[-1] == ("#", 250)


async def test_refer_and_notify(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    await establish(server, handler, call)
    (dialog,) = server.dialogs()

    with pytest.raises(ValueError, match="URI"):
        await dialog.refer("not a uri")
    transfer = asyncio.create_task(dialog.refer("sip:desk@127.0.0.1"))
    refer = await peer.request("REFER")
    assert refer.headers["Refer-To"] == "<sip:desk@127.0.0.1>"
    assert refer.uri.port == peer.port  # the caller's Contact
    peer.reply(refer, 202, "Accepted")
    assert await asyncio.wait_for(transfer, WAIT) == 202

    call.in_dialog(
        "NOTIFY",
        body="SIP/2.0 200 OK\r\n",
        content_type="message/sipfrag",
        extra="Event: refer\r\nSubscription-State: terminated",
    )
    await peer.response(200)
    assert dialog.transfer_status == 200
    call.in_dialog("NOTIFY", extra="Event: presence")
    await peer.response(489)


async def test_hangup_retransmits_bye_and_is_bounded(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    call = Call(peer)
    events = await establish(server, handler, call)
    (dialog,) = server.dialogs()
    first, second = asyncio.create_task(dialog.hangup()), asyncio.create_task(dialog.hangup())
    byes = 0
    while not (first.done() and second.done()):  # the peer never answers: timer E, then F
        try:
            message = await peer.recv(within=0.2)
        except TimeoutError:
            continue
        assert isinstance(message, Request) and message.method == "BYE"
        byes += 1
    await asyncio.gather(first, second)
    assert byes >= 3
    assert server.stats.requests_sent == {"BYE": 1}
    await dialog.hangup()  # idempotent
    assert events.causes == []
    assert server.dialogs() == []


async def test_hangup_before_the_ack_waits_for_it(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler, replace(FAST, timer_h_s=5.0))
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()
    await ringing(call)
    await peer.response(200)
    (dialog,) = server.dialogs()
    assert dialog.state == "early"
    hangup = asyncio.create_task(dialog.hangup())
    pending = await peer.quiet(0.2)
    assert pending and all(isinstance(m, Response) and m.code == 200 for m in pending)
    assert not hangup.done()  # no BYE before the ACK (RFC 3261 15)
    call.ack()
    while isinstance(message := await peer.recv(), Response):
        pass  # a 200 retransmission that crossed the ACK
    assert message.method == "BYE"
    peer.reply(message, 200)
    await asyncio.wait_for(hangup, WAIT)
    events = handler.events[0]
    assert events.dialogs == [dialog] and events.causes == []


# --- admission -----------------------------------------------------------------------


async def test_source_not_allowed(make_server: Any) -> None:
    handler = FakeHandler()
    settings = replace(FAST, allow=(ipaddress.IPv4Network("10.0.0.0/8"),))
    server = await make_server(handler, settings)
    peer = await udp_peer(server)
    Call(peer).invite()
    await peer.response(403)
    Call(peer).send("OPTIONS")
    await peer.response(403)
    assert handler.calls == []
    # TCP connections from outside the allowlist are closed at once
    tcp = await tcp_peer(server)
    assert await tcp.closed()


async def test_digest_challenge_then_success(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler, replace(FAST, users={"alice": "s3cret"}))
    peer = await udp_peer(server)
    call = Call(peer)
    call.invite()
    challenge_response = await peer.response(401)
    challenge = challenge_response.www_authenticate
    assert challenge is not None and challenge.scheme == "Digest"
    assert challenge.parameters["qop"] == "auth" and challenge.parameters["realm"] == "parley"
    call.send("ACK", to_tag=challenge_response.to_address.parameters.get("tag") or "")
    assert await peer.quiet(0.15) == []  # the ACK to the 401 is absorbed
    assert handler.calls == []

    uri = "sip:agent@127.0.0.1"

    def credentials(password: str, nc: int) -> str:
        value = digest_response(
            method="INVITE",
            uri=uri,
            username="alice",
            password=password,
            challenge=challenge,
            cnonce="c0ffee",
            nc=nc,
        )
        return f"Authorization: {value}"

    call.cseq += 1
    call.new_branch()
    call.invite(extra=credentials("wrong", 1))
    await peer.response(401)
    call.send("ACK", to_tag="x")
    call.cseq += 1
    call.new_branch()
    call.invite(extra=credentials("s3cret", 2))
    await ringing(call)
    await peer.response(200)
    call.ack()
    await asyncio.wait_for(handler.events[0].confirmed_event.wait(), WAIT)
    assert len(handler.calls) == 1


def test_digest_authenticator_rules() -> None:
    now = [1000.0]
    auth = DigestAuthenticator("parley", {"bob": "pw"}, nonce_ttl_s=30, clock=lambda: now[0])
    uri_text = "sip:agent@127.0.0.1"
    uri = parse_message(
        f"OPTIONS {uri_text} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx\r\n"
        "From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n".encode()
    )
    assert isinstance(uri, SipRequest)
    challenge = auth.challenge()

    def header(nc: int = 1, password: str = "pw", uri: str = uri_text) -> str:
        return str(
            digest_response(
                method="INVITE",
                uri=uri,
                username="bob",
                password=password,
                challenge=challenge,
                cnonce="ab",
                nc=nc,
            )
        )

    assert auth.verify("INVITE", uri.uri, None) is AuthOutcome.MISSING
    assert auth.verify("INVITE", uri.uri, "Basic Ym9iOnB3") is AuthOutcome.INVALID
    assert auth.verify("INVITE", uri.uri, header(password="nope")) is AuthOutcome.INVALID
    assert auth.verify("INVITE", uri.uri, header(uri="sip:other@127.0.0.1")) is AuthOutcome.INVALID
    assert auth.verify("INVITE", uri.uri, header(1)) is AuthOutcome.OK
    assert auth.verify("INVITE", uri.uri, header(1)) is AuthOutcome.INVALID  # replayed nc
    assert auth.verify("INVITE", uri.uri, header(2)) is AuthOutcome.OK
    forged = AuthChallenge(
        "Digest", challenge.parameters.replace(nonce="1234.00000000000000000000000000000000")
    )
    challenge, real = forged, challenge
    assert auth.verify("INVITE", uri.uri, header(3)) is AuthOutcome.INVALID  # not our nonce
    challenge = real
    now[0] += 31
    assert auth.verify("INVITE", uri.uri, header(4)) is AuthOutcome.STALE
    stale = auth.challenge(stale=True)
    assert stale.parameters["stale"] == "TRUE"


# --- hostile input -------------------------------------------------------------------


async def test_garbage_truncated_and_oversized_then_a_call(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await udp_peer(server)
    rng = random.Random(9)
    valid = Call(peer).request("INVITE", body=OFFER).encode()
    sent = 0
    for i in range(200):
        kind = i % 4
        if kind == 0:  # random bytes
            data = rng.randbytes(rng.randint(1, 1500))
        elif kind == 1:  # truncated datagrams (always short of the whole message)
            data = valid[: rng.randint(1, len(valid) - 1)]
        elif kind == 2:  # bytes flipped in a valid message
            flipped = bytearray(valid)
            for _ in range(8):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            data = bytes(flipped)
        else:  # header lines made of junk
            data = valid.replace(b"Max-Forwards: 70", rng.randbytes(40).replace(b"\r\n", b""))
        if data.strip(b"\r\n\t \x00") and data != valid:
            peer.send(data)
            sent += 1
    huge = valid.replace(b"Max-Forwards: 70\r\n", b"X-Junk: " + b"a" * 60_000 + b"\r\n")
    peer.send(huge)
    await asyncio.sleep(0.3)
    answers = []
    while not peer.inbox.empty():
        answers.append(peer.inbox.get_nowait())
    # flipped bytes may leave a request that still parses (then it is really processed)
    assert 400 in {m.code for m in answers if isinstance(m, Response)}
    stats = server.stats
    assert stats.malformed_answered + stats.malformed_dropped >= sent // 2
    assert stats.malformed_answered >= 1 and stats.malformed_dropped >= 1
    for dialog in server.dialogs():  # a flipped byte may have left a valid INVITE
        await dialog.hangup()

    # the server still takes the next call, all the way
    fresh = await udp_peer(server)
    call = Call(fresh)
    calls_before = len(handler.calls)
    await establish(server, handler, call)
    call.in_dialog("BYE")
    await fresh.response(200)
    assert len(handler.calls) == calls_before + 1


async def test_huge_header_over_tcp_gets_400_and_the_connection_closes(make_server: Any) -> None:
    handler = FakeHandler()
    server = await make_server(handler)
    peer = await tcp_peer(server)
    call = Call(peer)
    request = call.request("INVITE", body=OFFER).encode()
    peer.send(request.replace(b"User-Agent:", b"X-Junk: " + b"a" * 100_000 + b"\r\nUser-Agent:"))
    bad = await peer.response(400)
    assert bad.call_id == call.call_id
    assert await peer.closed()
    assert handler.calls == []
    fresh = await tcp_peer(server)
    await establish(server, handler, Call(fresh))


async def test_idle_tcp_connection_is_closed(make_server: Any) -> None:
    server = await make_server(FakeHandler(), replace(FAST, tcp_idle_s=0.1))
    peer = await tcp_peer(server)
    assert await peer.closed()
    assert server._connections == set()


# --- shutdown ------------------------------------------------------------------------


async def test_aclose_byes_confirmed_dialogs_and_reaps_everything() -> None:
    handler = FakeHandler()
    server = SipServer(FAST, handler)
    await server.start()
    udp = await UdpPeer.open(server.bound)
    tcp = await TcpPeer.open(server.bound)
    ringing_handler_gate = asyncio.Event()
    try:
        udp_call, tcp_call = Call(udp), Call(tcp)
        udp_events = await establish(server, handler, udp_call)
        tcp_events = await establish(server, handler, tcp_call)
        handler.gate = ringing_handler_gate  # a third call rings when the server closes
        ringing_call = Call(udp)
        ringing_call.invite()
        await ringing(ringing_call)
        await asyncio.wait_for(handler.called.wait(), WAIT)

        closing = asyncio.create_task(server.aclose())
        refused = await udp.response(503)
        assert refused.call_id == ringing_call.call_id
        for peer in (udp, tcp):
            bye = await peer.request("BYE")
            peer.reply(bye, 200)
        await asyncio.wait_for(closing, WAIT)
        assert udp_events.causes == ["shutdown"] and tcp_events.causes == ["shutdown"]
        assert handler.cancelled == 1
        assert server.dialogs() == []
        assert not server._tasks and leftover_tasks() == []
        await server.aclose()  # idempotent
    finally:
        udp.close()
        tcp.close()
        await server.aclose()


async def test_aclose_does_not_wait_for_an_unresponsive_peer() -> None:
    handler = FakeHandler()
    settings = replace(FAST, timer_h_s=30.0, shutdown_bye_wait_s=0.1)
    server = SipServer(settings, handler)
    await server.start()
    peer = await UdpPeer.open(server.bound)
    try:
        call = Call(peer)
        call.invite()
        await ringing(call)
        await peer.response(200)
        call.ack()
        await asyncio.wait_for(handler.events[0].confirmed_event.wait(), WAIT)
        # the peer never answers the BYE; timer F (30 s) is not what bounds the shutdown
        await asyncio.wait_for(server.aclose(), WAIT)
        assert handler.events[0].causes == ["shutdown"]
        assert not server._tasks and leftover_tasks() == []
    finally:
        peer.close()
        await server.aclose()


async def test_port_taken_raises() -> None:
    first = SipServer(FAST, FakeHandler())
    await first.start()
    try:
        second = SipServer(replace(FAST, port=first.bound[1]), FakeHandler())
        with pytest.raises(OSError, match="in use"):
            await second.start()
    finally:
        await first.aclose()


# --- units: parsing, framing, routing ------------------------------------------------

BASE = (
    "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc\r\n"
    "From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\n"
    "Call-ID: xyz\r\nCSeq: 7 OPTIONS\r\n"
)


@pytest.mark.parametrize(
    ("text", "answerable"),
    [
        (BASE + "Content-Length: 0\r\nContent-Length: 0\r\n\r\n", True),  # duplicated
        (BASE.replace("\r\nTo:", "\nTo:") + "\r\n", True),  # bare LF
        (BASE + "X: a\x01b\r\n\r\n", True),  # control character
        (BASE.replace("7 OPTIONS", "7 INVITE") + "\r\n", True),  # CSeq method mismatch
        (BASE.replace("Call-ID: xyz\r\n", "") + "\r\n", True),  # no Call-ID
        (BASE + "Content-Length: 10\r\n\r\nshort", True),  # truncated body
        (BASE.replace("sip:a@127.0.0.1 SIP", "sip:a@127.0.0.1 SIP/3.0 x") + "\r\n", False),
        (BASE.replace("Via: SIP/2.0/UDP", "Via: nonsense") + "\r\n", False),  # no Via
        (BASE.replace("OPTIONS sip", "ACK sip").replace("7 OPTIONS", "7 ACK") + "X\r\n", False),
        ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1\r\n\r\n", False),  # a response
    ],
)
def test_parser_is_strict(text: str, answerable: bool) -> None:
    with pytest.raises(MalformedMessageError) as caught:
        parse_message(text.encode())
    assert (caught.value.reply_to is not None) == answerable


def test_parser_accepts_folding_compact_forms_and_cuts_the_body() -> None:
    text = (
        BASE.replace("Call-ID: xyz", "i: xyz").replace(
            "To: <sip:a@127.0.0.1>", 't: "Agent"\r\n\t<sip:a@127.0.0.1>'
        )
        + "Content-Length: 4\r\n\r\nbodyEXTRA"
    )
    message = parse_message(text.encode())
    assert isinstance(message, SipRequest)
    assert message.call_id == "xyz" and message.body == b"body"
    assert str(message.to_address.uri) == "sip:a@127.0.0.1"
    assert message.to_address.name == "Agent"
    with pytest.raises(MalformedMessageError) as caught:
        parse_message((BASE + "\r\n").encode() + b"x" * 20_000, max_bytes=16_384)
    assert caught.value.oversized and caught.value.reply_to is not None


def test_unsupported_uri_scheme_is_416() -> None:
    with pytest.raises(MalformedMessageError) as caught:
        parse_message((BASE.replace("sip:a@127.0.0.1 SIP", "http://x SIP") + "\r\n").encode())
    assert caught.value.code == 416


def test_stream_framer() -> None:
    framer = StreamFramer(max_bytes=2048)
    one = (BASE + "Content-Length: 4\r\n\r\nbody").encode()
    two = (BASE + "\r\n").encode()  # no Content-Length on a stream: 0
    stream = b"\r\n\r\n" + one + b"\r\n" + two
    items = [item for i in range(len(stream)) for item in framer.feed(stream[i : i + 1])]
    assert items == [KEEPALIVE, one, two]
    assert framer.buffered == 0
    with pytest.raises(FramingError) as caught:
        StreamFramer(max_bytes=2048).feed((BASE + "X: " + "a" * 3000).encode())
    assert caught.value.reply_to is not None and caught.value.oversized
    with pytest.raises(FramingError):
        StreamFramer(max_bytes=2048).feed((BASE + "Content-Length: 99999\r\n\r\n").encode())
    with pytest.raises(FramingError):
        StreamFramer(max_bytes=2048).feed((BASE + "Content-Length: x\r\n\r\n").encode())


def test_response_routing_and_via_stamping() -> None:
    plain = parse_message((BASE + "\r\n").encode())
    assert isinstance(plain, SipRequest)
    plain.stamp_via(("127.0.0.1", 40000))
    assert "received" not in plain.top_via.parameters  # sent-by matches the source
    assert response_address(plain.top_via, ("127.0.0.1", 40000)) == ("127.0.0.1", 5070)
    nat = parse_message((BASE.replace(";branch", ";rport;branch") + "\r\n").encode())
    assert isinstance(nat, SipRequest)
    nat.stamp_via(("127.0.0.2", 40000))
    assert nat.top_via.parameters["rport"] == "40000"
    assert nat.top_via.parameters["received"] == "127.0.0.2"
    assert response_address(nat.top_via, ("127.0.0.2", 40000)) == ("127.0.0.2", 40000)
    assert "rport=40000" in nat.message.headers["Via"]


def test_dtmf_bodies() -> None:
    assert parse_dtmf("application/dtmf-relay", b"Signal= *\r\nDuration= 100\r\n") == ("*", 100)
    assert parse_dtmf("application/dtmf-relay", b"Signal=10\r\n") == ("*", 250)
    assert parse_dtmf("application/dtmf", b"d") == ("D", 250)
    for bad in (b"Signal=55", b"Signal=1\r\nDuration=-1", b"\xff"):
        with pytest.raises(ValueError, match=r"DTMF|ascii"):
            parse_dtmf("application/dtmf-relay", bad)


def test_rejection_headers_are_checked() -> None:
    with pytest.raises(ValueError, match="final non-2xx"):
        SipRejection(200, "OK")
    with pytest.raises(ValueError, match="cannot be set"):
        SipRejection(486, "Busy", {"Via": "x"})
    with pytest.raises(ValueError, match="single line"):
        SipRejection(486, "Busy", {"Retry-After": "5\r\nX-Injected: 1"})
