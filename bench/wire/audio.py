"""Analysis of the agent's audio as the caller received it (20 ms frames).

Definitions used by every scenario:

* **loud**: a received frame whose RMS level is above ``LOUD_DBFS``. The
  agent's voice is normalised to a 0.8 peak; its speech frames sit around
  -15 to -30 dBFS, its natural pauses (between words, at commas and between
  sentences) are Piper's own low-level output at -50 to -99 dBFS.
* **stop** (barge-in): the agent "goes silent" at the end of the last loud
  frame after which no loud frame arrives for at least ``STOP_HOLD_S``
  (1 s). Natural pauses inside a reply last 100-400 ms, so they never count.
* **underrun**: inside a reply (from its first to its last loud frame), a
  stretch of at least ``UNDERRUN_MIN_S`` (60 ms) in which the agent had
  nothing to play. Two kinds, told apart from natural pauses without any
  help from the server:

  - *starved*: consecutive received frames that are digital silence (every
    sample exactly 0). The server's playout sends exact zeros only when its
    buffer is empty (the next TTS chunk is not synthesized yet) or paused;
    Piper's natural pauses are never exact zeros (measured: its quietest
    frames are -87 to -99 dBFS, not -inf), and Opus decodes a zero frame to
    a zero frame. So a run of zero frames inside a reply is starvation, not a
    pause, whatever its length.
  - *stalled*: no frame arrived for over ``FRAME_S + UNDERRUN_MIN_S`` (a
    gap in the arrival times of a 50 frames/s stream): the server's event
    loop, the network path or the caller's own loop stalled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FRAME_S = 0.02
LOUD_DBFS = -40.0
"""Loudness threshold of a received agent frame."""
STOP_HOLD_S = 1.0
"""Silence that must follow a stop for it to count as one."""
UNDERRUN_MIN_S = 0.06
"""Shortest gap counted as an underrun."""


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch inside a reply where the agent had nothing to play."""

    start: float
    """Monotonic time the gap began."""
    seconds: float
    kind: str
    """"starved" (digital silence from the server) or "stalled" (no frames arrived)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Where the agent's audio went silent for good after a moment of interest."""

    at: float
    """End of the last loud frame before the silence (monotonic)."""
    silent_s: float
    """How long the silence lasted (up to the next loud frame or the end of the recording)."""
    in_pause: bool
    """True if the agent was already in a pause at the moment of interest."""


@dataclass(frozen=True, slots=True)
class AudioTrace:
    """Arrival time, level and digital silence of every received frame."""

    times: npt.NDArray[np.float64]
    db: npt.NDArray[np.float64]
    zero: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, times: Sequence[float], db: Sequence[float], zero: Sequence[bool]) -> AudioTrace:
        """Build from the caller's parallel lists (copied, so recording can go on)."""
        n = min(len(times), len(db), len(zero))
        return cls(
            np.asarray(times[:n], dtype=np.float64),
            np.asarray(db[:n], dtype=np.float64),
            np.asarray(zero[:n], dtype=np.bool_),
        )

    @property
    def end(self) -> float:
        """Arrival time of the last frame (0 when none)."""
        return float(self.times[-1]) if self.times.size else 0.0

    def loud_times(
        self, start: float = -np.inf, end: float = np.inf, threshold: float = LOUD_DBFS
    ) -> npt.NDArray[np.float64]:
        """Arrival times of loud frames in ``[start, end]``."""
        mask = (self.db > threshold) & (self.times >= start) & (self.times <= end)
        return self.times[mask]

    def first_loud(
        self, after: float, before: float = np.inf, threshold: float = LOUD_DBFS
    ) -> float | None:
        """Arrival time of the first loud frame after ``after``."""
        loud = self.loud_times(after, before, threshold)
        return float(loud[0]) if loud.size else None

    def stop_after(
        self,
        moment: float,
        hold_s: float = STOP_HOLD_S,
        threshold: float = LOUD_DBFS,
        lookback_s: float = 0.5,
    ) -> Stop | None:
        """The first stop (silence of at least ``hold_s``) at or after ``moment``.

        The search starts at the last loud frame before ``moment`` (if it is
        within ``lookback_s``), so a reply already in a natural pause at
        ``moment`` that never resumes stops at that pause (``in_pause``).
        Returns None if no such silence is in the recording (the agent kept
        talking, or the recording ends before ``hold_s`` of silence).
        """
        loud = self.loud_times(moment - lookback_s, np.inf, threshold)
        if loud.size == 0:
            return None
        for i, t in enumerate(loud):
            nxt = float(loud[i + 1]) if i + 1 < loud.size else self.end + FRAME_S
            silent = nxt - float(t) - FRAME_S
            if silent >= hold_s:
                stop_at = float(t) + FRAME_S
                return Stop(stop_at, silent, stop_at <= moment)
        return None

    def longest_silence(self, start: float, end: float, threshold: float = LOUD_DBFS) -> float:
        """Longest stretch without a loud frame overlapping ``[start, end]`` (seconds).

        The stretch is measured between the loud frames that bound it, so a
        silence that began before ``start`` counts whole.
        """
        loud = self.loud_times(-np.inf, np.inf, threshold)
        best = 0.0
        prev: float | None = None
        for t in [*loud.tolist(), self.end + FRAME_S]:
            if prev is not None and t >= start and prev <= end:
                best = max(best, t - prev - FRAME_S)
            prev = t
        return best

    def reply_span(
        self, after: float, before: float, threshold: float = LOUD_DBFS
    ) -> tuple[float, float] | None:
        """First and last loud frame in ``[after, before]``."""
        loud = self.loud_times(after, before, threshold)
        if loud.size == 0:
            return None
        return float(loud[0]), float(loud[-1])

    def underruns(self, start: float, end: float, min_s: float = UNDERRUN_MIN_S) -> list[Gap]:
        """Starved and stalled gaps of at least ``min_s`` inside ``[start, end]``."""
        mask = (self.times >= start) & (self.times <= end)
        times = self.times[mask]
        zero = self.zero[mask]
        gaps: list[Gap] = []
        run_start: float | None = None
        run = 0
        for i, t in enumerate(times.tolist()):
            if i > 0:
                arrival_gap = t - float(times[i - 1]) - FRAME_S
                if arrival_gap >= min_s:
                    gaps.append(Gap(float(times[i - 1]) + FRAME_S, arrival_gap, "stalled"))
            if zero[i]:
                if run == 0:
                    run_start = t
                run += 1
            else:
                if run * FRAME_S >= min_s - 1e-9 and run_start is not None:
                    gaps.append(Gap(run_start, run * FRAME_S, "starved"))
                run = 0
        if run * FRAME_S >= min_s - 1e-9 and run_start is not None:
            gaps.append(Gap(run_start, run * FRAME_S, "starved"))
        return sorted(gaps, key=lambda g: g.start)

    def seconds_between(self, start: float, end: float) -> float:
        """Audio received in ``[start, end]`` (frames x 20 ms)."""
        return float(np.count_nonzero((self.times >= start) & (self.times <= end))) * FRAME_S
