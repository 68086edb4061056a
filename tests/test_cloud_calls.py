"""Cloud providers over a real call: Groq and ElevenLabs serve it, local models stand in.

The server app is the real one (``tests.server``), its models built by
``AgentModels.load`` from provider chains whose cloud providers are the
official SDKs pointed (``GROQ_BASE_URL``, ``ELEVENLABS_BASE_URL``) at the
loopback vendors of ``tests.vendors``; the local models are real. The caller
is a real aiortc peer on loopback (``media.caller``) that speaks Piper speech
or types on the data channel, and keeps the agent's audio to tell the voices
apart: the ElevenLabs loopback speaks a two-formant tone per character, whose
spectrum is nothing like Piper's voice.

Every log record of the module (the root logger at DEBUG, and uvicorn's
access and error logs) is kept; each test checks that no key, token, question
or reply appears in any of them.

Two product bugs found here are pinned as expected failures: the history
loses the apology (it shares the failed reply's turn id), and the embedded
store's driver logs turn texts at DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import numpy.typing as npt
import pytest
from aiortc.mediastreams import MediaStreamTrack
from prometheus_client.parser import text_string_to_metric_families

from agent.config import AgentConfig
from agent.runtime import AgentModels
from media.caller import TRACK_RATE, CallerPeer
from media.frames import PCM, PIPELINE_RATE, rms_dbfs
from media.wav import read_wav
from tests.logcapture import LogCapture
from tests.server import running_server
from tests.speech import compose, speak
from tests.vendors.elevenlabs_api import Behaviour, ElevenLabsAPI, synthesize
from tests.vendors.openai_api import (
    CHAT,
    TRANSCRIPTIONS,
    ChatReply,
    HttpFault,
    OpenAIAPIServer,
    TranscriptionReply,
)
from tests.webrtc_client import connect, wait_for

pytestmark = pytest.mark.slow

GROQ_KEY = "gsk_loopback_call_secret_0123456789"
ELEVEN_KEY = "xi_loopback_call_secret_9876543210"
REVOKED_KEY = "gsk_loopback_revoked_secret_5555"
"""A Groq key the loopback refuses (401), as after a key rotation."""

COOLDOWN_S = 10.0
"""The breakers' cool-down. The turn after the one that opens Groq's circuit asks the
LLM about 5 s later (a short local reply played out), so it finds the circuit open
with a margin of as much again; the turn after the cool-down is the probe."""

APOLOGY = "Sorry, something went wrong. Please say that again."

AGENT_YAML = f"""
greeting: null
llm:
  seed: 7
  max_tokens: 12             # short local replies keep the turns of a call short
fallback:
  breaker_failures: 2
  breaker_cooldown_s: {COOLDOWN_S}
  apology: "{APOLOGY}"
"""

PRICES_YAML = """
providers:
  local: 0
  cache: 0
  groq:
    llm: {usd_per_1m_prompt_tokens: 1.0, usd_per_1m_completion_tokens: 2.0}
    stt: {usd_per_hour: 3.6, min_seconds_per_request: 10}
  elevenlabs:
    tts: {usd_per_1k_chars: 0.5}
"""
"""Round prices, so each turn's expected cost follows from its usage exactly."""

LOUD_DBFS = -45.0
"""Received frames above this are the agent speaking (its silence is digital)."""


# ------------------------------------------------------------------ log capture


@pytest.fixture(scope="module")
def logs() -> Iterator[LogCapture]:
    """Every record of the module, from its first model load to its last server stop."""
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    levels = root.level, access.level
    capture = LogCapture(keys={GROQ_KEY, ELEVEN_KEY, REVOKED_KEY})
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        capture.unwatch()
        root.setLevel(levels[0])
        access.setLevel(levels[1])


# ------------------------------------------------------------------ vendors, models, servers


@dataclass
class Vendors:
    groq: OpenAIAPIServer
    eleven: ElevenLabsAPI

    def env(self, stt: str, llm: str, tts: str, groq_key: str = GROQ_KEY) -> dict[str, str]:
        """The environment of a server whose chains point at these loopback vendors."""
        return {
            "PARLEY_STT": stt,
            "PARLEY_LLM": llm,
            "PARLEY_TTS": tts,
            "GROQ_API_KEY": groq_key,
            "GROQ_BASE_URL": self.groq.groq_base_url,
            "ELEVENLABS_API_KEY": ELEVEN_KEY,
            "ELEVENLABS_BASE_URL": self.eleven.base_url,
        }


