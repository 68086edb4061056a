"""Real-time pacing of the playout buffer's ``frames()`` on the wall clock.

The tests check the pacing logic on a virtual clock (``tests/test_media.py``);
this prints what it does on this machine's real event loop: the interval
between frames (median, p95, max), the drift after the run, and the late frames,
with an idle consumer and with one that blocks the loop for part of each frame.
(It replaces the wall-clock bound the playout test used to assert.)

Run: ``.venv/bin/python -m bench.pacing [--frames 250] [--busy-ms 8]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time

import numpy as np

from media.playout import PlayoutBuffer


async def run(frames: int, busy_ms: float) -> dict[str, float]:
    """Consume ``frames`` paced frames; ``busy_ms`` of blocking work after each one."""
    buf = PlayoutBuffer(16000)
    seg = buf.open_segment("u", "bench")
    await buf.push(seg, np.ones(320 * min(frames, 50), np.int16))
    buf.close_segment(seg)
    stamps: list[float] = []
    stream = buf.frames()
    while True:
        await anext(stream)
        stamps.append(time.perf_counter())
        if len(stamps) == frames:
            break
        if busy_ms:
            end = time.perf_counter() + busy_ms / 1000
            while time.perf_counter() < end:
                pass
    period_ms = float(buf.frame_ms)
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    gaps.sort()
    elapsed_ms = (stamps[-1] - stamps[0]) * 1000
    return {
        "frames": frames,
        "busy_ms": busy_ms,
        "period_ms": period_ms,
        "interval_median_ms": round(statistics.median(gaps), 3),
        "interval_p95_ms": round(gaps[int(0.95 * (len(gaps) - 1))], 3),
        "interval_max_ms": round(gaps[-1], 3),
        "elapsed_ms": round(elapsed_ms, 1),
        "drift_ms": round(elapsed_ms - (frames - 1) * period_ms, 3),
        "late_frames": sum(g > 1.5 * period_ms for g in gaps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=250, help="frames per run (20 ms each)")
    parser.add_argument("--busy-ms", type=float, default=8.0, help="blocking work per frame")
    args = parser.parse_args()
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    results = [asyncio.run(run(args.frames, 0.0))]
    if args.busy_ms:
        results.append(asyncio.run(run(args.frames, args.busy_ms)))
    for r in results:
        print(
            f"busy {r['busy_ms']:>4} ms/frame: interval median {r['interval_median_ms']} ms, "
            f"p95 {r['interval_p95_ms']} ms, max {r['interval_max_ms']} ms; "
            f"drift {r['drift_ms']} ms over {r['frames']} frames; "
            f"late (>1.5 periods) {r['late_frames']}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
