"""Echo cancellation: the agent must not hear itself on a speakerphone caller's line.

The echo path is simulated as a phone would return it: the agent's output at
the wire rate (8 kHz, G.711's), delayed and attenuated, mixed with the
caller's own voice and low noise, normalised to 16 kHz by the bridge's
``FrameNormalizer``, then cleared by ``media.echo.EchoFilter``.

Fast tests cover the playout tap, the reference alignment and AEC3 on Piper
speech; the bridge test runs a real-time call on fake providers whose TTS
speaks Piper audio; the slow tests drive a ``VoiceSession`` with the real
local models in lock-step (one 20 ms frame in, one out).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.events import AgentEvent, InterruptionEvent, ReplyEvent, TranscriptEvent, VadEvent
from agent.runtime import AgentModels
from agent.session import VoiceSession
from media.echo import (
    RESAMPLE_CUSHION,
    Alignment,
    EchoFilter,
    PlayoutReference,
    WebRtcEchoCanceller,
    open_echo_filter,
)
from media.frames import PCM, AudioFrame
from media.playout import PlayoutBuffer, ReferenceTap
from media.resample import FrameNormalizer, resample
from media.transport import ControlInbox, ControlMessage
from signaling.calls import CallManager
from store.settings import StoreSettings
from store.store import Store
from tests.fakes import FakeSTT, FakeTTS, ScriptedLLM, fake_models
from tests.speech import compose, speak
from tests.textnorm import phrase_error

GREETING = (
    "Welcome to the demo line of the city library. Our opening hours are nine to five on "
    "weekdays, and ten to two on Saturdays. You can borrow up to twelve books at a time, "
    "and renew them online or by phone. We also have a music room and a quiet study hall."
)
SHORT_GREETING = "Welcome to the city library. Our opening hours are nine to five on weekdays."
ECHO_GAIN_DB = -15.0
NOISE_DBFS = -70.0
HANG_GUARD_S = 60.0
"""Only turns a hang into a failure; no assert depends on how long anything took."""


def erle_db(echo: np.ndarray, residual: np.ndarray) -> float:
    """Echo return loss enhancement: how much quieter the residual is than the echo."""
    e = float(np.mean(np.square(echo.astype(np.float64))))
    r = float(np.mean(np.square(residual.astype(np.float64))))
    return 10 * math.log10(e / max(r, 1e-3))


def level_db(pcm: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(pcm.astype(np.float64)))) + 1e-9)


class EchoPath:
    """The caller's phone: plays the agent, returns it ``delay_ms`` later at ``gain_db``."""

    def __init__(self, rate: int, delay_ms: int, gain_db: float = ECHO_GAIN_DB) -> None:
        self.frame = rate // 50
        self._line = np.zeros(rate * delay_ms // 1000, np.float64)
        self._gain = 10 ** (gain_db / 20)
        self._noise = np.random.default_rng(7)

    def played(self, pcm: PCM) -> None:
        self._line = np.concatenate([self._line, pcm.astype(np.float64) * self._gain])

    def returned(self, caller: PCM | None = None) -> PCM:
        """The next frame the phone sends: echo + noise (+ a whole frame of the caller's voice)."""
        out, self._line = self._line[: self.frame], self._line[self.frame :]
        out = out + self._noise.standard_normal(self.frame) * 32768 * 10 ** (NOISE_DBFS / 20)
        if caller is not None and caller.size == self.frame:
            out = out + caller
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)


# ------------------------------------------------------------------ playout tap


async def test_tap_keeps_the_newest_output_by_position() -> None:
    playout = PlayoutBuffer(8000)
    playout.pull()  # output before the tap exists is not kept
    tap = playout.tap(keep_ms=100)  # 800 samples
    assert playout.tap() is tap and tap.end == 160 and tap.speech_end == 0
    ramp = (np.arange(1200) + 1).astype(np.int16)
    seg = playout.open_segment("u", "ramp")
    await playout.push(seg, ramp)
    for _ in range(10):  # 1600 samples: the ramp, then filler silence
        playout.pull()
    assert tap.end == 160 + 1600 and tap.start == tap.end - 800
    assert tap.speech_end == 160 + 1280  # the ramp ends inside the eighth frame
    # positions: the ramp starts at 160; what is held reads back exactly
    assert np.array_equal(tap.read(960, 400), ramp[800:1200])
    assert np.array_equal(tap.read(1320, 100), np.r_[ramp[1160:], np.zeros(60)])
    # evicted, never pulled and future samples read as silence
    assert not tap.read(0, 960).any() and not tap.read(tap.end, 50).any()
    assert np.array_equal(tap.read(900, 120), np.r_[np.zeros(60), ramp[800:860]])
    assert np.array_equal(tap.latest(50), tap.read(tap.end - 400, 400))


