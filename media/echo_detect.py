"""Whether a caller's line plays the agent back: echo detection by envelope correlation.

An echo canceller is the right tool for a speakerphone and the wrong one for
a handset or a headset: with no echo to learn, AEC3's suppressor still treats
what the caller says over the agent as possible echo and takes tens of dB off
it, so a real barge-in arrives late or not at all. ``EchoDetector`` decides
which of the two a call is, from the audio itself: the loudness envelope of
an echo follows the envelope of what was played, a constant delay later; the
caller's own voice does not.

Every ``hop_ms`` it correlates the last ``window_ms`` of the caller's 10 ms
loudness (dB, floored) with the reference's at each delay up to
``max_delay_ms`` (Pearson's r, on the dB envelopes: level-independent, so a
-15 dB or a -30 dB echo looks the same), once the agent was heard for at
least ``min_active_ms`` of the window. The verdict starts ``UNKNOWN`` (keep
cancelling: safe if there is echo). At the first judgement that saw every
delay it becomes ``ECHO`` if r reached ``echo_r`` at some delay, else
``CLEAR``. ``ECHO`` turns ``CLEAR`` only after ``release_ms`` of agent
speech without a peak (the caller took the phone off speaker); ``CLEAR``
turns ``ECHO`` at the next peak.

Measured on Piper speech (``tests/test_echo_detect.py``'s lines, 1 s
windows): an echo at -15 dB over -70 dBFS noise reads r = 0.97-1.00 at
delays of 40-450 ms, from the first window that holds it; a caller talking
over the agent on a line without echo peaks at 0.77, a quiet handset stays
under 0.3. Hence 0.85. A caller who talks over the agent from its very first
word on a speakerphone may read below it and be judged clear: their echo then
passes until the next peak (seconds), while their barge-in goes through,
which is what they wanted; the echo guard (``agent.echo_guard``) keeps that
echo from making turns. Judged early on purpose: in the wire benchmark, 1 of
10 handset barge-ins spoken in the first seconds of the greeting was still
``UNKNOWN``, AEC3 suppressed it, and the agent never stopped.
Cost: one small matrix product per hop (~60 delays x 100 blocks);
measured 58 us per 20 ms frame on average on this 2-core machine (30 s of
agent speech, a judgement every 100 ms), on the canceller's worker thread
while the agent speaks; while it is silent only the envelopes are kept (on
the event loop, where the pass-through runs) and nothing is judged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from media.frames import PCM, PIPELINE_RATE

BLOCK = PIPELINE_RATE // 100
"""Samples of one 10 ms envelope block at the pipeline's 16 kHz."""
FLOOR_DB = -75.0
"""Loudness floor of the envelopes (digital silence and line noise read alike)."""
ACTIVE_DB = -50.0
"""A reference block louder than this counts as the agent speaking."""


class EchoVerdict(enum.Enum):
    """What the detector concluded about a call's line."""

    UNKNOWN = "unknown"
    ECHO = "echo"
    CLEAR = "clear"


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """Knobs of ``EchoDetector`` (see the module docstring)."""

    window_ms: int = 1000
    hop_ms: int = 100
    max_delay_ms: int = 600
    echo_r: float = 0.85
    min_active_ms: int = 400
    release_ms: int = 8000

    def __post_init__(self) -> None:
        if min(self.window_ms, self.hop_ms, self.max_delay_ms, self.release_ms) <= 0:
            raise ValueError("detector times must be > 0")
        if not 0.0 < self.echo_r < 1.0:
            raise ValueError("echo_r must be in (0, 1)")
        if self.min_active_ms > self.window_ms:
            raise ValueError("min_active_ms cannot exceed window_ms")


