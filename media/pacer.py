"""The one real-time pacer: deadlines for a stream of fixed-length frames.

Every place that sends audio in real time paces through a ``Pacer``: the
playout buffer's ``frames()`` iterator (which push transports such as the
WebSocket consume), aiortc's pull track (``media.webrtc.PlayoutTrack``), and
the caller peer of the tests and the wire benchmark (``media.caller``).

Deadlines are computed from the stream's start (``start + n * period``), so
sleeping late never accumulates into drift. When the consumer falls more than
``max_lag_frames`` behind (a stalled event loop), the pacer resynchronises —
the current frame becomes due now — instead of bursting the missed frames.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

MAX_LAG_FRAMES = 5
"""How far behind (in frames) a consumer may fall before the pacer stops catching up."""


class Pacer:
    """Real-time deadlines for frames of ``period_s`` seconds.

    ``await wait()`` before producing each frame: the first call returns at
    once and starts the clock; each later call returns at the next frame's
    due time. ``clock`` and ``sleep`` are injectable so the pacing logic can
    be tested on a virtual clock.
    """

    def __init__(
        self,
        period_s: float,
        *,
        max_lag_frames: int = MAX_LAG_FRAMES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if period_s <= 0:
            raise ValueError("the frame period must be positive")
        if max_lag_frames < 1:
            raise ValueError("max_lag_frames must be at least 1")
        self.period_s = period_s
        self._max_lag_s = max_lag_frames * period_s
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._first: float | None = None
        self._index = 0
        self.frames = 0
        """Frames paced so far (calls to ``wait`` that returned)."""
        self.resyncs = 0
        """Times the consumer fell too far behind and the clock was reset."""

    @property
    def started_at(self) -> float | None:
        """Clock time of the first frame (None before the first ``wait``)."""
        return self._first

    async def wait(self) -> None:
        """Return when the next frame is due (at once for the first frame)."""
        now = self._clock()
        if self._start is None:
            self._start = self._first = now
        else:
            self._index += 1
            delay = self._start + self._index * self.period_s - now
            if delay > 0:
                await self._sleep(delay)
            elif delay < -self._max_lag_s:
                # the current frame becomes due now; later ones follow from here
                self._start = now - self._index * self.period_s
                self.resyncs += 1
        self.frames += 1