def test_tap_writes_wrap_and_gaps_read_as_silence() -> None:
    tap = ReferenceTap(1000, keep_ms=100)  # 100 samples
    tap.write(0, np.full(70, 1, np.int16), speech=True)
    tap.write(70, np.full(70, 2, np.int16), speech=False)  # wraps around the ring
    assert np.array_equal(tap.read(40, 100), np.r_[np.full(30, 1), np.full(70, 2)])
    tap.write(150, np.full(10, 3, np.int16), speech=False)  # a 10-sample gap
    assert np.array_equal(tap.read(130, 30), np.r_[np.full(10, 2), np.zeros(10), np.full(10, 3)])
    assert tap.speech_end == 70
    tap.write(1000, np.full(250, 4, np.int16), speech=True)  # longer than the ring
    assert tap.start == 1150 and np.array_equal(tap.latest(100), np.full(100, 4))
    with pytest.raises(ValueError, match="goes back"):
        tap.write(10, np.zeros(5, np.int16), speech=False)


# ----------------------------------------------------------- reference alignment


def test_reference_pairs_each_caller_sample_with_a_fixed_played_sample() -> None:
    rng = np.random.default_rng(1)
    played = rng.integers(-8000, 8000, 320 * 40).astype(np.int16)
    tap = ReferenceTap(16000)
    ref = PlayoutReference(tap)
    got = []
    for k in range(40):
        got.append(ref.take(320))  # caller frame k arrives, then output frame k is played
        tap.write(k * 320, played[k * 320 : (k + 1) * 320], speech=True)
    joined = np.concatenate([g for g in got if g is not None])
    lag = 320 + RESAMPLE_CUSHION  # one frame of lead, plus the resampler cushion
    assert joined.size == 40 * 320 and not joined[:lag].any()
    assert np.array_equal(joined[lag:], played[: joined.size - lag])
    assert ref.resyncs == 0


@pytest.mark.parametrize("rate", [8000, 48000])
def test_reference_is_resampled_to_16k_with_a_constant_delay(rate: int) -> None:
    t = np.arange(rate * 2) / rate
    chirp = np.round(8000 * np.sin(2 * np.pi * (200 + 800 * t) * t)).astype(np.int16)
    tap = ReferenceTap(rate)
    ref = PlayoutReference(tap)
    frame = rate // 50
    got = []
    for k in range(100):
        got.append(ref.take(320))
        tap.write(k * frame, chirp[k * frame : (k + 1) * frame], speech=True)
    joined = np.concatenate([g for g in got if g is not None]).astype(np.float64)
    expected = resample(chirp, rate, 16000).astype(np.float64)
    assert joined.size == 100 * 320

    def best_lag(lo: int, hi: int) -> int:
        scores = [np.dot(joined[lo:hi], expected[lo - d : hi - d]) for d in range(300, 420)]
        return 300 + int(np.argmax(scores))

    early, late = best_lag(4000, 12000), best_lag(20000, 30000)
    assert early == late  # the pairing does not drift
    assert abs(early - (320 + RESAMPLE_CUSHION)) <= 24  # lead + cushion + a resampler's delay


def test_an_early_caller_frame_moves_the_pairing_back_instead_of_reading_silence() -> None:
    """The phases of the caller's packets and our pacer wander: a caller frame that
    comes before all the audio it pairs with was played must not read the rest as
    silence (the wire benchmark read ~70% silence per frame and AEC3 never converged)."""
    rng = np.random.default_rng(2)
    played = rng.integers(1000, 8000, 320 * 60).astype(np.int16)  # never zero
    tap = ReferenceTap(16000)
    ref = PlayoutReference(tap)
    pos = 0

    def play(n: int) -> None:
        nonlocal pos
        tap.write(pos, played[pos : pos + n], speech=True)
        pos += n

    play(320)
    ref.take(320)  # anchored one frame of lead behind the newest output
    got = []
    for k in range(40):
        if k < 10:
            play(320)
            got.append(ref.take(320))
        else:  # from here the caller's frames come half a frame earlier
            play(160)
            got.append(ref.take(320))
            play(160)
    assert ref.slips == 1 and ref.resyncs == 0
    # every reference frame is played audio, no silence read in
    joined = np.concatenate([g for g in got if g is not None])[RESAMPLE_CUSHION:]
    assert joined.size and np.count_nonzero(joined == 0) == 0