@pytest.fixture(scope="module")
async def vendors(logs: LogCapture) -> AsyncIterator[Vendors]:
    async with (
        OpenAIAPIServer(api_key=GROQ_KEY) as groq,
        ElevenLabsAPI(api_key=ELEVEN_KEY) as eleven,
    ):
        yield Vendors(groq, eleven)


@pytest.fixture(scope="module")
def agent_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agent") / "cloud.yaml"
    path.write_text(AGENT_YAML, "utf-8")
    return path


@pytest.fixture(scope="module")
def prices_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.yaml"
    path.write_text(PRICES_YAML, "utf-8")
    return path


@contextmanager
def serving(
    env: dict[str, str], agent_yaml: Path, prices_yaml: Path, logs: LogCapture
) -> Iterator[tuple[str, AgentModels]]:
    """A server whose models are loaded from ``env``'s chains; closed with the server."""
    models = AgentModels.load(AgentConfig.load(agent_yaml), env)
    with running_server(
        models, close_models=True, agent_config=agent_yaml, prices=prices_yaml, max_calls=2
    ) as url:
        logs.watch_server_logs()
        yield url, models


@pytest.fixture(scope="module")
def cloud_url(
    vendors: Vendors, agent_yaml: Path, prices_yaml: Path, logs: LogCapture
) -> Iterator[str]:
    """The server of most tests: Groq then local for STT and LLM, ElevenLabs then local TTS."""
    env = vendors.env(stt="groq,local", llm="groq,local", tts="elevenlabs,local")
    with serving(env, agent_yaml, prices_yaml, logs) as (url, models):
        assert models.chains == {
            "stt": "groq,local",
            "llm": "groq,local",
            "tts": "elevenlabs,local",
        }
        yield url


@pytest.fixture
async def client(cloud_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cloud_url, timeout=30) as c:
        yield c


# ------------------------------------------------------------------ the caller


class _Tap(MediaStreamTrack):
    """Passes the agent's track through, keeping the first channel of each frame."""

    kind = "audio"

    def __init__(self, track: MediaStreamTrack, frames: list[tuple[float, PCM]]) -> None:
        super().__init__()
        self._track = track
        self._frames = frames

    async def recv(self) -> Any:
        frame = await self._track.recv()
        if isinstance(frame, av.AudioFrame):
            channels = len(frame.layout.channels)
            pcm = frame.to_ndarray().reshape(-1, channels)[:, 0].astype(np.int16)
            self._frames.append((time.monotonic(), pcm))
        return frame


class Caller(CallerPeer):
    """The project's caller peer, also keeping the agent's audio (48 kHz, mono)."""

    def __init__(self) -> None:
        super().__init__()
        self.audio: list[tuple[float, PCM]] = []
        """(arrival monotonic time, PCM) of every received frame."""

    async def _read(self, track: MediaStreamTrack) -> None:
        await super()._read(_Tap(track, self.audio))

    def loud_audio(self, since: float) -> PCM:
        """The agent's audible frames received since ``since``, joined."""
        frames = [pcm for t, pcm in self.audio if t >= since and rms_dbfs(pcm) > LOUD_DBFS]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)


@dataclass
class Call:
    caller: Caller
    session_id: str
    session_token: str


@asynccontextmanager
async def placed_call(client: httpx.AsyncClient, logs: LogCapture) -> AsyncIterator[Call]:
    """A connected WebRTC call in a new room, hung up at the end (on the data channel,
    so the server ends the call at once); every token and text of the call then
    joins the secrets the logs must not contain."""
    room = (await client.post("/v1/rooms")).json()
    caller = Caller()
    try:
        answer = await connect(caller, client, room)
        logs.keys.update({room["token"], answer["session_token"]})
        await wait_for(caller, lambda: caller.connected, 30)
        yield Call(caller, answer["session_id"], answer["session_token"])
        caller.send({"type": "hangup"})
        await wait_for(caller, lambda: caller.pc.connectionState == "closed", 30)
    finally:
        await caller.close()
        said = [e["text"] for _, e in caller.of_type("transcript") if e["final"]]
        logs.keep_secret(*said, *(e["text"] for _, e in caller.of_type("reply")))


