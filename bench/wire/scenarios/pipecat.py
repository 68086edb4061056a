"""The Pipecat reference line: the v2v scenario, unchanged, against the Pipecat bot.

Same questions, voices, caller and measurement as ``v2v`` (the first
``calls x turns_per_call`` questions in the same order); the figure comes
from the audio alone (send time of the last speech sample -> first loud
frame received), the one thing both servers share. The bot
(``bench/pipecat_ref``) serves the Parley agent's models and knobs; what is
matched and what differs goes into the results with the figures.
"""

from __future__ import annotations

from typing import Any

from bench.pipecat_ref.caller import PipecatCaller
from bench.pipecat_ref.process import PipecatProcess
from bench.wire.scenarios import v2v
from bench.wire.scenarios.common import BenchContext
from bench.wire.stats import summarize


async def run(
    ctx: BenchContext, process: PipecatProcess, calls: int, turns_per_call: int
) -> dict[str, Any]:
    """Ask the v2v questions of the Pipecat bot; returns v2v's results plus the reference."""
    out = await v2v.run(ctx, calls, turns_per_call, caller_type=PipecatCaller)
    out["reference"] = process.describe()
    return out


def ratio(parley: dict[str, Any] | None, reference: dict[str, Any]) -> dict[str, Any] | None:
    """Parley's voice-to-voice over Pipecat's (median, p90); None without both runs.

    Below 1: Parley answers sooner. Only the questions both answered are
    compared (the two lists ask the same questions in the same order);
    ``later_median`` leaves out each call's first turn, where a cold model
    may still be warming up.
    """
    if not parley or "turns" not in parley or "turns" not in reference:
        return None
    pairs = [
        (a["v2v_ms"], b["v2v_ms"], a.get("index", 0))
        for a, b in zip(parley["turns"], reference["turns"], strict=False)
        if a.get("v2v_ms") and b.get("v2v_ms")
    ]
    if not pairs:
        return None
    ours = summarize([a for a, _, _ in pairs])
    theirs = summarize([b for _, b, _ in pairs])
    later = [(a, b) for a, b, index in pairs if index > 0]
    later_median = _median_ratio(later) if later else None
    return {
        "turns": len(pairs),
        "median": round(ours["median"] / theirs["median"], 2),
        "p90": round(ours["p90"] / theirs["p90"], 2),
        "later_median": later_median,
        "parley_median_ms": ours["median"],
        "pipecat_median_ms": theirs["median"],
    }


def _median_ratio(pairs: list[tuple[float, float]]) -> float:
    ours = summarize([a for a, _ in pairs])["median"]
    theirs = summarize([b for _, b in pairs])["median"]
    return round(ours / theirs, 2)