def test_jitter_keeps_the_pairing_and_a_stall_reanchors_it() -> None:
    tap = ReferenceTap(16000)
    ref = PlayoutReference(tap, Alignment(max_lag_ms=260, max_ahead_ms=60))
    frame = np.ones(320, np.int16)
    pos = 0

    def play(n: int) -> None:
        nonlocal pos
        for _ in range(n):
            tap.write(pos, frame, speech=True)
            pos += 320

    # caller frames arrive in bursts of up to three against a steady playout
    for burst in [1, 3, 0, 0, 2, 1, 0, 2, 0, 1] * 5:
        for _ in range(burst):
            ref.take(320)
        play(1)
    assert ref.resyncs == 0
    play(20)  # the caller's audio stops for 400 ms while the agent talks
    ref.take(320)
    assert ref.resyncs == 1
    for _ in range(6):  # the caller's audio runs 120 ms ahead of the playout
        ref.take(320)
    assert ref.resyncs == 2


def test_reference_is_none_while_the_agent_is_quiet() -> None:
    tap = ReferenceTap(16000)
    ref = PlayoutReference(tap, Alignment(idle_after_ms=200))
    silent, loud = np.zeros(320, np.int16), np.full(320, 100, np.int16)
    results: list[bool] = []
    for k, speech in enumerate([False] * 15 + [True] * 5 + [False] * 20):
        results.append(ref.take(320) is None)
        tap.write(k * 320, loud if speech else silent, speech=speech)
    # the cursor runs one frame behind the tap: idle once it is 200 ms past the
    # agent's last sound (or the start), busy again as soon as it reaches new sound
    assert not any(results[:11]) and all(results[11:16])
    assert not any(results[16:31]) and all(results[31:])


# ---------------------------------------------------------------- the canceller


async def _cancel_through_playout(
    rate: int, delay_ms: int, caller: PCM | None = None, seconds: float = 8.0
) -> tuple[np.ndarray, np.ndarray]:
    """Agent speech played at ``rate``, returned with echo (+ ``caller``, 16 kHz).

    Returns what the phone sent and what the canceller made of it, both at 16 kHz.
    """
    playout = PlayoutBuffer(rate)
    echo = EchoFilter.for_playout(playout)
    seg = playout.open_segment("u", GREETING)
    await playout.push(seg, speak(GREETING, rate))
    phone = EchoPath(rate, delay_ms)
    normalizer = FrameNormalizer(16000)
    voice = np.zeros(0, np.int16) if caller is None else resample(caller, 16000, rate)
    sent, cleaned = [], []
    for k in range(round(seconds * 50)):
        mine = voice[k * phone.frame : (k + 1) * phone.frame]
        mic = normalizer.process(AudioFrame(phone.returned(mine), rate))
        sent.append(mic.samples)
        cleaned.append(echo.process(mic).samples)
        phone.played(playout.pull()[0])
    echo.close()
    return np.concatenate(sent), np.concatenate(cleaned)


@pytest.mark.parametrize("delay_ms", [40, 80, 200])
async def test_aec_removes_the_agents_echo_from_the_start(delay_ms: int) -> None:
    sent, out = await _cancel_through_playout(8000, delay_ms)
    # the normaliser's short first frame was padded to whole 10 ms blocks, and no
    # samples wait in the canceller
    assert out.size == sent.size + -sent.size % 160
    # measured 33-42 dB in the first second and ~60 dB later (bench/echo.py)
    assert erle_db(sent[:16000], out[:16000]) > 20
    assert erle_db(sent[48000:128000], out[48000:128000]) > 35


async def test_aec_keeps_the_callers_voice_over_the_echo() -> None:
    phrase = speak("Stop, I have a question.")
    caller = np.concatenate([np.zeros(64000, np.int16), phrase])
    sent, out = await _cancel_through_playout(8000, 80, caller, seconds=caller.size / 16000 + 1)
    span = slice(64000, 64000 + phrase.size)
    # the caller comes through at their own level (measured -1.6 dB) ...
    assert abs(level_db(out[span]) - level_db(phrase)) < 4.0
    # ... while the echo around their words stays cancelled (the filter did not diverge)
    assert erle_db(sent[16000:60000], out[16000:60000]) > 20
    after = slice(span.stop + 1600, out.size)
    assert erle_db(sent[after], out[after]) > 20


