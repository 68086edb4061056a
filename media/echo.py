"""Echo cancellation: take the agent's own voice out of what a phone caller sends back.

A caller on a speakerphone (or a handset turned up) returns the agent's audio
into the call, a round trip later and some 10-30 dB quieter. Left in, it is
"speech over the agent's reply" and the agent interrupts itself. The cure is
an acoustic echo canceller (AEC) that knows what was played: the session's
``PlayoutBuffer`` taps every frame it gives the transport
(``PlayoutBuffer.tap()``, a ``ReferenceTap``), and for each inbound frame
the canceller subtracts its estimate of the echo of that reference.

Pieces:

``EchoCanceller``        the protocol: ``process(mic, reference)`` on 16 kHz
                         mono, the reference aligned sample for sample with
                         the mic frame (``None``: nothing was played, so the
                         mic passes through untouched).
``WebRtcEchoCanceller``  WebRTC's AEC3 (the audio processing module that
                         browsers run), from LiveKit's ``livekit`` wheel: it
                         ships the native library inside (Apache-2.0), no
                         system package, no compiler.
``PlayoutReference``     turns the tap into that aligned reference: a cursor
                         that advances one reference sample per mic sample,
                         resampled from the playout rate (8/16/48 kHz) to 16 kHz.
``EchoFilter``           both together: what the call bridge runs on every
                         inbound frame of a transport whose ``echo_cancel`` is
                         true (SIP; browsers cancel their own echo), with an
                         ``EchoDetector`` (``media.echo_detect``) that decides
                         whether the call has an echo to cancel at all.

Why a detector: on a line without echo (a handset, a headset) AEC3 has
nothing to learn, and its suppressor still takes 50-70 dB off a caller who
talks over the agent: in the wire benchmark 3 of 10 SIP barge-ins never
stopped the agent and the p90 stop took 1.1 s. The canceller runs on every
frame either way (it stays converged), but its output is used only while the
detector has not judged the line ``CLEAR``.

Why AEC3 (``python -m bench.echo`` on this 2-core machine: Piper speech
played at 8 kHz, returned at -15 dB with -70 dBFS noise, the whole filter):
it cancels 29-33 dB in the first second and 37-38 dB after (the noise floor
caps the measure; ~60 dB without noise) at 40, 80 and 200 ms of delay, and
still 20-34 dB in the first second at 300-500 ms, for 0.25 ms (16 kHz
playout) to 0.35 ms (8 kHz, reference resampling included) of CPU per 20 ms
frame; the caller's voice over the echo comes through 1-2 dB quieter. A
long greeting heard over that line raised no VAD onset and no interruption,
while "Stop, I have a question" still paused and stopped it. libspeexdsp's
MDF canceller with its residual echo suppressor (what the ``speexaec`` and
``speexdsp-aec`` wheels wrap, over Debian's ``libspeexdsp1``) needs seconds:
2-4 dB in the first second, 8-12 dB to 3 s, 30-34 dB after, nothing past
300 ms of delay; the same greeting interrupted itself 6-8 times (without
any canceller: 7-14 times). ``aec-audio-processing`` (WebRTC APM 2.x) cancels
like AEC3 here but ships no Linux wheel: it compiles ~440 C++ files at
install.

Delay: the transport's round trip is unknown and constant (plus jitter).
``PlayoutReference`` pairs each mic sample with the reference pulled about
``lead_ms`` before the newest one, so the echo always lags its reference;
AEC3 estimates the rest of the delay itself (up to ~500 ms measured). The
pairing is kept while inbound and outbound frames drift apart by jitter and
only re-anchored when they part by more than ``max_lag_ms`` (a stall) or the
mic runs ``max_ahead_ms`` ahead of what was played.

Cost when unused: nothing (the tap only exists once a filter asks for it).
While the agent has been silent for ``idle_after_ms`` the filter skips the
canceller and passes the caller's audio through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from media.echo_detect import EchoDetector, EchoVerdict
from media.errors import AudioFormatError
from media.frames import PCM, PIPELINE_RATE, AudioFrame
from media.playout import PlayoutBuffer, ReferenceTap
from media.resample import FrameNormalizer

if TYPE_CHECKING:
    from livekit import rtc

log = logging.getLogger(__name__)

ECHO_RATE = PIPELINE_RATE
"""Rate of everything an ``EchoCanceller`` sees (the pipeline's 16 kHz)."""
AEC_BLOCK = ECHO_RATE // 100
"""AEC3 works on 10 ms blocks."""
RESAMPLE_CUSHION = 32
"""Zeros (2 ms) ahead of the resampled reference, so a resampler output one sample
short never underruns the queue and shifts the pairing."""
MAX_QUEUED = RESAMPLE_CUSHION + AEC_BLOCK
"""Most resampled reference samples held between caller frames."""


class EchoUnavailableError(RuntimeError):
    """The echo canceller's native library could not be loaded."""


class EchoCanceller(Protocol):
    """Removes the echo of a known reference from 16 kHz mono caller audio."""

    def process(self, mic: AudioFrame, reference: PCM | None) -> AudioFrame:
        """Cancel the echo of ``reference`` in ``mic``.

        ``reference`` holds what was played, one int16 sample at 16 kHz per
        mic sample, aligned so that the echo lags it by an unknown constant
        delay; ``None`` means nothing was played (the mic passes through).
        The output may be shorter or longer than ``mic`` by less than one
        block of the canceller (samples held for a whole block, or silence
        padded to one).
        """
        ...

    def close(self) -> None:
        """Release native state (idempotent)."""
        ...


class WebRtcEchoCanceller:
    """WebRTC AEC3 through ``livekit.rtc.AudioProcessingModule``.

    Echo cancellation only (no noise suppression, gain control or high-pass:
    the VAD and STT are trained on unprocessed speech). Works in 10 ms
    blocks: the first frame of a cancelling stretch is padded in front with
    silence to whole blocks (a normaliser's first frame is a few samples
    short: 288 of 320 from 8 kHz), so steady 20 ms frames then go through
    with no samples held back; a later odd-sized frame leaves its tail for
    the next call. With ``reference=None`` that tail is flushed and the mic
    passes through untouched (AEC3 itself delays its output by ~8.5 ms, so
    switching between the two drops or repeats that much caller audio once,
    at a moment the agent has long been quiet).

    Not thread-safe; each call owns one.
    """

    def __init__(self) -> None:
        try:
            from livekit import rtc
        except ImportError as exc:  # the wheel is a declared dependency; say what is missing
            raise EchoUnavailableError("echo cancellation needs the 'livekit' package") from exc
        self._apm: rtc.AudioProcessingModule | None = rtc.AudioProcessingModule(
            echo_cancellation=True
        )
        self._apm.set_stream_delay_ms(0)  # AEC3 estimates the delay itself
        self._mic_block = rtc.AudioFrame.create(ECHO_RATE, 1, AEC_BLOCK)
        self._ref_block = rtc.AudioFrame.create(ECHO_RATE, 1, AEC_BLOCK)
        self._mic_view = np.frombuffer(self._mic_block.data, np.int16)
        self._ref_view = np.frombuffer(self._ref_block.data, np.int16)
        self._mic_tail = np.zeros(0, np.int16)
        self._ref_tail = np.zeros(0, np.int16)
        self._fresh = True  # the next processed frame starts a cancelling stretch
        self._position = 0

    def process(self, mic: AudioFrame, reference: PCM | None) -> AudioFrame:
        """See ``EchoCanceller.process``."""
        _check_mic(mic)
        if reference is None:
            out = (
                np.concatenate([self._mic_tail, mic.samples])
                if self._mic_tail.size
                else mic.samples
            )
            self._mic_tail = self._ref_tail = np.zeros(0, np.int16)
            self._fresh = True
            return self._frame(out)
        if reference.dtype != np.int16 or reference.shape != mic.samples.shape:
            raise AudioFormatError(f"reference must be {mic.samples.size} int16 samples")
        apm = self._apm
        if apm is None:
            raise EchoUnavailableError("echo canceller is closed")
        pad = np.zeros(-mic.samples.size % AEC_BLOCK if self._fresh else 0, np.int16)
        self._fresh = False
        near = np.concatenate([self._mic_tail, pad, mic.samples])
        far = np.concatenate([self._ref_tail, pad, reference])
        whole = near.size - near.size % AEC_BLOCK
        out = np.empty(whole, np.int16)
        for at in range(0, whole, AEC_BLOCK):
            self._ref_view[:] = far[at : at + AEC_BLOCK]
            apm.process_reverse_stream(self._ref_block)
            self._mic_view[:] = near[at : at + AEC_BLOCK]
            apm.process_stream(self._mic_block)
            out[at : at + AEC_BLOCK] = self._mic_view
        self._mic_tail, self._ref_tail = near[whole:].copy(), far[whole:].copy()
        return self._frame(out)

    def _frame(self, pcm: PCM) -> AudioFrame:
        frame = AudioFrame(pcm, ECHO_RATE, 1, self._position / ECHO_RATE)
        self._position += pcm.size
        return frame

    def close(self) -> None:
        """Drop the native module (its handle is freed with the last reference)."""
        self._apm = None


def _energy(pcm: PCM) -> float:
    x = pcm.astype(np.float64)
    return float(x @ x)


def _check_mic(mic: AudioFrame) -> None:
    if mic.sample_rate != ECHO_RATE or mic.channels != 1:
        raise AudioFormatError(
            f"echo cancellation expects {ECHO_RATE} Hz mono, "
            f"got {mic.sample_rate} Hz with {mic.channels} channels"
        )


@dataclass(frozen=True, slots=True)
class Alignment:
    """How ``PlayoutReference`` pairs caller samples with played samples."""

    lead_ms: int = 20
    """At (re)anchoring, the reference starts this far behind the newest played
    sample: the echo of a sample cannot come back sooner than one frame. A
    caller frame that comes early (the phases of the two clocks wander by up to
    a frame) moves the pairing back instead of reading silence where audio is
    about to be played (``PlayoutReference.slips``): without that, ~70% of every
    reference frame read as silence in the wire benchmark and AEC3 could not
    converge."""
    max_lag_ms: int = 260
    """Re-anchor when the reference falls this far behind what was played (inbound stalled)."""
    max_ahead_ms: int = 60
    """Re-anchor when the mic runs this far ahead of what was played (outbound stalled)."""
    idle_after_ms: int = 600
    """After this long past the agent's last sound, no echo can still come (delay + tail)."""

    def __post_init__(self) -> None:
        if min(self.lead_ms, self.max_lag_ms, self.max_ahead_ms, self.idle_after_ms) < 0:
            raise ValueError("alignment times must be >= 0")
        if self.max_lag_ms <= self.lead_ms:
            raise ValueError("max_lag_ms must exceed lead_ms")


class PlayoutReference:
    """The reference for each caller frame, read from a ``ReferenceTap``.

    Caller audio and agent audio run on two clocks (the caller's packets and
    our pacer), both nominally real time. The cursor advances exactly one
    played sample per caller sample (scaled by the rate ratio), so the delay
    between a caller sample and its paired reference stays constant while the
    two streams jitter against each other; parts of the reference that were
    not played yet read as silence. The cursor is re-anchored (``resyncs``)
    only when the streams part by more than the ``Alignment`` bounds or the
    cursor would read audio the tap no longer holds.
    """

    def __init__(self, tap: ReferenceTap, alignment: Alignment | None = None) -> None:
        self.alignment = alignment or Alignment()
        a, rate = self.alignment, tap.sample_rate
        if tap.size < rate * (a.max_lag_ms + 20) // 1000:
            raise ValueError("the tap must hold more than max_lag_ms of output")
        self._tap = tap
        self._lead = rate * a.lead_ms // 1000
        self._max_lag = rate * a.max_lag_ms // 1000
        self._max_ahead = rate * a.max_ahead_ms // 1000
        self._idle_after = rate * a.idle_after_ms // 1000
        self._cursor: int | None = None
        self._taken = 0  # 16 kHz samples taken since the last anchoring
        self._anchor = 0
        self._resampler = FrameNormalizer(ECHO_RATE)
        self._queue = np.zeros(RESAMPLE_CUSHION, np.int16)
        self.resyncs = 0
        """How often the pairing was re-anchored after the first time."""
        self.slips = 0
        """How often a caller frame came so early that the pairing moved back."""

    def take(self, samples: int) -> PCM | None:
        """Reference for the next ``samples`` caller samples (16 kHz), or ``None`` when idle."""
        tap = self._tap
        if self._cursor is None or not self._in_bounds(tap):
            self._anchor_at(tap)
        cursor = self._cursor
        assert cursor is not None
        self._taken += samples
        end = self._anchor + self._taken * tap.sample_rate // ECHO_RATE
        short = end - tap.end
        if short > 0 and cursor < tap.end:  # part of it was played: the phases wandered
            # the caller's frame came before the audio it would pair with was played:
            # move the pairing back (once) rather than read silence where audio follows
            self._anchor -= short
            cursor, end = cursor - short, end - short
            self.slips += 1
        self._cursor = end
        if cursor >= tap.speech_end + self._idle_after:
            return None  # the agent's last sound and its echo tail are over
        chunk = tap.read(cursor, end - cursor)
        if tap.sample_rate != ECHO_RATE:
            chunk = self._resampler.process(AudioFrame(chunk, tap.sample_rate)).samples
        queue = np.concatenate([self._queue, chunk])
        if queue.size < samples:  # resampler start-up: pad in front, once
            queue = np.concatenate([np.zeros(samples - queue.size, np.int16), queue])
        out, rest = queue[:samples], queue[samples:]
        # bound: a resampler never runs this far ahead; if one did, keep the newest
        self._queue = rest[-MAX_QUEUED:] if rest.size > MAX_QUEUED else rest
        return out

    def _in_bounds(self, tap: ReferenceTap) -> bool:
        assert self._cursor is not None
        lag = tap.end - self._cursor
        return -self._max_ahead <= lag <= self._max_lag and self._cursor >= tap.end - tap.size

    def _anchor_at(self, tap: ReferenceTap) -> None:
        if self._cursor is not None:
            self.resyncs += 1
        self._anchor = tap.end - self._lead  # before the first output: reads as silence
        self._cursor = self._anchor
        self._taken = 0
        self._queue = np.zeros(RESAMPLE_CUSHION, np.int16)


class EchoFilter:
    """Echo cancellation of one call's inbound audio against its playout.

    ``process`` takes each inbound frame once normalised to 16 kHz mono and
    returns it with the agent's echo removed. Counters (``frames``,
    ``cancelled``: frames that went through the canceller) are for metrics.
    With a ``detector`` (the default for calls), a line judged free of echo
    gets the caller's audio untouched (see the module docstring); without
    one, the canceller's output is always used.
    """

    def __init__(
        self,
        tap: ReferenceTap,
        canceller: EchoCanceller,
        alignment: Alignment | None = None,
        detector: EchoDetector | None = None,
    ) -> None:
        self._reference = PlayoutReference(tap, alignment)
        self._canceller = canceller
        self.detector = detector
        self.frames = 0
        self.cancelled = 0
        self._energy_in = 0.0  # caller energy in/out over the frames with a reference
        self._energy_out = 0.0

    @classmethod
    def for_playout(
        cls,
        playout: PlayoutBuffer,
        canceller: EchoCanceller | None = None,
        alignment: Alignment | None = None,
        detector: EchoDetector | None = None,
    ) -> EchoFilter:
        """Tap ``playout`` and cancel against it (AEC3 unless ``canceller`` is given)."""
        return cls(playout.tap(), canceller or WebRtcEchoCanceller(), alignment, detector)

    @property
    def resyncs(self) -> int:
        """How often the reference pairing was re-anchored (stalls, not jitter)."""
        return self._reference.resyncs

    def process(self, frame: AudioFrame) -> AudioFrame:
        """The caller's frame (16 kHz mono) with the echo of the agent removed."""
        return self.cancel(frame, self.reference(frame))

    def reference(self, frame: AudioFrame) -> PCM | None:
        """The agent's audio paired with ``frame`` (None while it is quiet).

        Reads the playout's tap, so it runs where the playout is pulled: on
        the event loop. ``cancel`` may then run on a worker thread.
        """
        _check_mic(frame)
        self.frames += 1
        return self._reference.take(frame.samples.size)

    def cancel(self, frame: AudioFrame, reference: PCM | None) -> AudioFrame:
        """Remove ``reference``'s echo from ``frame`` (CPU work: thread-safe per call,
        as long as one call's frames are cancelled one after the other)."""
        if reference is not None:
            self.cancelled += 1
        out = self._canceller.process(frame, reference)
        if reference is not None:
            self._energy_in += _energy(frame.samples)
            self._energy_out += _energy(out.samples)
        detector = self.detector
        if detector is None:
            return out
        before = detector.verdict
        after = detector.feed(frame.samples, reference)
        if after is not before:
            log.info(
                "echo: line judged %s (r=%.2f, delay %s ms)",
                after.value,
                detector.r,
                detector.delay_ms,
            )
        if after is EchoVerdict.CLEAR:
            return frame  # no echo to remove: the caller exactly as sent
        return out

    @property
    def verdict(self) -> EchoVerdict | None:
        """The detector's verdict on the line (None without a detector)."""
        return None if self.detector is None else self.detector.verdict

    @property
    def reduction_db(self) -> float | None:
        """How much quieter the canceller made the caller's audio while the agent spoke
        (echo return loss enhancement when the caller was silent; None before any)."""
        if self._energy_in <= 0.0:
            return None
        return 10.0 * math.log10(self._energy_in / max(self._energy_out, 1.0))

    def close(self) -> None:
        """Release the canceller; log what it did (figures only)."""
        self._canceller.close()
        if self.frames:
            reduction = self.reduction_db
            log.info(
                "echo: %d frames, %d against the agent's audio, reduced %s dB, "
                "line %s, %d resyncs, %d slips",
                self.frames,
                self.cancelled,
                "-" if reduction is None else f"{reduction:.1f}",
                "-" if self.verdict is None else self.verdict.value,
                self.resyncs,
                self._reference.slips,
            )


async def open_echo_filter(playout: PlayoutBuffer) -> EchoFilter | None:
    """An AEC3 ``EchoFilter`` on ``playout``, or ``None`` (logged) when AEC3 cannot load.

    The canceller is built in a worker thread: the first one of a process
    loads the native library (~0.2 s), which must not stall the event loop.
    The tap is started here, on the loop that owns the playout. A call
    without echo cancellation still works (it may interrupt itself on a
    speakerphone), so a missing library degrades the call, never fails it.
    """
    try:
        canceller = await asyncio.to_thread(WebRtcEchoCanceller)
    except EchoUnavailableError as exc:
        log.warning("echo cancellation unavailable (%s); the call goes on without it", exc)
        return None
    return EchoFilter(playout.tap(), canceller, detector=EchoDetector())