@dataclass
class Turn:
    """One turn of a call as the caller saw it: its events and the agent's audio."""

    transcript: str
    replies: list[dict[str, Any]]
    """Reply events of the turn (a failed reply, then the apology, on failure)."""
    metrics: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    audio: PCM

    @property
    def answer(self) -> str:
        """What the caller heard in full: the last reply."""
        text: str = self.replies[-1]["text"]
        return text

    @property
    def usage(self) -> dict[str, Any]:
        """The last reply's usage."""
        usage: dict[str, Any] = self.metrics[-1]["usage"]
        return usage


async def finish_turn(caller: Caller, since: float, within_s: float = 60.0) -> Turn:
    """Wait until the turn begun at ``since`` was answered in full; its events and audio."""

    def finals() -> list[dict[str, Any]]:
        return [e for _, e in caller.of_type("transcript", since) if e["final"]]

    await wait_for(caller, lambda: bool(finals()), within_s)
    transcript = finals()[0]

    def of_turn(kind: str) -> list[dict[str, Any]]:
        # turns are taken one at a time: what came since is this turn's (and the
        # apology's, a turn of its own after a failed reply)
        return [e for _, e in caller.of_type(kind, since) if e.get("turn_id")]

    def answered() -> bool:
        replies = of_turn("reply")
        heard = any(not r["interrupted"] for r in replies)
        return heard and len(of_turn("metrics")) == len(replies)  # metrics follow replies

    await wait_for(caller, answered, within_s)
    return Turn(
        transcript["text"],
        of_turn("reply"),
        of_turn("metrics"),
        [e for _, e in caller.of_type("error", since)],
        caller.loud_audio(since),
    )


async def typed_turn(caller: Caller, text: str) -> Turn:
    """Type ``text`` on the data channel; the turn once answered."""
    since = time.monotonic()
    caller.send({"type": "text", "text": text})
    return await finish_turn(caller, since)


async def spoken_turn(caller: Caller, text: str) -> Turn:
    """Say ``text`` (Piper speech) into the microphone; the turn once answered."""
    since = time.monotonic()
    clip = caller.track.play(compose(0.3, text, 0.3), PIPELINE_RATE)
    assert await clip.wait(30)
    return await finish_turn(caller, since)


# ------------------------------------------------------------------ whose voice


