"""Soak: many calls one after another; a leak shows as growth of RSS, descriptors or threads.

Each call connects, says a short opener, waits for the agent's first loud
audio frame (so VAD, STT, LLM, TTS and playout all ran), and hangs up in
the middle of the reply (the server must cancel that work and free the
call). The server's RSS, open file descriptors and threads are read before
the first call and after the last one (once ``/health`` reports no active
call), and every ``every`` calls in between for the plot.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.wire.client import CallError, WireCaller
from bench.wire.scenarios.common import BenchContext, ask
from bench.wire.speech import SHORT_QUESTIONS, utterance
from bench.wire.stats import slope, summarize


async def run(ctx: BenchContext, calls: int, every: int = 5) -> dict[str, Any]:
    """Make ``calls`` calls in a row; returns before/after readings and the trend."""
    t0 = time.monotonic()
    await ctx.server.wait_idle(ctx.client)
    before = ctx.monitor.now()
    points: list[dict[str, float]] = [
        {"call": 0, "rss_mb": round(before.rss_mb, 1), "fds": before.fds, "threads": before.threads}
    ]
    v2v: list[float] = []
    failures: list[str] = []
    not_freed = 0
    for i in range(calls):
        caller = WireCaller(ctx.client, f"soak-{i}")
        voice = ctx.voices[i % len(ctx.voices)]
        text = SHORT_QUESTIONS[i % len(SHORT_QUESTIONS)]
        try:
            await caller.connect()
            turn = await ask(
                caller,
                utterance(text, voice, lead_s=0.3),
                call=f"soak-{i}",
                index=0,
                listen_s=0,
                first_audio_s=20.0,
            )
            if turn.v2v_ms is not None:
                v2v.append(turn.v2v_ms)
            else:
                heard = [str(e.get("text")) for _, e in caller.of_type("transcript")]
                failures.append(f"call {i} ({voice}, {text!r}): {turn.error}; heard {heard}")
        except CallError as exc:
            failures.append(f"call {i}: {exc}")
        finally:
            await caller.hang_up()
        if not await ctx.server.wait_idle(ctx.client, 10.0):
            not_freed += 1
        if (i + 1) % every == 0 or i + 1 == calls:
            s = ctx.monitor.now()
            points.append(
                {"call": i + 1, "rss_mb": round(s.rss_mb, 1), "fds": s.fds, "threads": s.threads}
            )
            ctx.say(
                f"soak {i + 1}/{calls}: rss {s.rss_mb:.0f} MB, fds {s.fds}, threads {s.threads}"
            )
    await asyncio.sleep(2.0)
    after = ctx.monitor.now()
    half = [p for p in points if p["call"] >= calls / 2]
    trend = slope([p["call"] for p in half], [p["rss_mb"] for p in half])
    return {
        "calls": calls,
        "failures": failures,
        "not_freed_within_10s": not_freed,
        "v2v_ms": summarize(v2v),
        "before": {"rss_mb": round(before.rss_mb, 1), "fds": before.fds, "threads": before.threads},
        "after": {"rss_mb": round(after.rss_mb, 1), "fds": after.fds, "threads": after.threads},
        "growth": {
            "rss_mb": round(after.rss_mb - before.rss_mb, 1),
            "fds": after.fds - before.fds,
            "threads": after.threads - before.threads,
        },
        "rss_kb_per_call_second_half": None if trend is None else round(trend * 1024, 1),
        "points": points,
        "seconds": round(time.monotonic() - t0, 1),
    }