def test_without_a_reference_the_caller_passes_through_untouched() -> None:
    canceller = WebRtcEchoCanceller()
    rng = np.random.default_rng(3)
    mic = rng.integers(-3000, 3000, 1000).astype(np.int16)
    out = canceller.process(AudioFrame(mic, 16000), None)
    assert np.array_equal(out.samples, mic)
    # the first frame is padded to whole 10 ms blocks; later odd sizes leave a tail
    # that waits for the next frame; nothing is lost
    sizes = [304, 320, 100, 333, 320]
    outs = [
        canceller.process(AudioFrame(mic[:n], 16000), np.zeros(n, np.int16)).samples.size
        for n in sizes
    ]
    assert outs == [320, 320, 0, 320, 320]
    tail = 16 + sum(sizes) - sum(outs)
    flushed = canceller.process(AudioFrame(mic[:50], 16000), None)
    assert flushed.samples.size == tail + 50 and np.array_equal(flushed.samples[tail:], mic[:50])
    canceller.close()


async def test_a_missing_native_library_degrades_to_no_cancellation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "livekit", None)  # as if the wheel were not installed
    with caplog.at_level(logging.WARNING, logger="media.echo"):
        assert await open_echo_filter(PlayoutBuffer(8000)) is None
    assert "echo cancellation unavailable" in caplog.text


# ------------------------------------------------------------- the call bridge


class SpeakingTTS(FakeTTS):
    """A fake TTS that speaks real (Piper) speech, so the echo sounds like a voice."""

    def audio_for(self, text: str) -> PCM:
        return speak(text, self.sample_rate)


class SpeakerphoneTransport:
    """A SIP-like transport whose caller says nothing but plays the agent back."""

    kind = "speakerphone"

    def __init__(self, *, echo_cancel: bool) -> None:
        self.echo_cancel = echo_cancel
        self.events: list[dict[str, Any]] = []
        self.inbox = ControlInbox()
        self._audio: asyncio.Queue[AudioFrame | None] = asyncio.Queue()
        self._phone = EchoPath(8000, 80)
        self.reply_done = asyncio.Event()

    async def inbound(self) -> AsyncIterator[AudioFrame]:
        while (frame := await self._audio.get()) is not None:
            yield frame

    async def control(self) -> AsyncIterator[ControlMessage]:
        async for message in self.inbox:
            yield message

    async def play(self, playout: PlayoutBuffer) -> None:
        async for frame, _ in playout.frames():  # paced in real time, like RTP
            self._phone.played(frame.samples)
            self._audio.put_nowait(AudioFrame(self._phone.returned(), 8000))

    async def send_event(self, event: Mapping[str, Any]) -> None:
        self.events.append(dict(event))
        if event["type"] == "reply":
            self.reply_done.set()

    async def close(self, reason: str) -> None:
        self._audio.put_nowait(None)


@pytest.mark.parametrize("echo_cancel", [True, False])
async def test_bridge_cancels_echo_for_transports_that_ask(
    tmp_path: Path, echo_cancel: bool
) -> None:
    store = await Store.open(
        StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)
    )
    config = AgentConfig.load().model_copy(update={"greeting": SHORT_GREETING})
    models = fake_models(
        llm=ScriptedLLM(["Sure."]), stt=FakeSTT(["the library"]), tts=SpeakingTTS(8000)
    )
    manager = CallManager(models, config, max_calls=1, idle_timeout_s=3600.0, store=store)
    try:
        transport = SpeakerphoneTransport(echo_cancel=echo_cancel)
        call = await manager.open(transport.kind, room_id="room_echo", output_rate=8000)
        manager.start(call, transport)
        async with asyncio.timeout(HANG_GUARD_S):
            await transport.reply_done.wait()  # the greeting ended, played out or interrupted
        await manager.end(call, "test over")
    finally:
        await manager.shutdown()
        await store.close()
    phases = [e["phase"] for e in transport.events if e["type"] == "interruption"]
    reply = next(e for e in transport.events if e["type"] == "reply")
    if echo_cancel:
        assert phases == [] and not reply["interrupted"]
    else:  # the same line without AEC: the agent hears itself and stops
        assert "paused" in phases and reply["interrupted"]


# ----------------------------------------------------- whole calls, real models


class Recorder:
    """The session's events, each stamped with the lock-step frame it came in (``tick``)."""

    def __init__(self) -> None:
        self.events: list[AgentEvent] = []
        self.frames: list[int] = []
        self.frame = 0

    def __call__(self, event: AgentEvent) -> None:
        self.events.append(event)
        self.frames.append(self.frame)

    def tick(self) -> None:
        """The driver moved on to the next 20 ms frame."""
        self.frame += 1

    def interruptions(self) -> list[str]:
        return [e.phase for e in self.events if isinstance(e, InterruptionEvent)]

    def phase_frames(self, phase: str) -> list[int]:
        """Frames in which the reply's playout went ``phase`` (paused, resumed, confirmed)."""
        return [
            k
            for e, k in zip(self.events, self.frames, strict=True)
            if isinstance(e, InterruptionEvent) and e.phase == phase
        ]

    def onset_pauses(self) -> list[int]:
        """Frames of pauses that came with a VAD onset (no hold: paused at the onset)."""
        onsets = {
            k
            for e, k in zip(self.events, self.frames, strict=True)
            if isinstance(e, VadEvent) and e.speaking
        }
        return [k for k in self.phase_frames("paused") if k in onsets]

    def replies(self) -> list[ReplyEvent]:
        return [e for e in self.events if isinstance(e, ReplyEvent)]

    def finals(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TranscriptEvent) and e.final]


