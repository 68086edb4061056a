"""Concurrency: N simultaneous calls, each asking questions in a loop for a bounded time.

Per level: every caller asks a question, listens to the whole reply, waits a
moment and asks the next, until the level's duration is over; turns still in
flight then get ``drain_s`` more to finish, and every call hangs up. Measured
per level: voice-to-voice (caller side) median/p90, turns asked/answered/
completed, agent audio underruns (``bench.wire.audio``: starved = digital
silence inside a reply, stalled = no frames arriving), server CPU (% of one
core) and RSS (mean, peak, and with the calls connected but idle), and the
caller process's own CPU (it shares the machine's cores with the server), the
loopback cloud vendors' CPU where the server uses them, and the whole
machine's CPU (the rest is other work on the machine).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from bench.wire.client import WireCaller
from bench.wire.profiler import cpu_by_thread, thread_cpu, thread_names
from bench.wire.scenarios.common import BenchContext, Turn, ask, stage_summary
from bench.wire.server import machine_cpu_s, read_proc
from bench.wire.speech import QUESTIONS, utterance
from bench.wire.stats import slope, summarize


@dataclass(frozen=True, slots=True)
class Level:
    """One concurrency level."""

    calls: int
    duration_s: float
    """Time during which callers start new questions."""
    drain_s: float
    """Extra time for the turns in flight when the duration is over."""


async def _loop(
    ctx: BenchContext, caller: WireCaller, idx: int, level: Level, t0: float, turns: list[Turn]
) -> None:
    stop_asking = t0 + level.duration_s
    hard_stop = stop_asking + level.drain_s
    await asyncio.sleep(min(idx * 0.35, 3.0))
    k = 0
    while time.monotonic() < stop_asking:
        n = idx * 7 + k
        utt = utterance(QUESTIONS[n % len(QUESTIONS)], ctx.voices[n % len(ctx.voices)], 0.3)
        turn = await ask(
            caller,
            utt,
            call=f"c{level.calls}-{idx}",
            index=k,
            listen_s=level.duration_s + level.drain_s,
            first_audio_s=level.duration_s + level.drain_s,
            deadline=hard_stop,
        )
        turns.append(turn)
        k += 1
        if turn.error is not None and not turn.completed:
            break
        await asyncio.sleep(0.7)


async def _probe(
    ctx: BenchContext, stop: asyncio.Event, lags: list[float], health: list[float]
) -> None:
    """Lateness of this process's own 20 ms timers, and ``/health`` round trips."""
    loop = asyncio.get_running_loop()
    next_health = loop.time()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.02)
        lags.append((loop.time() - t - 0.02) * 1000)
        if loop.time() >= next_health:
            next_health = loop.time() + 0.5
            t = loop.time()
            try:
                await ctx.client.get("/health", timeout=10.0)
                health.append((loop.time() - t) * 1000)
            except Exception:
                health.append(10_000.0)