def _spectrum(pcm: PCM, n: int = 4096) -> npt.NDArray[np.float64]:
    """Mean magnitude spectrum, 80 Hz to 4 kHz (Hann windows, half overlapping)."""
    x = pcm.astype(np.float64)
    if x.size < n:
        x = np.pad(x, (0, n - x.size))
    window = np.hanning(n)
    power = np.mean(
        [np.abs(np.fft.rfft(x[s : s + n] * window)) ** 2 for s in range(0, x.size - n + 1, n // 2)],
        axis=0,
    )
    freqs = np.fft.rfftfreq(n, 1 / TRACK_RATE)
    band: npt.NDArray[np.float64] = np.sqrt(power[(freqs >= 80) & (freqs <= 4000)])
    return band


def _likeness(heard: PCM, reference: PCM) -> float:
    """Cosine similarity of two signals' spectra: 1 for the same spectral lines."""
    a, b = _spectrum(heard), _spectrum(reference)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_voice(heard: PCM, text: str, voice: str) -> None:
    """``heard`` is ``text`` in ``voice``: the ElevenLabs loopback's tones or Piper's voice.

    The received audio (Opus-coded) is compared with both renderings of the
    text: the vendor's per-character formant tones match their own spectrum
    almost exactly (0.99) and Piper's far less (0.7 to 0.8); Piper's voice
    matches Piper's rendering (0.98) and the tones far less (0.7 to 0.8).
    """
    assert heard.size >= TRACK_RATE // 2, f"only {heard.size / TRACK_RATE:.2f} s heard"
    vendor = _likeness(heard, synthesize(text, TRACK_RATE))
    piper = _likeness(heard, speak(text, TRACK_RATE))
    if voice == "elevenlabs":
        assert vendor > 0.95 and vendor > piper + 0.1, (vendor, piper)
    else:
        assert piper > 0.9 and piper > vendor + 0.1, (vendor, piper)


# ------------------------------------------------------------------ metrics and history


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """Every sample of ``/metrics`` by name and labels."""
    text = (await client.get("/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when it has not been exported yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Growth:
    """What ``/metrics`` counted between two scrapes."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return sample(self.after, name, **labels) - sample(self.before, name, **labels)

    def failures(self, stage: str, provider: str, kind: str) -> float:
        """Failed (or skipped) attempts of one provider, of one kind."""
        return self("parley_provider_failures_total", stage=stage, provider=provider, kind=kind)


async def history(client: httpx.AsyncClient, call: Call) -> list[dict[str, Any]]:
    """The turns of a call's session, once the call has ended and everything is stored.

    The writer is asynchronous but keeps order: the session is marked ended
    after every turn of its call was written.
    """
    auth = {"Authorization": f"Bearer {call.session_token}"}
    url = f"/v1/sessions/{call.session_id}"
    for _ in range(300):  # a hang guard: the writer flushes in milliseconds
        got = await client.get(url, headers=auth)
        if got.status_code == 200 and got.json()["status"] == "ended":
            break
        await asyncio.sleep(0.1)
    else:
        raise TimeoutError(f"session {call.session_id} not ended")
    rows: list[dict[str, Any]] = (await client.get(f"{url}/history", headers=auth)).json()["turns"]
    return rows


def assistant_usage(rows: list[dict[str, Any]]) -> list[tuple[str | None, str | None]]:
    """(LLM provider, TTS provider) of each agent turn in the history."""
    return [
        (r["usage"]["llm_provider"], r["usage"]["tts_provider"])
        for r in rows
        if r["role"] == "assistant"
    ]


# ------------------------------------------------------------------ tests


async def test_a_call_on_groq_and_elevenlabs_survives_groq_failing_mid_call(
    vendors: Vendors, client: httpx.AsyncClient, logs: LogCapture
) -> None:
    groq, eleven = vendors.groq, vendors.eleven
    question, answer = "What is the capital of France?", "The capital of France is Paris."
    typed = ["And what about Italy?", "Tell me something about Spain.", "And its capital?"]
    groq.transcription = TranscriptionReply.of(question)
    chats_before = len(groq.recorded(CHAT))
    start = await scrape(client)
    async with placed_call(client, logs) as call:
        caller = call.caller

        # 1. Groq transcribes the caller's words and answers; ElevenLabs speaks.
        groq.queue_chat(ChatReply(answer, prompt_tokens=57))
        spoken = await spoken_turn(caller, question)
        assert spoken.transcript == question and spoken.answer == answer
        heard_by_groq = read_wav(groq.recorded(TRANSCRIPTIONS)[-1].files["file"][1])
        assert groq.recorded(CHAT)[-1].json["messages"][-1]["content"] == question
        assert " ".join(eleven.last("stream-input").text.split()) == answer
        assert_voice(spoken.audio, answer, "elevenlabs")
        usage = spoken.usage
        providers = (usage["stt_provider"], usage["llm_provider"], usage["tts_provider"])
        assert providers == ("groq", "groq", "elevenlabs")
        # the loopback counts a completion token per word
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (57, 6)
        assert usage["tts_chars"] == len(answer)
        # what Groq transcribed, the caller's question (billed as the 10 s minimum)
        assert usage["stt_audio_s"] == pytest.approx(heard_by_groq.duration, abs=0.01)
        assert 1.0 < heard_by_groq.duration < 10
        served = await scrape(client)
        grew = Growth(start, served)
        for stage, provider in (("stt", "groq"), ("llm", "groq"), ("tts", "elevenlabs")):
            assert grew("parley_provider_requests_total", stage=stage, provider=provider) == 1
        assert grew("parley_llm_tokens_total", provider="groq", kind="prompt") == 57
        assert grew("parley_llm_tokens_total", provider="groq", kind="completion") == 6

        # 2. Groq fails the next turn (500, and 500 again on the retry): the local model
        # answers within the turn, and the two failures open Groq's circuit.
        groq.queue_chat(ChatReply(fault=HttpFault(500)), ChatReply(fault=HttpFault(500)))
        failed = await typed_turn(caller, typed[0])
        assert len(groq.recorded(CHAT)) == chats_before + 3
        assert failed.usage["llm_provider"] == "local"
        assert [r["interrupted"] for r in failed.replies] == [False] and not failed.errors
        assert_voice(failed.audio, failed.answer, "elevenlabs")  # the voice is still the vendor's
        opened = await scrape(client)
        grew = Growth(served, opened)
        assert grew.failures("llm", "groq", "unavailable") == 2
        assert grew("parley_provider_retries_total", stage="llm", provider="groq") == 1
        assert grew("parley_provider_fallbacks_total", stage="llm", provider="local") == 1
        assert grew("parley_provider_requests_total", stage="llm", provider="local") == 1
        assert sample(opened, "parley_provider_circuit_open", stage="llm", provider="groq") == 1
        opened_at = time.monotonic()  # the circuit opened before this
        providers = (await client.get("/health")).json()["providers"]
        assert providers["chains"]["llm"] == "groq,local"
        assert providers["circuits"]["llm/groq"] == "open"
        assert providers["circuits"]["tts/elevenlabs"] == "closed"

        # 3. While the circuit is open Groq is not asked: the local model answers.
        skipped = await typed_turn(caller, typed[1])
        assert len(groq.recorded(CHAT)) == chats_before + 3
        assert skipped.usage["llm_provider"] == "local" and not skipped.errors
        assert Growth(opened, await scrape(client)).failures("llm", "groq", "circuit_open") == 1

        # 4. After the cool-down one probe goes to Groq; it succeeds and closes the circuit.
        await asyncio.sleep(max(0.0, opened_at + COOLDOWN_S - time.monotonic()))
        probe_answer = "Madrid is the capital of Spain."
        groq.queue_chat(ChatReply(probe_answer))
        probe = await typed_turn(caller, typed[2])
        assert len(groq.recorded(CHAT)) == chats_before + 4
        assert probe.answer == probe_answer and probe.usage["llm_provider"] == "groq"
        assert_voice(probe.audio, probe_answer, "elevenlabs")
        closed = await scrape(client)
        assert sample(closed, "parley_provider_circuit_open", stage="llm", provider="groq") == 0
        grew = Growth(opened, closed)
        assert grew("parley_provider_requests_total", stage="llm", provider="groq") == 1

    # The history has every turn, each agent turn with who served it and its cost.
    rows = await history(client, call)
    assert [r["text"] for r in rows if r["role"] == "user"] == [question, *typed]
    assert assistant_usage(rows) == [
        ("groq", "elevenlabs"),
        ("local", "elevenlabs"),
        ("local", "elevenlabs"),
        ("groq", "elevenlabs"),
    ]
    first = rows[1]["usage"]
    assert first["cost_by_stage"] == pytest.approx(
        {"stt": 10 * 3.6 / 3600, "llm": (57 * 1.0 + 6 * 2.0) / 1e6, "tts": len(answer) * 0.5 / 1e3}
    )
    assert first["cost_usd"] == pytest.approx(sum(first["cost_by_stage"].values()))
    # The capture got the server's records at DEBUG and its access log: a clean capture
    # means something.
    assert logs.logged("agent.fallback", "provider groq skipped", logging.DEBUG)
    assert logs.logged("agent.fallback", "provider groq failed (unavailable", logging.WARNING)
    assert logs.logged("uvicorn.access", "/offer", logging.INFO)
    logs.assert_clean()


@pytest.fixture
def groq_only_url(
    vendors: Vendors, agent_yaml: Path, prices_yaml: Path, logs: LogCapture
) -> Iterator[str]:
    """A server whose LLM chain is Groq alone, with a key Groq refuses (401)."""
    env = vendors.env(stt="local", llm="groq", tts="elevenlabs,local", groq_key=REVOKED_KEY)
    with serving(env, agent_yaml, prices_yaml, logs) as (url, _):
        yield url


async def test_with_every_llm_failing_the_caller_hears_the_local_apology_and_the_call_goes_on(
    vendors: Vendors, groq_only_url: str, logs: LogCapture
) -> None:
    groq, eleven = vendors.groq, vendors.eleven
    chats_before = len(groq.recorded(CHAT))
    async with httpx.AsyncClient(base_url=groq_only_url, timeout=30) as client:
        async with placed_call(client, logs) as call:
            start = await scrape(client)
            turn = await typed_turn(call.caller, "Can you book a table for two?")
            # Groq refused the key: asked once (a 401 is not retried); no other LLM to ask.
            refused = groq.recorded(CHAT)[chats_before:]
            assert [r.headers["authorization"] for r in refused] == [f"Bearer {REVOKED_KEY}"]
            assert [(e["stage"], e["retryable"]) for e in turn.errors] == [("reply", False)]
            assert "groq=auth" in turn.errors[0]["message"]
            failed, apology = turn.replies
            assert failed["interrupted"] and failed["heard_text"] == ""
            assert apology["text"] == APOLOGY and not apology["interrupted"]
            # the apology is in the local voice, never the vendor's
            assert_voice(turn.audio, APOLOGY, "local")
            assert turn.usage["tts_provider"] == "local"
            assert not any("Sorry" in r.text for r in eleven.requests)
            failed_once = await scrape(client)
            grew = Growth(start, failed_once)
            assert grew.failures("llm", "groq", "auth") == 1
            assert grew("parley_provider_exhausted_total", stage="llm") == 1
            circuit = sample(
                failed_once, "parley_provider_circuit_open", stage="llm", provider="groq"
            )
            assert circuit == 1

            # The call goes on: the next turn is answered too. The refused key keeps the
            # circuit open, so Groq is not asked again and the apology comes at once.
            again = await typed_turn(call.caller, "Are you still there?")
            assert again.answer == APOLOGY
            assert len(groq.recorded(CHAT)) == chats_before + 1
            grew = Growth(failed_once, await scrape(client))
            assert grew.failures("llm", "groq", "circuit_open") == 1
            assert grew("parley_provider_exhausted_total", stage="llm") == 1
        rows = await history(client, call)
    users = [r["text"] for r in rows if r["role"] == "user"]
    assert users == ["Can you book a table for two?", "Are you still there?"]
    logs.assert_clean()
    heard = [r["text"] for r in rows if r["role"] == "assistant" and r["text"]]
    assert heard == [APOLOGY, APOLOGY]  # each apology is a turn of its own


async def test_elevenlabs_refusing_before_any_audio_leaves_the_reply_to_the_local_voice(
    vendors: Vendors, client: httpx.AsyncClient, logs: LogCapture
) -> None:
    groq, eleven = vendors.groq, vendors.eleven
    answer = "It is sunny in Rome today."
    async with placed_call(client, logs) as call:
        start = await scrape(client)
        sockets_before = len(eleven.requests)
        # Rate limited, to try again in a minute: far beyond the turn's budget.
        eleven.script(Behaviour(status=429, retry_after="60"))
        groq.queue_chat(ChatReply(answer))
        turn = await typed_turn(call.caller, "How is the weather in Rome?")
        assert turn.answer == answer and not turn.errors
        assert (turn.usage["llm_provider"], turn.usage["tts_provider"]) == ("groq", "local")
        assert_voice(turn.audio, answer, "local")
        # asked once: the Retry-After is not waited for, nor the request retried
        assert [r.kind for r in eleven.requests[sockets_before:]] == ["stream-input"]
        grew = Growth(start, await scrape(client))
        assert grew.failures("tts", "elevenlabs", "rate_limited") == 1
        assert grew("parley_provider_reroutes_total", stage="tts", provider="elevenlabs") == 1
        assert grew("parley_provider_requests_total", stage="tts", provider="local") == 1
    assert assistant_usage(await history(client, call)) == [("groq", "local")]
    logs.assert_clean()


async def test_the_store_logs_no_turn_text_at_debug(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    text = "My account number is 4242 and my PIN is 1234."
    answered = await client.post("/v1/chat/text", json={"text": text})
    assert answered.status_code == 200, answered.text
    chat = answered.json()
    auth = {"Authorization": f"Bearer {chat['session_token']}"}
    url = f"/v1/sessions/{chat['session_id']}/history"
    for _ in range(300):  # until both turns are written: their statements have run
        got = await client.get(url, headers=auth)  # 404 until the session's row is written
        if got.status_code == 200 and len(got.json()["turns"]) == 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise TimeoutError("the chat's turns were not stored")
    leaks = [c.record.name for c in logs.captured if text in logs.text_of(c)]
    assert not leaks, f"the chat's text was logged by {sorted(set(leaks))}"