async def speakerphone_call(
    session: VoiceSession,
    seconds: float,
    *,
    delay_ms: int,
    caller: PCM | None = None,
    cancel: bool = True,
    tick: Callable[[], None] | None = None,
) -> None:
    """Drive ``session`` in lock-step with its own output returned as echo (8 kHz wire);
    ``tick`` is called after each frame."""
    rate = session.playout.sample_rate
    phone = EchoPath(rate, delay_ms)
    echo = EchoFilter.for_playout(session.playout) if cancel else None
    normalizer = FrameNormalizer(16000)
    voice = None if caller is None else resample(caller, 16000, rate)
    try:
        for k in range(round(seconds * 50)):
            mine = None if voice is None else voice[k * phone.frame : (k + 1) * phone.frame]
            mic = normalizer.process(AudioFrame(phone.returned(mine), rate))
            if echo is not None:
                mic = echo.process(mic)
            if mic.samples.size:
                session.push_audio(mic)
            await session.wait_settled()
            phone.played(session.playout.pull()[0])
            if tick is not None:
                tick()
    finally:
        if echo is not None:
            echo.close()


def _greeting(config: AgentConfig) -> AgentConfig:
    return config.model_copy(update={"greeting": GREETING})


@pytest.mark.slow
@pytest.mark.parametrize("delay_ms", [40, 80, 200])
async def test_the_agent_does_not_interrupt_itself(
    agent_config: AgentConfig, models: AgentModels, delay_ms: int
) -> None:
    rec = Recorder()
    async with VoiceSession(_greeting(agent_config), models, output_rate=8000, sinks=[rec]) as s:
        await speakerphone_call(s, 16.0, delay_ms=delay_ms)
        history = s.history.messages()
    assert rec.interruptions() == []
    (reply,) = rec.replies()
    assert not reply.interrupted and history[0].content == GREETING


@pytest.mark.slow
async def test_without_aec_the_same_line_interrupts_the_agent_but_does_not_stutter(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    """The echo's VAD onset pauses the agent, which silences the echo: the pause resumes.
    Pausing at every onset, the greeting would pause and resume about once a second for
    as long as it lasts (6-16 times in 16 s, with ``interruption.false_pause_hold_ms: 0``);
    the first false pause raises the onset hold for the call, so it happens once."""
    rec = Recorder()
    async with VoiceSession(_greeting(agent_config), models, output_rate=8000, sinks=[rec]) as s:
        await speakerphone_call(s, 16.0, delay_ms=80, cancel=False, tick=rec.tick)
    assert "paused" in rec.interruptions()
    onset_pauses, resumes = rec.onset_pauses(), rec.phase_frames("resumed")
    # the default pauses at the VAD onset: the echo's first onset did, and resumed ...
    assert onset_pauses and resumes and onset_pauses[0] < resumes[0]
    # ... and from then on the echo must hold like speech: no pause at an onset again
    assert [k for k in onset_pauses if k > resumes[0]] == []


@pytest.mark.slow
async def test_a_real_barge_in_over_the_echo_still_stops_the_agent(
    agent_config: AgentConfig, models: AgentModels
) -> None:
    rec = Recorder()
    caller = compose(3.0, "Stop, I have a question.", 3.0)
    async with VoiceSession(_greeting(agent_config), models, output_rate=8000, sinks=[rec]) as s:
        await speakerphone_call(s, caller.size / 16000, delay_ms=80, caller=caller, tick=rec.tick)
        history = s.history.messages()
    assert rec.interruptions()[:2] == ["paused", "confirmed"]
    # the caller's onset paused the agent at once (no hold: the frame of the VAD onset)
    assert rec.onset_pauses()[:1] == rec.phase_frames("paused")[:1] != []
    greeting = rec.replies()[0]
    assert greeting.interrupted and GREETING.startswith(greeting.heard_text)
    assert (
        history[0].content == greeting.heard_text and len(greeting.heard_text) < len(GREETING) / 2
    )
    finals = rec.finals()
    assert finals and phrase_error(finals[0], "stop I have a question") <= 0.35
