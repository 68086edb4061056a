"""Voice-to-voice: questions in several voices, one call at a time, replies heard in full.

Per turn: the end of the caller's speech in the sent audio -> the first
received agent frame above the loudness threshold, and the session's own
metrics of the turn split into stages (end-of-turn detection, final STT, LLM
first token, chunk wait, TTS first audio, and network/playout as the rest).
Calls hold several turns so the chat history grows as in a real call.
``caller_type`` picks the signaling: ``WireCaller`` for the Parley server,
``PipecatCaller`` for the Pipecat reference bot (audio only: no stages).
``caller_voice`` picks who asks: the scripted questions in the synthetic
voices (default) or human speech (``bench.wire.speech.CallerVoice``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.wire.client import WireCaller
from bench.wire.scenarios.common import BenchContext, Turn, ask, stage_summary
from bench.wire.speech import CallerVoice, scenario_key, utterance
from bench.wire.stats import summarize

REPLY_LISTEN_S = 40.0
"""Longest wait for a reply to be played out (80 tokens of speech take ~25 s)."""


async def run(
    ctx: BenchContext,
    calls: int,
    turns_per_call: int,
    caller_type: Callable[[httpx.AsyncClient, str], WireCaller] = WireCaller,
    caller_voice: CallerVoice | None = None,
) -> dict[str, Any]:
    """Ask ``calls`` x ``turns_per_call`` questions; returns the scenario's results.

    ``caller_voice``: who asks (default: the synthetic voices of ``ctx``).
    """
    lines = caller_voice or CallerVoice.synthetic(ctx.voices)
    name = scenario_key("v2v", lines.kind)
    turns: list[Turn] = []
    t0 = time.monotonic()
    n = 0
    for c in range(calls):
        caller = caller_type(ctx.client, f"{name}-{c}")
        try:
            await caller.connect()
            await asyncio.sleep(0.5)
            for k in range(turns_per_call):
                text, voice = lines.question(n)
                n += 1
                turn = await ask(
                    caller,
                    utterance(text, voice, lead_s=0.4),
                    call=f"{name}-{c}",
                    index=k,
                    listen_s=REPLY_LISTEN_S,
                )
                turns.append(turn)
                ctx.say(
                    f"{name} call {c} turn {k}: {turn.v2v_ms} ms"
                    f" ({voice}; heard {turn.transcript!r}){' ' + turn.error if turn.error else ''}"
                )
                await asyncio.sleep(0.4)
        finally:
            await caller.hang_up()
            await ctx.server.wait_idle(ctx.client)
    t1 = time.monotonic()
    v2v = [t.v2v_ms for t in turns if t.v2v_ms is not None]
    gaps = [g for t in turns for g in t.underruns]
    return {
        "caller_voice": lines.kind,
        "turns": [t.to_json() for t in turns],
        "questions": len({t.question for t in turns}),
        "voices": sorted({t.voice for t in turns}),
        "v2v_ms": summarize(v2v),
        "v2v_first_turn_ms": summarize([t.v2v_ms for t in turns if t.index == 0 and t.v2v_ms]),
        "v2v_later_turns_ms": summarize([t.v2v_ms for t in turns if t.index > 0 and t.v2v_ms]),
        "stages": stage_summary(turns),
        "speculative_hits": sum(1 for t in turns if t.server and t.server.get("speculative_hit")),
        "preemptive_replies": sum(1 for t in turns if t.server and t.server.get("preemptive")),
        "preemptive_dropped": sum(
            int((t.server.get("usage") or {}).get("preemptive_dropped") or 0)
            for t in turns
            if t.server
        ),
        "unanswered": sum(1 for t in turns if t.v2v_ms is None),
        "reply_audio_s": round(sum(t.reply_audio_s for t in turns), 1),
        "underruns": len(gaps),
        "underrun_ms": round(sum(g.seconds for g in gaps) * 1000),
        "server": ctx.monitor.window(t0, t1),
        "seconds": round(t1 - t0, 1),
    }
