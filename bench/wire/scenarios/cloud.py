"""Cloud providers: the agent on Groq (STT, LLM) and ElevenLabs (TTS), served on loopback.

The scenario's server runs the chains ``groq,local`` (STT), ``groq,local``
(LLM) and ``elevenlabs,local`` (TTS) against ``bench.wire.vendors``, a
process of its own that injects real vendors' latencies (LLM first token
150 ms then 400 tokens/s, Whisper 250 ms per request, TTS first audio
200 ms). With ``stt.partials`` on, partial transcripts still come from the
local Whisper (Groq serves finals only).

* **Single calls**: ``v2v.run`` (voice-to-voice over WebRTC with the
  per-stage breakdown), plus the **remainder**: the caller's voice-to-voice
  minus the configured end-of-turn silence and the latencies the vendors
  inject on the critical path (LLM first token, TTS first audio; the STT's
  latency runs during the end-of-turn silence when the speculative final
  transcription hits, and otherwise shows as the final STT wait). What
  remains is the server's own overhead (VAD framing, HTTP and SDK work,
  chunking, scheduling, playout) plus the WebRTC path (Opus, RTP, both
  jitter buffers).
* **Concurrency**: ``concurrency.run_level`` at each level, plus the server's
  CPU per call by thread (the event loop, the Opus encoder's executor, the
  VAD worker, the local Whisper, the audio decoder, native threads), the
  CPU of other work on the machine (its total minus the server, the vendors
  and the callers), which provider served each stage of each turn (a
  ``local`` is a fallback), and whether the level **holds**: every call
  connected, every question answered, no underrun, voice-to-voice p90 under
  ``TARGET_P90_MS``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from bench.wire.profiler import NATIVE
from bench.wire.scenarios import concurrency, v2v
from bench.wire.scenarios.common import BenchContext
from bench.wire.scenarios.concurrency import Level
from bench.wire.stats import summarize
from bench.wire.vendors import VendorLatencies

TARGET_P90_MS = 1500.0
"""A level holds when its voice-to-voice p90 stays under this (and nothing else failed)."""
TARGET_CALLS = 20
"""The issue's target: simultaneous calls held on this 2-core machine."""
STAGES = ("stt", "llm", "tts")
THREADS = (
    ("MainThread", "event loop (WebRTC, RTP, session)"),
    ("uvloop", "executor (Opus encoder)"),
    ("vad", "VAD worker (Silero)"),
    ("stt-whisper", "STT worker (local Whisper)"),
    ("llm-llama", "LLM worker (local, fallback)"),
    ("tts-piper", "TTS worker (local, fallback)"),
    ("audio-decoder", "audio decoder (caller's Opus)"),
    (NATIVE, "native threads (the local Whisper's CTranslate2 compute)"),
)
"""Server threads (as ``profiler.cpu_by_thread`` names them) and what each does here."""
OTHER = "other threads"


def served_by(turns: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Turns per stage and provider that served it, from each turn's usage."""
    counts: dict[str, Counter[str]] = {stage: Counter() for stage in STAGES}
    for turn in turns:
        usage = (turn.get("server") or {}).get("usage") or {}
        for stage in STAGES:
            provider = usage.get(f"{stage}_provider")
            if provider:
                counts[stage][str(provider)] += 1
    return {stage: dict(c.most_common()) for stage, c in counts.items()}


def cpu_per_call(
    threads: dict[str, float], server_cpu_pct: float | None, calls: int
) -> dict[str, float | None]:
    """The server's CPU per call (% of one core) by thread group, and in total."""
    known = {name for name, _ in THREADS}
    out: dict[str, float | None] = {
        name: round(threads.get(name, 0.0) / calls, 2) for name, _ in THREADS
    }
    out[OTHER] = round(sum(v for k, v in threads.items() if k not in known) / calls, 2)
    out["total"] = None if server_cpu_pct is None else round(server_cpu_pct / calls, 2)
    return out


def remainder_ms(
    turns: Iterable[dict[str, Any]], latencies: VendorLatencies, end_of_turn_ms: float
) -> list[float]:
    """Per answered turn: voice-to-voice minus the end-of-turn silence and the injected
    LLM first token and TTS first audio."""
    injected = end_of_turn_ms + 1000 * (latencies.llm_first_token_s + latencies.tts_first_audio_s)
    return [round(t["v2v_ms"] - injected, 1) for t in turns if t.get("v2v_ms") is not None]


def others_cpu(level: dict[str, Any]) -> float | None:
    """CPU (% of one core) the rest of the machine used during a level: other work."""
    keys = ("machine_cpu_pct", "server_cpu_pct", "vendors_cpu_pct", "client_cpu_pct")
    values = [level.get(k) for k in keys]
    if any(v is None for v in values):
        return None
    machine, *ours = (float(v) for v in values if v is not None)
    return round(max(0.0, machine - sum(ours)), 1)


def holds(level: dict[str, Any]) -> bool:
    """Whether a level met the target: all connected and answered, no underrun, p90 low."""
    p90 = level["v2v_ms"].get("p90")
    return (
        level["connected"] == level["calls"]
        and level["turns_asked"] > 0
        and level["turns_answered"] == level["turns_asked"]
        and level["underruns"] == 0
        and p90 is not None
        and p90 < TARGET_P90_MS
    )


async def run(
    ctx: BenchContext,
    latencies: VendorLatencies,
    calls: int,
    turns_per_call: int,
    levels: list[Level],
) -> dict[str, Any]:
    """Single calls, then every concurrency level; returns the scenario's results."""
    t0 = time.monotonic()
    eot_ms = float(ctx.config.turn.end_of_turn_silence_ms)
    single = await v2v.run(ctx, calls, turns_per_call)
    t1 = time.monotonic()
    single["vendors_cpu_pct"] = ctx.vendors.window(t0, t1)["cpu_pct"] if ctx.vendors else None
    single["served_by"] = served_by(single["turns"])
    single["remainder_ms"] = summarize(remainder_ms(single["turns"], latencies, eot_ms))
    done: list[dict[str, Any]] = []
    for level in levels:
        ctx.say(f"cloud: {level.calls} call(s) for {level.duration_s:.0f} s")
        result = await concurrency.run_level(ctx, level)
        result["served_by"] = served_by(result["turns"])
        result["remainder_ms"] = summarize(remainder_ms(result["turns"], latencies, eot_ms))
        result["cpu_per_call_pct"] = cpu_per_call(
            result["server_threads_cpu_pct"], result["server_cpu_pct"], level.calls
        )
        result["others_cpu_pct"] = others_cpu(result)
        result["holds"] = holds(result)
        done.append(result)
        ctx.say(
            f"cloud {level.calls}: v2v {result['v2v_ms'].get('median')} / "
            f"{result['v2v_ms'].get('p90')} ms median / p90, "
            f"{result['turns_answered']}/{result['turns_asked']} answered, "
            f"underruns {result['underruns']}, server cpu {result['server_cpu_pct']} %, "
            f"vendors cpu {result['vendors_cpu_pct']} %, served by {result['served_by']}"
        )
        await asyncio.sleep(2.0)
    held = [lv["calls"] for lv in done if lv["holds"]]
    return {
        "latencies": latencies.to_json(),
        "partials": ctx.config.stt.partials,
        "end_of_turn_silence_ms": eot_ms,
        "target": {"v2v_p90_ms": TARGET_P90_MS, "calls": TARGET_CALLS},
        "v2v": single,
        "levels": done,
        "holds_calls": max(held, default=None),
        "seconds": round(time.monotonic() - t0, 1),
    }
