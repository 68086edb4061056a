"""Phone calls through the whole app: SIP over loopback UDP, RTP G.711 both ways, the store.

The app runs in process with fake providers (a tone is speech to the energy
VAD; the STT, LLM and TTS are scripted), so these tests are about the call
plumbing: admission, SDP, RTP in and out, keypad digits, hold, both ways of
hanging up, capacity, and what the store keeps. sipp as a real phone, with
the real models, is in ``tests/test_sipp_calls.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc.rtp import RtpPacket
from fastapi import FastAPI

from agent.events import DtmfEvent
from media.frames import rms_dbfs
from media.sip.codecs import ulaw_decode, ulaw_encode
from signaling.app import create_app
from signaling.settings import ServerSettings
from signaling.state import AppState
from store.settings import StoreSettings
from tests.fakes import FakeSTT, FakeTTS, ScriptedLLM, fake_models, silence, tone
from tests.sip_peer import Call, UdpPeer

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
ADMIN = "operator-token-0123456789"


class RtpPhone(asyncio.DatagramProtocol):
    """The phone's media side: sends PCMU at 20 ms pacing, keeps what the agent sends."""

    def __init__(self) -> None:
        self.received: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.seq = random.randrange(1 << 16)
        self.ts = random.randrange(1 << 32)
        self.ssrc = random.randrange(1 << 32)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append(RtpPacket.parse(data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def _send(self, pt: int, payload: bytes, *, marker: bool = False, advance: int = 160) -> None:
        assert self.transport is not None and self.remote is not None
        packet = RtpPacket(
            payload_type=pt,
            marker=int(marker),
            sequence_number=self.seq,
            timestamp=self.ts,
            ssrc=self.ssrc,
            payload=payload,
        )
        self.transport.sendto(packet.serialize(), self.remote)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + advance) & 0xFFFFFFFF

    async def speak(self, pcm: np.ndarray) -> None:
        """Send 8 kHz audio as PCMU packets in real time."""
        for i in range(0, pcm.size - 159, 160):
            self._send(0, ulaw_encode(pcm[i : i + 160]))
            await asyncio.sleep(0.02)

    async def press(self, digit: str) -> None:
        """An RFC 4733 telephone-event: three updates, then the end bit three times."""
        event = "0123456789*#".index(digit)
        for n in range(1, 4):
            self._send(
                101, bytes([event, 10, *(n * 160).to_bytes(2, "big")]), marker=n == 1, advance=0
            )
            await asyncio.sleep(0.02)
        for _ in range(3):
            self._send(101, bytes([event, 0x80 | 10, *(4 * 160).to_bytes(2, "big")]), advance=0)
        self.ts = (self.ts + 4 * 160) & 0xFFFFFFFF

    def agent_audio(self) -> np.ndarray:
        pcm = [ulaw_decode(p.payload) for p in self.received if p.payload_type == 0]
        return np.concatenate(pcm) if pcm else np.zeros(0, np.int16)


def offer(rtp_port: int, *, direction: str = "sendrecv", version: int = 1) -> str:
    return (
        f"v=0\r\no=- 7 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
        f"a={direction}\r\n"
    )


@dataclass
class PhoneCall:
    peer: UdpPeer
    call: Call
    rtp: RtpPhone
    answer: str = ""
    closers: list[Any] = field(default_factory=list)


async def dial(st: AppState, *, establish: bool = True) -> PhoneCall:
    assert st.sip is not None
    loop = asyncio.get_running_loop()
    transport, rtp = await loop.create_datagram_endpoint(RtpPhone, local_addr=("127.0.0.1", 0))
    rtp.transport = transport
    peer = await UdpPeer.open(st.sip.bound)
    phone = PhoneCall(peer, Call(peer), rtp)
    phone.call.send("INVITE", body=offer(rtp.port))
    await peer.response(100, within=WAIT)
    if not establish:
        return phone
    ring = await peer.response(180, within=WAIT)
    phone.call.to_tag = ring.to_address.parameters.get("tag") or ""
    ok = await peer.response(200, within=WAIT)
    phone.answer = ok.body.decode()
    port = int(re.search(r"m=audio (\d+) RTP/AVP 0 101", phone.answer)[1])  # type: ignore[index]
    rtp.remote = ("127.0.0.1", port)
    phone.call.ack()
    return phone


async def until(predicate: Any, within: float = WAIT) -> None:
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 (polling state the app owns)
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), within)


def hang_up(phone: PhoneCall) -> None:
    if phone.rtp.transport is not None:
        phone.rtp.transport.close()
    phone.peer.close()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    models = fake_models(
        stt=FakeSTT(["what time do you open"]),
        llm=ScriptedLLM(["We open at nine in the morning."]),
        tts=FakeTTS(22050),
    )
    settings = ServerSettings(
        jwt_secret="x" * 32,
        sip_listen="127.0.0.1:0",
        rtp_ports="31000-31999",
        max_calls=1,
        idle_timeout_s=30,
        admin_token=ADMIN,
        sip_transfer_uri="sip:desk@127.0.0.1",
    )
    store = StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)
    application = create_app(settings, models=models, store_settings=store)
    async with application.router.lifespan_context(application):
        yield application


