"""Echo cancellation for speakerphone callers: candidates compared, and what it does to calls.

The phone is simulated as in ``tests/test_echo.py``: the agent's Piper voice
is played at the wire rate (8 kHz by default, G.711's), returned ``delay`` ms
later at -15 dB with noise at -70 dBFS, normalised to 16 kHz as the bridge
does, and cleared by ``media.echo.EchoFilter`` with each candidate canceller
(the same tap and alignment for all). Printed:

1. ERLE (echo return loss enhancement, dB: how much quieter the output is than
   the echo) in the first second, from 1 to 3 s and from 3 to 8 s of agent
   speech, at each delay; CPU ms per 20 ms frame (the filter's whole cost:
   reference alignment, resampling and the canceller); the caller's level
   change over the echo (double talk, want ~0 dB).
2. Self-interruptions: a ``VoiceSession`` with the real local models speaks a
   14 s greeting in lock-step while hearing its own echo; the interruption
   events (paused/confirmed/resumed) and VAD speech onsets it raised, with
   each canceller and with none.

Candidates: ``webrtc`` (AEC3 from the ``livekit`` wheel: the one in use),
``speex`` (libspeexdsp's MDF canceller plus its residual echo suppressor,
through ctypes; Debian's ``libspeexdsp1``: what the ``speexaec`` and
``speexdsp-aec`` wheels wrap), ``aap`` (``aec-audio-processing``: WebRTC APM
built from source, if installed) and ``none``. Missing ones are reported.

Run: ``.venv/bin/python -m bench.echo [--delays 40 80 200] [--rate 8000] [--no-session]``
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.config import AgentConfig
from agent.events import AgentEvent, InterruptionEvent, VadEvent
from agent.providers.piper import PiperSettings, PiperTTS
from agent.runtime import AgentModels
from agent.session import VoiceSession
from media.echo import AEC_BLOCK, ECHO_RATE, EchoCanceller, EchoFilter, WebRtcEchoCanceller
from media.frames import PCM, AudioFrame
from media.playout import PlayoutBuffer
from media.resample import FrameNormalizer, resample

GREETING = (
    "Welcome to the demo line of the city library. Our opening hours are nine to five on "
    "weekdays, and ten to two on Saturdays. You can borrow up to twelve books at a time, "
    "and renew them online or by phone. We also have a music room and a quiet study hall."
)
BARGE_IN = "Stop, I have a question."
ECHO_GAIN_DB = -15.0
NOISE_DBFS = -70.0
TAIL_MS = 300
WINDOWS = ((0.0, 1.0), (1.0, 3.0), (3.0, 8.0))


# ------------------------------------------------------------------ candidates


class BlockCanceller:
    """Adapts a 10 ms block function ``(mic, ref) -> out`` to ``EchoCanceller``."""

    def __init__(self, block: Callable[[PCM, PCM], PCM]) -> None:
        self._block = block
        self._mic = np.zeros(0, np.int16)
        self._ref = np.zeros(0, np.int16)

    def process(self, mic: AudioFrame, reference: PCM | None) -> AudioFrame:
        if reference is None:
            out, self._mic, self._ref = (
                np.concatenate([self._mic, mic.samples]),
                self._mic[:0],
                self._ref[:0],
            )
            return AudioFrame(out, ECHO_RATE)
        near = np.concatenate([self._mic, mic.samples])
        far = np.concatenate([self._ref, reference])
        whole = near.size - near.size % AEC_BLOCK
        parts = [
            self._block(near[i : i + AEC_BLOCK], far[i : i + AEC_BLOCK])
            for i in range(0, whole, AEC_BLOCK)
        ]
        self._mic, self._ref = near[whole:], far[whole:]
        return AudioFrame(np.concatenate(parts) if parts else near[:0], ECHO_RATE)

    def close(self) -> None:
        """Nothing to release: the Speex state is freed with this object."""


def speex_canceller() -> EchoCanceller:
    """libspeexdsp: MDF echo canceller (300 ms tail) + residual echo suppression."""
    lib = ctypes.CDLL("libspeexdsp.so.1")
    lib.speex_echo_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] * 4
    lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_preprocess_state_init.restype = ctypes.c_void_p
    lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    echo = lib.speex_echo_state_init(AEC_BLOCK, ECHO_RATE * TAIL_MS // 1000)
    rate = ctypes.c_int(ECHO_RATE)
    lib.speex_echo_ctl(echo, 24, ctypes.byref(rate))  # SPEEX_ECHO_SET_SAMPLING_RATE
    pre = lib.speex_preprocess_state_init(AEC_BLOCK, ECHO_RATE)
    lib.speex_preprocess_ctl(pre, 24, ctypes.c_void_p(echo))  # SPEEX_PREPROCESS_SET_ECHO_STATE

    def block(mic: PCM, ref: PCM) -> PCM:
        mic, ref = np.ascontiguousarray(mic), np.ascontiguousarray(ref)
        out = np.empty(AEC_BLOCK, np.int16)
        lib.speex_echo_cancellation(echo, mic.ctypes.data, ref.ctypes.data, out.ctypes.data)
        lib.speex_preprocess_run(pre, out.ctypes.data)
        return out

    return BlockCanceller(block)


def aap_canceller() -> EchoCanceller:
    """``aec-audio-processing`` (WebRTC APM 2.x, AEC3 only)."""
    from aec_audio_processing import AudioProcessor  # type: ignore[import-not-found]

    apm = AudioProcessor(enable_aec=True, enable_ns=False, enable_agc=False)
    apm.set_stream_format(ECHO_RATE, 1)
    apm.set_reverse_stream_format(ECHO_RATE, 1)
    apm.set_stream_delay(0)

    def block(mic: PCM, ref: PCM) -> PCM:
        apm.process_reverse_stream(ref.tobytes())
        return np.frombuffer(apm.process_stream(mic.tobytes()), np.int16).copy()

    return BlockCanceller(block)


class PassThrough:
    """No echo cancellation."""

    def process(self, mic: AudioFrame, reference: PCM | None) -> AudioFrame:
        return mic

    def close(self) -> None:
        """Nothing to release."""


CANDIDATES: dict[str, Callable[[], EchoCanceller]] = {
    "webrtc": WebRtcEchoCanceller,
    "speex": speex_canceller,
    "aap": aap_canceller,
    "none": PassThrough,
}


def available(names: list[str]) -> dict[str, Callable[[], EchoCanceller]]:
    """The candidates that load here; the others are reported and skipped."""
    found = {}
    for name in names:
        try:
            CANDIDATES[name]().close()
        except (ImportError, OSError, RuntimeError) as exc:
            print(f"{name}: not available ({type(exc).__name__}: {exc})")
            continue
        found[name] = CANDIDATES[name]
    return found


# ------------------------------------------------------------------ the phone


class Phone:
    """Plays the agent and returns it ``delay_ms`` later at -15 dB with low noise."""

    def __init__(self, rate: int, delay_ms: int) -> None:
        self.frame = rate // 50
        self._line = np.zeros(rate * delay_ms // 1000)
        self._gain = 10 ** (ECHO_GAIN_DB / 20)
        self._rng = np.random.default_rng(7)

    def played(self, pcm: PCM) -> None:
        self._line = np.concatenate([self._line, pcm * self._gain])

    def returned(self, caller: PCM | None = None) -> PCM:
        out, self._line = self._line[: self.frame], self._line[self.frame :]
        out = out + self._rng.standard_normal(self.frame) * 32768 * 10 ** (NOISE_DBFS / 20)
        if caller is not None and caller.size == self.frame:
            out = out + caller
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def _power(pcm: np.ndarray) -> float:
    return float(np.mean(np.square(pcm.astype(np.float64)))) + 1e-3


async def erle_run(
    make: Callable[[], EchoCanceller], speech: PCM, rate: int, delay_ms: int, caller: PCM | None
) -> dict[str, Any]:
    """One playout through one canceller: ERLE per window, CPU, double-talk level."""
    playout = PlayoutBuffer(rate)
    echo = EchoFilter.for_playout(playout, make())
    seg = playout.open_segment("bench", GREETING)
    await playout.push(seg, speech)
    phone = Phone(rate, delay_ms)
    normalizer = FrameNormalizer(ECHO_RATE)
    voice = np.zeros(0, np.int16) if caller is None else resample(caller, ECHO_RATE, rate)
    sent, cleaned, cpu = [], [], 0.0
    frames = round(min(speech.size / rate, 8.0) * 50)
    for k in range(frames):
        mic = normalizer.process(
            AudioFrame(phone.returned(voice[k * phone.frame : (k + 1) * phone.frame]), rate)
        )
        t0 = time.process_time()
        out = echo.process(mic)
        cpu += time.process_time() - t0
        sent.append(mic.samples)
        cleaned.append(out.samples)
        phone.played(playout.pull()[0])
    echo.close()
    s, o = np.concatenate(sent), np.concatenate(cleaned)
    result: dict[str, Any] = {"cpu_ms_per_frame": round(1000 * cpu / frames, 3)}
    for a, b in WINDOWS:
        span = slice(int(a * ECHO_RATE), int(b * ECHO_RATE))
        erle = 10 * math.log10(_power(s[span]) / _power(o[span]))
        result[f"erle_{a:g}-{b:g}s_db"] = round(erle, 1)
    return result


def double_talk(make: Callable[[], EchoCanceller], speech: PCM, phrase: PCM, rate: int) -> float:
    """The caller's level change (dB) through the canceller while the agent talks (80 ms)."""
    at = 4 * ECHO_RATE
    caller = np.concatenate([np.zeros(at, np.int16), phrase, np.zeros(ECHO_RATE, np.int16)])
    with_voice = asyncio.run(_through(make, speech, rate, caller))
    span = slice(at, at + phrase.size)
    return round(10 * math.log10(_power(with_voice[span]) / _power(phrase)), 1)