async def run_level(ctx: BenchContext, level: Level) -> dict[str, Any]:
    """One level: connect, loop, hang up; returns the level's figures."""
    me = os.getpid()
    baseline = ctx.monitor.now()
    callers = [WireCaller(ctx.client, f"conc{level.calls}-{i}") for i in range(level.calls)]
    turns: list[Turn] = []
    connected: list[WireCaller] = []
    try:
        results = await asyncio.gather(
            *(c.connect(within_s=60.0) for c in callers), return_exceptions=True
        )
        connected = [c for c, r in zip(callers, results, strict=True) if isinstance(r, float)]
        await asyncio.sleep(1.0)
        idle = ctx.monitor.now()
        pids = ctx.server.pids()
        threads0 = {t: v for pid in pids for t, v in thread_cpu(pid).items()}
        client0 = read_proc(me)
        machine0 = machine_cpu_s()
        stop = asyncio.Event()
        lags: list[float] = []
        health: list[float] = []
        probe = asyncio.create_task(_probe(ctx, stop, lags, health))
        t0 = time.monotonic()
        try:
            await asyncio.gather(
                *(_loop(ctx, c, i, level, t0, turns) for i, c in enumerate(connected))
            )
        finally:
            stop.set()
            await asyncio.gather(probe, return_exceptions=True)
        t1 = time.monotonic()
        client1 = read_proc(me)
        machine1 = machine_cpu_s()
        threads1 = {t: v for pid in pids for t, v in thread_cpu(pid).items()}
        # named at the end: inference threads start lazily on a server's first turn
        names = {
            t: n for pid in pids for t, n in (await asyncio.to_thread(thread_names, pid)).items()
        }
        threads = cpu_by_thread(threads0, threads1, names, t1 - t0)
    finally:
        await asyncio.gather(*(c.hang_up() for c in callers), return_exceptions=True)
    await ctx.server.wait_idle(ctx.client, 30.0)
    after = ctx.monitor.now()
    v2v = [t.v2v_ms for t in turns if t.v2v_ms is not None]
    gaps = [g for t in turns for g in t.underruns]
    speech_s = sum(t.reply_audio_s for t in turns)
    server = ctx.monitor.window(t0, t1)
    vendors = ctx.vendors.window(t0, t1) if ctx.vendors is not None else None
    return {
        "calls": level.calls,
        "connected": len(connected),
        "duration_s": round(t1 - t0, 1),
        "turns_asked": len(turns),
        "turns_answered": len(v2v),
        "turns_completed": sum(1 for t in turns if t.completed),
        "v2v_ms": summarize(v2v),
        "stages": stage_summary(turns),
        "reply_audio_s": round(speech_s, 1),
        "underruns": len(gaps),
        "underruns_starved": sum(1 for g in gaps if g.kind == "starved"),
        "underruns_stalled": sum(1 for g in gaps if g.kind == "stalled"),
        "underrun_ms": round(sum(g.seconds for g in gaps) * 1000),
        "underruns_per_min_speech": round(len(gaps) / (speech_s / 60), 2) if speech_s else None,
        "server_cpu_pct": server["cpu_pct"],
        "server_rss_mean_mb": server["rss_mean_mb"],
        "server_rss_peak_mb": server["rss_peak_mb"],
        "server_rss_before_mb": round(baseline.rss_mb, 1),
        "server_rss_idle_connected_mb": round(idle.rss_mb, 1),
        "server_rss_after_mb": round(after.rss_mb, 1),
        "server_threads_peak": max(
            (s.threads for s in ctx.monitor.samples if t0 <= s.t <= t1), default=None
        ),
        "server_threads_cpu_pct": threads,
        "vendors_cpu_pct": None if vendors is None else vendors["cpu_pct"],
        "server_health_ms": summarize(health),
        "client_cpu_pct": round(100 * (client1.cpu_s - client0.cpu_s) / max(t1 - t0, 1e-6), 1),
        "machine_cpu_pct": round(100 * (machine1 - machine0) / max(t1 - t0, 1e-6), 1),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "client_timer_lag_ms": summarize(lags),
        "turns": [t.to_json() for t in turns],
    }


async def run(ctx: BenchContext, levels: list[Level]) -> dict[str, Any]:
    """Run every level in order; adds the RSS cost per added call."""
    t0 = time.monotonic()
    out: list[dict[str, Any]] = []
    for level in levels:
        ctx.say(f"concurrency: {level.calls} call(s) for {level.duration_s:.0f} s")
        result = await run_level(ctx, level)
        out.append(result)
        ctx.say(
            f"concurrency {level.calls}: v2v {result['v2v_ms'].get('median')} ms median, "
            f"{result['turns_answered']}/{result['turns_asked']} answered, "
            f"cpu {result['server_cpu_pct']} %, rss peak {result['server_rss_peak_mb']} MB, "
            f"underruns {result['underruns']}"
        )
        await asyncio.sleep(2.0)
    xs = [float(r["calls"]) for r in out]
    idle_delta = [r["server_rss_idle_connected_mb"] - r["server_rss_before_mb"] for r in out]
    peak = slope(xs, [float(r["server_rss_peak_mb"] or 0.0) for r in out])
    return {
        "levels": out,
        "rss_per_call_mb": {
            "peak_slope": None if peak is None else round(peak, 2),
            "idle_connected": [
                round(d / r["calls"], 2) for d, r in zip(idle_delta, out, strict=True)
            ],
        },
        "seconds": round(time.monotonic() - t0, 1),
    }
