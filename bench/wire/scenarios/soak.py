"""Soak: many calls one after another, then a fuzzing pass; a leak shows as growth of RSS,
descriptors or threads that does not come back.

Each call connects, says a short opener, waits for the agent's first loud
audio frame (so VAD, STT, LLM, TTS and playout all ran), and hangs up in
the middle of the reply (the server must cancel that work and free the
call). The server's RSS, open file descriptors and threads are read before
the first call and after the last one (once ``/health`` reports no active
call), and every ``every`` calls in between for the plot.

Then the fuzzing pass (``bench.fuzz``): bad and awkward inputs to every
part of the API (text chat, TTS, STT, WebRTC offers, WebSocket calls, the
rest of the routes), a few at a time; 5xx answers are counted. The server
then sits idle for ``settle_s`` (past the memory-trim job's period) and is
read again: ``rss_back_within_5pct`` says whether the settled RSS is within
5 % of the start (``rss_growth_pct``; the same against the reading after the
first call, once the lazily allocated model buffers exist, is
``rss_growth_after_warm_pct``).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench.fuzz import Fuzzer, Request, run_all
from bench.wire.client import CallError, WireCaller
from bench.wire.scenarios.common import BenchContext, ask
from bench.wire.speech import SHORT_QUESTIONS, utterance
from bench.wire.stats import slope, summarize

FUZZ_QUICK: tuple[tuple[str, int], ...] = (
    ("chat_new", 2),
    ("chat_bad", 4),
    ("tts_short", 3),
    ("stt", 2),
    ("offer_bad", 6),
    ("ws_bad", 4),
    ("api_bad", 4),
)
"""The quick fuzzing pass: ``Fuzzer`` method and how many requests of it."""
FUZZ_FULL: tuple[tuple[str, int], ...] = (
    ("chat_new", 12),
    ("chat_continue", 10),
    ("chat_bad", 20),
    ("tts", 6),
    ("tts_short", 10),
    ("stt", 10),
    ("offer_bad", 30),
    ("ws_bad", 20),
    ("api_bad", 20),
)
"""The full fuzzing pass (long TTS texts and long uploads included)."""
SETTLE_S = 75.0
"""Idle time before the settled reading: longer than the server's memory-trim period."""


def _reading(ctx: BenchContext) -> dict[str, float]:
    s = ctx.monitor.now()
    return {"rss_mb": round(s.rss_mb, 1), "fds": s.fds, "threads": s.threads}


async def fuzz_pass(ctx: BenchContext, quick: bool, seed: int = 14) -> dict[str, Any]:
    """Bad inputs to every part of the API, four at a time; returns statuses and 5xx."""
    rng = random.Random(seed)
    fuzzer = Fuzzer(ws_url=ctx.server.base_url.replace("http", "ws", 1))
    plan = FUZZ_QUICK if quick else FUZZ_FULL
    requests: list[Request] = [getattr(fuzzer, name) for name, n in plan for _ in range(n)]
    rng.shuffle(requests)
    t0 = time.monotonic()
    unanswered = await run_all(ctx.client, requests, 4, rng)
    return {
        "requests": len(requests),
        "server_errors": fuzzer.server_errors,
        "unanswered": unanswered,
        "statuses": {k: {str(s): n for s, n in v.items()} for k, v in fuzzer.statuses.items()},
        "seconds": round(time.monotonic() - t0, 1),
    }


async def run(
    ctx: BenchContext, calls: int, every: int = 5, settle_s: float = SETTLE_S
) -> dict[str, Any]:
    """Make ``calls`` calls in a row, then the fuzzing pass, then settle; returns the
    readings and the trend."""
    t0 = time.monotonic()
    await ctx.server.wait_idle(ctx.client)
    before = ctx.monitor.now()
    points: list[dict[str, float]] = [
        {"call": 0, "rss_mb": round(before.rss_mb, 1), "fds": before.fds, "threads": before.threads}
    ]
    v2v: list[float] = []
    failures: list[str] = []
    not_freed = 0
    warm: dict[str, float] | None = None
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
        if warm is None:
            warm = _reading(ctx)
    await asyncio.sleep(2.0)
    after = ctx.monitor.now()
    ctx.say(f"soak: fuzzing pass ({'quick' if ctx.quick else 'full'})")
    fuzz = await fuzz_pass(ctx, ctx.quick)
    await ctx.server.wait_idle(ctx.client, 30.0)
    after_fuzz = _reading(ctx)
    ctx.say(f"soak: fuzzed, rss {after_fuzz['rss_mb']:.0f} MB; settling {settle_s:.0f} s")
    settle: list[dict[str, float]] = []
    for _ in range(max(1, round(settle_s / 15))):
        await asyncio.sleep(settle_s / max(1, round(settle_s / 15)))
        settle.append({"t_s": round(time.monotonic() - t0, 1), **_reading(ctx)})
    settled = settle[-1]
    start_mb = round(before.rss_mb, 1)
    warm = warm or {"rss_mb": start_mb}
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
        "fuzz": fuzz,
        "rss_mb": {
            "start": start_mb,
            "after_first_call": warm["rss_mb"],
            "after_calls": round(after.rss_mb, 1),
            "after_fuzz": after_fuzz["rss_mb"],
            "settled": settled["rss_mb"],
        },
        "rss_growth_pct": round(100 * (settled["rss_mb"] - start_mb) / start_mb, 1),
        "rss_growth_after_warm_pct": round(
            100 * (settled["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"], 1
        ),
        "rss_back_within_5pct": settled["rss_mb"] <= start_mb * 1.05,
        "settled_readings": settle,
        "points": points,
        "seconds": round(time.monotonic() - t0, 1),
    }