async def test_a_phone_call_question_answer_digits_and_bye(app: FastAPI) -> None:
    st: AppState = app.state.parley
    phone = await dial(st)
    try:
        assert "a=rtpmap:0 PCMU/8000" in phone.answer and "a=sendrecv" in phone.answer
        assert "a=rtpmap:8" not in phone.answer  # only what the phone offered
        [call] = st.calls.calls()
        assert call.transport == "sip"
        digits: list[DtmfEvent] = []
        call.session._sinks.append(lambda e: digits.append(e) if isinstance(e, DtmfEvent) else None)
        question = np.concatenate([tone(0.8, 8000), silence(1.2, 8000)])
        await phone.rtp.speak(question)
        # the agent answers: its RTP carries speech after the question
        await until(lambda: rms_dbfs(phone.rtp.agent_audio()[-4000:]) > -30)
        packets = [p for p in phone.rtp.received if p.payload_type == 0]
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        stamps = [p.timestamp for p in packets]
        assert all((b - a) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(stamps))
        assert any(p.marker for p in packets)  # the talkspurt's start is marked
        await phone.rtp.press("5")
        await until(lambda: [d.digit for d in digits] == ["5"])
        phone.call.in_dialog("BYE")
        await phone.peer.response(200, within=WAIT)
        await asyncio.wait_for(call.wait_ended(), WAIT)
    finally:
        hang_up(phone)
    assert call.end_reason == "caller hung up (BYE)"
    exposition = st.metrics.render().decode()
    assert 'parley_calls_total{transport="sip"} 1.0' in exposition
    assert 'parley_sip_responses_total{code="200"}' in exposition
    assert 'parley_sip_requests_total{method="INVITE"} 1.0' in exposition
    received = re.search(r'parley_rtp_packets_total\{kind="packets_received"\} (\d+)', exposition)
    assert received is not None and int(received[1]) > 50  # the question's packets
    assert await st.store.writer.flush()
    row = await st.store.sessions.get(call.session.id)
    assert row is not None and row.transport == "sip" and row.end_reason == call.end_reason
    assert row.attributes == {
        "from_uri": f"sip:alice@127.0.0.1:{phone.peer.port}",
        "call_id": phone.call.call_id,
    }
    turns = [(t.role, t.text) for t in await st.store.sessions.turns(call.session.id)]
    # the digit was pressed while the reply played: its row comes before the reply's
    talk = [turn for turn in turns if turn[0] != "dtmf"]
    assert talk[:2] == [
        ("user", "what time do you open"),
        ("assistant", "We open at nine in the morning."),
    ]
    assert [turn for turn in turns if turn[0] == "dtmf"] == [("dtmf", "5")]


async def test_the_agent_hangs_up_with_bye_and_a_full_line_is_busy(app: FastAPI) -> None:
    st: AppState = app.state.parley
    phone = await dial(st)
    try:
        [call] = st.calls.calls()
        busy = await dial(st, establish=False)  # max_calls=1: the line is full
        try:
            refused = await busy.peer.response(within=WAIT)
            while refused.code < 200:  # 180 Ringing comes before the handler's answer
                refused = await busy.peer.response(within=WAIT)
            assert refused.code == 486 and refused.headers.get("Retry-After") == "5"
        finally:
            hang_up(busy)
        # e.g. DELETE of the call, or the session ended: the agent sends BYE
        ending = asyncio.create_task(st.calls.end(call, "hung up"))
        bye = await phone.peer.request("BYE", within=WAIT)
        phone.peer.reply(bye, 200)
        await asyncio.wait_for(ending, WAIT)
    finally:
        hang_up(phone)
    assert call.end_reason == "hung up"


async def test_hold_and_unhold_by_reinvite(app: FastAPI) -> None:
    st: AppState = app.state.parley
    phone = await dial(st)
    try:
        [call] = st.calls.calls()
        phone.call.in_dialog("INVITE", body=offer(phone.rtp.port, direction="sendonly", version=2))
        held = await phone.peer.response(200, within=WAIT)
        assert "a=recvonly" in held.body.decode()
        phone.call.ack()
        await until(lambda: call.session.on_hold)
        phone.call.in_dialog("INVITE", body=offer(phone.rtp.port, version=3))
        back = await phone.peer.response(200, within=WAIT)
        assert "a=sendrecv" in back.body.decode()
        phone.call.ack()
        await until(lambda: not call.session.on_hold)
        ending = asyncio.create_task(st.calls.end(call, "test over"))
        phone.peer.reply(await phone.peer.request("BYE", within=WAIT), 200)
        await asyncio.wait_for(ending, WAIT)
    finally:
        hang_up(phone)


async def test_operator_transfers_a_call_with_refer(app: FastAPI) -> None:
    st: AppState = app.state.parley
    phone = await dial(st)
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://parley.test")
    try:
        [call] = st.calls.calls()
        url = f"/v1/calls/{call.id}/transfer"
        assert (await api.post(url)).status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert (await api.post("/v1/calls/call_nope/transfer", headers=auth)).status_code == 404
        transfer = asyncio.create_task(api.post(url, headers=auth))
        refer = await phone.peer.request("REFER", within=WAIT)
        assert refer.headers.get("Refer-To") in ("sip:desk@127.0.0.1", "<sip:desk@127.0.0.1>")
        phone.peer.reply(refer, 202, "Accepted")
        answer = await asyncio.wait_for(transfer, WAIT)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"call_id": call.id, "target": "sip:desk@127.0.0.1", "status": 202}
        # the transferred caller's side hangs up
        phone.call.in_dialog("BYE")
        await phone.peer.response(200, within=WAIT)
        await asyncio.wait_for(call.wait_ended(), WAIT)
    finally:
        await api.aclose()
        hang_up(phone)
