"""Turn-taking accuracy: questions with a mid-sentence pause of 300-600 ms.

Each question is its own call: the first part, a pause of exact digital
silence, the second part. The turn counts as **cut off early** when the
agent ended the turn inside the pause: a final transcript (or the THINKING
state) arrived before the second part's speech ended, or the question
produced more than one final transcript. A question with no final
transcript at all is counted apart (missed), not as a cut-off.

The served agent's ``turn.end_of_turn_model`` is reported with the results
(``python -m bench.wire --end-of-turn-model smart_turn|none`` picks it), and
so is the caller-side delay from the end of the question's speech to its
final transcript (end of turn plus the final STT wait) over the questions
that were neither cut off nor missed.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench.wire.client import WireCaller
from bench.wire.scenarios.common import BenchContext
from bench.wire.speech import SPLIT_QUESTIONS, paused_utterance
from bench.wire.stats import summarize

SETTLE_S = 3.5
"""How long after the question the caller waits for the final transcript(s)."""


def pauses(n: int, low_ms: int = 300, high_ms: int = 600) -> list[int]:
    """``n`` pauses spread evenly over ``[low_ms, high_ms]``, shuffled deterministically."""
    if n == 1:
        return [high_ms]
    values = [round(low_ms + i * (high_ms - low_ms) / (n - 1)) for i in range(n)]
    step = next(k for k in (5, 7, 11, 13, 1) if math.gcd(k, n) == 1)
    return [values[(i * step) % n] for i in range(n)]


async def run(ctx: BenchContext, n: int) -> dict[str, Any]:
    """Ask ``n`` paused questions; returns per-question outcomes and the cut-off count."""
    trials: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for i, pause_ms in enumerate(pauses(n)):
        first, second = SPLIT_QUESTIONS[i % len(SPLIT_QUESTIONS)]
        voice = ctx.voices[i % len(ctx.voices)]
        utt = paused_utterance(first, second, voice, pause_ms / 1000)
        caller = WireCaller(ctx.client, f"turns-{i}")
        try:
            await caller.connect()
            await asyncio.sleep(0.3)
            clip = caller.say(utt)
            await clip.wait(utt.duration_s + 15.0)
            await asyncio.sleep(SETTLE_S)
            start = clip.speech_start_at
            second_end = clip.speech_end_at
            finals = [(t, e) for t, e in caller.of_type("transcript", start) if e.get("final")]
            thinking = [
                t for t, e in caller.of_type("state", start) if e.get("state") == "thinking"
            ]
            early_final = bool(finals) and finals[0][0] < second_end
            early_thinking = bool(thinking) and thinking[0] < second_end
            cut = len(finals) >= 2 or early_final or early_thinking
            trials.append(
                {
                    "question": utt.text,
                    "voice": voice,
                    "pause_ms": pause_ms,
                    "finals": [str(e.get("text", "")) for _, e in finals],
                    "first_final_after_speech_ms": (
                        round((finals[0][0] - second_end) * 1000) if finals else None
                    ),
                    "cut_off": cut,
                    "missed": not finals,
                }
            )
            ctx.say(
                f"turns {i}: pause {pause_ms} ms -> "
                f"{'CUT OFF' if cut else 'ok'} {[str(e.get('text')) for _, e in finals]}"
            )
        finally:
            await caller.hang_up()
            await ctx.server.wait_idle(ctx.client)
    return {
        "trials": trials,
        "questions": len(trials),
        "cut_off": sum(1 for t in trials if t["cut_off"]),
        "missed": sum(1 for t in trials if t["missed"]),
        "cut_off_by_pause": {
            str(p): sum(1 for t in trials if t["pause_ms"] == p and t["cut_off"])
            for p in sorted({t["pause_ms"] for t in trials})
        },
        "end_of_turn_silence_ms": ctx.config.turn.end_of_turn_silence_ms,
        "end_of_turn_model": ctx.config.turn.end_of_turn_model,
        "final_after_speech_ms": summarize(
            [
                float(t["first_final_after_speech_ms"])
                for t in trials
                if not t["cut_off"] and t["first_final_after_speech_ms"] is not None
            ]
        ),
        "seconds": round(time.monotonic() - t0, 1),
    }