async def _through(make: Callable[[], EchoCanceller], speech: PCM, rate: int, caller: PCM) -> PCM:
    playout = PlayoutBuffer(rate)
    echo = EchoFilter.for_playout(playout, make())
    await playout.push(playout.open_segment("bench", GREETING), speech)
    phone = Phone(rate, 80)
    normalizer = FrameNormalizer(ECHO_RATE)
    voice = resample(caller, ECHO_RATE, rate)
    out = []
    for k in range(voice.size // phone.frame):
        frame = AudioFrame(phone.returned(voice[k * phone.frame : (k + 1) * phone.frame]), rate)
        out.append(echo.process(normalizer.process(frame)).samples)
        phone.played(playout.pull()[0])
    echo.close()
    return np.concatenate(out)


# ------------------------------------------------------------------ whole calls


async def session_run(
    config: AgentConfig,
    models: AgentModels,
    make: Callable[[], EchoCanceller],
    rate: int,
    delay_ms: int,
    caller: PCM | None,
) -> dict[str, Any]:
    """A greeting in lock-step over the echo line: interruptions and VAD onsets."""
    events: list[AgentEvent] = []
    greeting = config.model_copy(update={"greeting": GREETING})
    async with VoiceSession(greeting, models, output_rate=rate, sinks=[events.append]) as session:
        phone = Phone(rate, delay_ms)
        echo = EchoFilter.for_playout(session.playout, make())
        normalizer = FrameNormalizer(ECHO_RATE)
        voice = np.zeros(0, np.int16) if caller is None else resample(caller, ECHO_RATE, rate)
        for k in range(16 * 50):
            mine = voice[k * phone.frame : (k + 1) * phone.frame]
            mic = echo.process(normalizer.process(AudioFrame(phone.returned(mine), rate)))
            if mic.samples.size:
                session.push_audio(mic)
            await session.wait_settled()
            phone.played(session.playout.pull()[0])
        echo.close()
    phases = [e.phase for e in events if isinstance(e, InterruptionEvent)]
    # an episode starts with a pause, or with a confirmation that words gave first
    episodes = sum(
        p == "paused" or (p == "confirmed" and (i == 0 or phases[i - 1] != "paused"))
        for i, p in enumerate(phases)
    )
    return {
        "interruptions": phases,
        "episodes": episodes,
        "vad_onsets": sum(1 for e in events if isinstance(e, VadEvent) and e.speaking),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=int, nargs="+", default=[40, 80, 200])
    parser.add_argument("--rate", type=int, default=8000, help="playout (wire) rate")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--no-session", action="store_true", help="skip the real-model calls")
    args = parser.parse_args()
    unknown = set(args.candidates) - set(CANDIDATES)
    if unknown:
        parser.error(f"unknown candidates: {sorted(unknown)}")
    cands = available(args.candidates)
    tts = PiperTTS(PiperSettings())
    speech = resample(np.concatenate(tts.synthesize(GREETING)), tts.sample_rate, args.rate)
    phrase = resample(np.concatenate(tts.synthesize(BARGE_IN)), tts.sample_rate, ECHO_RATE)
    report: dict[str, Any] = {"rate": args.rate, "erle": {}, "double_talk_db": {}, "calls": {}}
    print(f"echo -15 dB, noise {NOISE_DBFS} dBFS, playout {args.rate} Hz; ERLE in dB")
    for name, make in cands.items():
        for delay in args.delays:
            r = asyncio.run(erle_run(make, speech, args.rate, delay, None))
            report["erle"][f"{name}@{delay}"] = r
            windows = "  ".join(
                f"{k[5:-3]}: {v:5.1f}" for k, v in r.items() if k.startswith("erle")
            )
            print(f"{name:7s} {delay:4d} ms  {windows}   cpu {r['cpu_ms_per_frame']:.3f} ms/frame")
        dt = double_talk(make, speech, phrase, args.rate)
        report["double_talk_db"][name] = dt
        print(f"{name:7s} caller's level over the echo: {dt:+.1f} dB")
    if not args.no_session:
        config = AgentConfig.load()
        config = config.model_copy(update={"llm": config.llm.model_copy(update={"seed": 7})})
        models = AgentModels.load(config)
        try:
            for name, make in cands.items():
                for delay in args.delays:
                    r = asyncio.run(session_run(config, models, make, args.rate, delay, None))
                    report["calls"][f"{name}@{delay}"] = r
                    print(
                        f"{name:7s} {delay:4d} ms  greeting alone: self-interruptions "
                        f"{r['episodes']} {r['interruptions']}, VAD onsets {r['vad_onsets']}"
                    )
                barge = np.concatenate([np.zeros(3 * ECHO_RATE, np.int16), phrase])
                r = asyncio.run(session_run(config, models, make, args.rate, 80, barge))
                report["calls"][f"{name}@80+barge-in"] = r
                print(f"{name:7s}   80 ms  with '{BARGE_IN}' at 3 s: {r['interruptions']}")
        finally:
            models.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