class EchoDetector:
    """Tells whether the caller's audio carries an echo of the reference.

    Feed every caller frame (16 kHz mono, before any cancelling) with its
    aligned reference (``None`` while the agent is silent). ``verdict`` says
    what it concluded and ``cancel`` whether to use the canceller's output;
    ``delay_ms`` is the delay of the last correlation peak, ``r`` the best
    correlation of the last judgement (for logs and metrics). Not
    thread-safe: one per call.
    """

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = s = settings or DetectorSettings()
        self._window = s.window_ms // 10
        self._lags = s.max_delay_ms // 10
        self._hop = max(1, s.hop_ms // 10)
        self._min_active = s.min_active_ms // 10
        self._release = s.release_ms // 10
        size = self._window + self._lags
        self._mic = np.full(size, FLOOR_DB)
        self._ref = np.full(size, FLOOR_DB)
        self._mic_tail = np.zeros(0, np.int16)
        self._ref_tail = np.zeros(0, np.int16)
        self._since_hop = 0
        self._filled = 0  # blocks fed so far (the rings start with no history)
        self._active_without_peak = 0
        self.verdict = EchoVerdict.UNKNOWN
        self.r = 0.0
        """Strongest correlation of the last judgement."""
        self.delay_ms: int | None = None
        """Delay of the echo at the last peak (ms after the reference)."""
        self.changes = 0
        """How often the verdict flipped."""

    @property
    def cancel(self) -> bool:
        """Whether the caller's audio should be the echo canceller's output (not ``CLEAR``)."""
        return self.verdict is not EchoVerdict.CLEAR

    def feed(self, mic: PCM, reference: PCM | None) -> EchoVerdict:
        """Add one frame; returns the (possibly updated) verdict."""
        ref = reference if reference is not None else np.zeros(mic.size, np.int16)
        mic_all = np.concatenate([self._mic_tail, mic]) if self._mic_tail.size else mic
        ref_all = np.concatenate([self._ref_tail, ref]) if self._ref_tail.size else ref
        blocks = min(mic_all.size, ref_all.size) // BLOCK
        used = blocks * BLOCK
        self._mic_tail, self._ref_tail = mic_all[used:].copy(), ref_all[used:].copy()
        if blocks == 0:
            return self.verdict
        self._push(self._mic, _levels(mic_all[:used]))
        ref_levels = _levels(ref_all[:used])
        self._push(self._ref, ref_levels)
        if reference is not None:
            self._active_without_peak += int(np.count_nonzero(ref_levels > ACTIVE_DB))
        self._since_hop += blocks
        self._filled = min(self._filled + blocks, self._mic.size)
        if self._since_hop >= self._hop:
            self._since_hop = 0
            self._judge()
        return self.verdict

    @staticmethod
    def _push(ring: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> None:
        n = values.size
        if n >= ring.size:
            ring[:] = values[-ring.size :]
            return
        ring[:-n] = ring[n:]
        ring[-n:] = values

    def _judge(self) -> None:
        w, lags = self._window, self._lags
        usable = min(lags, self._filled - w + 1)  # delays with a whole window of history
        if usable <= 0:
            return
        mic = self._mic[-w:]
        # reference windows ending `lag` blocks before the newest mic block, lag = 0..usable-1
        ref = np.lib.stride_tricks.sliding_window_view(self._ref, w)[lags::-1][:usable]
        active = int(np.count_nonzero(ref[0] > ACTIVE_DB))
        if active < self._min_active:
            return  # the agent hardly spoke in the window: nothing to judge by
        r = _pearson(mic, ref)
        best = int(np.argmax(r))
        self.r = float(r[best])
        if self.r >= self.settings.echo_r:
            self.delay_ms = best * 10
            self._active_without_peak = 0
            self._set(EchoVerdict.ECHO)
        elif self.verdict is EchoVerdict.UNKNOWN:
            if usable == lags:  # every delay was tried, none echoes
                self._set(EchoVerdict.CLEAR)
        elif self.verdict is EchoVerdict.ECHO and self._active_without_peak >= self._release:
            self._active_without_peak = 0
            self._set(EchoVerdict.CLEAR)

    def _set(self, verdict: EchoVerdict) -> None:
        if verdict is not self.verdict:
            self.verdict = verdict
            self.changes += 1


def _levels(pcm: PCM) -> npt.NDArray[np.float64]:
    """dBFS of each 10 ms block, floored at ``FLOOR_DB``."""
    x = pcm.astype(np.float64).reshape(-1, BLOCK) / 32768.0
    power = np.mean(x * x, axis=1)
    levels: npt.NDArray[np.float64] = np.maximum(10.0 * np.log10(power + 1e-12), FLOOR_DB)
    return levels


def _pearson(x: npt.NDArray[np.float64], rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pearson's r of ``x`` with each row of ``rows`` (0 where either is constant)."""
    xc = x - x.mean()
    rc = rows - rows.mean(axis=1, keepdims=True)
    den = np.sqrt((xc @ xc) * np.einsum("ij,ij->i", rc, rc))
    num = rc @ xc
    out: npt.NDArray[np.float64] = np.where(den > 1e-9, num / np.maximum(den, 1e-9), 0.0)
    return out
