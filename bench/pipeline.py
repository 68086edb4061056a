"""Pipeline benchmark: VAD, LLM, TTS and voice-to-voice in a simulated real-time call.

Run: ``.venv/bin/python -m bench.pipeline [--turns 12] [--json out.json]``.
Prints a table and a JSON object. The STT figures (padded vs short encoder,
word error rate on human speech) come from ``python -m bench.stt_wer``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import numpy as np

from agent.config import AgentConfig
from agent.events import AgentEvent, MetricsEvent, TranscriptEvent
from agent.llm import ChatMessage, stream_text
from agent.runtime import AgentModels
from agent.session import VoiceSession
from agent.vad import WINDOW_SAMPLES
from bench.wire.speech import QUESTIONS
from media.frames import int16_to_float


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def summary(values: list[float]) -> dict[str, float]:
    """min / median / p90 / max, rounded."""
    if not values:
        return {}
    return {
        "n": len(values),
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "p90": round(pct(values, 0.9), 1),
        "max": round(max(values), 1),
    }


def bench_vad(models: AgentModels) -> dict[str, float]:
    """Cost of one 512-sample window, streamed one window per call."""
    from tests.speech import compose

    audio = int16_to_float(compose(0.5, QUESTIONS[0], 0.5, QUESTIONS[1], 0.5))
    stream = models.vad.stream()
    n = audio.size // WINDOW_SAMPLES
    t0 = time.perf_counter()
    for i in range(n):
        stream.process(audio[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES])
    per = (time.perf_counter() - t0) / n
    return {
        "windows": n,
        "ms_per_window": round(per * 1000, 3),
        "realtime_share_pct": round(100 * per / (WINDOW_SAMPLES / 16000), 2),
    }


async def bench_llm(models: AgentModels, config: AgentConfig) -> dict[str, Any]:
    """First-token time and decode speed over the questions."""
    firsts: list[float] = []
    rates: list[float] = []
    gen = config.llm.generation()
    for q in QUESTIONS[:8]:
        msgs = [ChatMessage("system", config.system_prompt), ChatMessage("user", q)]
        t0 = time.perf_counter()
        first: float | None = None
        n = 0
        async for _ in stream_text(models.llm, msgs, gen):
            n += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        if first is not None:
            firsts.append((first - t0) * 1000)
            if n > 1:
                rates.append((n - 1) / (end - first))
    return {"first_token_ms": summary(firsts), "tokens_per_s": summary(rates)}


async def bench_tts(models: AgentModels) -> dict[str, Any]:
    """First-chunk time and real-time factor of the TTS."""
    firsts: list[float] = []
    rtfs: list[float] = []
    for text in QUESTIONS[:8]:
        t0 = time.perf_counter()
        first: float | None = None
        spoken_s = 0.0
        async for chunk in models.tts.stream(text + " " + text):
            first = first or time.perf_counter()
            spoken_s += chunk.duration
        total = time.perf_counter() - t0
        firsts.append(((first or t0) - t0) * 1000)
        if spoken_s > 0:
            rtfs.append(total / spoken_s)
    return {
        "first_chunk_ms": summary(firsts),
        "real_time_factor": {"median": round(statistics.median(rtfs), 3) if rtfs else None},
    }


async def bench_call(models: AgentModels, config: AgentConfig, turns: int) -> dict[str, Any]:
    """A real-time paced call of ``turns`` questions; per-turn session metrics."""
    from agent.cli import run_call
    from tests.speech import compose

    parts: list[str | float] = [0.5]
    for i in range(turns):
        parts += [QUESTIONS[i % len(QUESTIONS)], 7.0]
    caller = compose(*parts)
    metrics: list[MetricsEvent] = []
    finals: list[str] = []

    def sink(event: AgentEvent) -> None:
        if isinstance(event, MetricsEvent):
            metrics.append(event)
        elif isinstance(event, TranscriptEvent) and event.final:
            finals.append(event.text)

    async with VoiceSession(config, models, sinks=[sink]) as session:
        await run_call(session, caller, fast=False)

    def col(name: str) -> list[float]:
        return [v for m in metrics if (v := getattr(m, name)) is not None]

    return {
        "turns_spoken": turns,
        "turns_answered": len(metrics),
        "voice_to_voice_ms": summary(col("voice_to_voice_ms")),
        "end_of_turn_ms": summary(col("end_of_turn_ms")),
        "stt_final_ms": summary(col("stt_final_ms")),
        "stt_wait_ms": summary(col("stt_wait_ms")),
        "llm_first_token_ms": summary(col("llm_first_token_ms")),
        "tts_first_audio_ms": summary(col("tts_first_audio_ms")),
        "speculative_hits": sum(m.speculative_hit for m in metrics),
    }


def table(results: dict[str, Any]) -> str:
    """Plain-text rendering of the nested results."""
    lines: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if (
            isinstance(value, dict)
            and value
            and all(not isinstance(v, dict) for v in value.values())
        ):
            cells = "  ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"{prefix:<42} {cells}")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            lines.append(f"{prefix:<42} {value}")

    walk("", results)
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section and return the results."""
    config = AgentConfig.load(args.config)
    t0 = time.perf_counter()
    models = await asyncio.to_thread(AgentModels.load, config)
    results: dict[str, Any] = {
        "load_s": {**models.load_seconds, "total": round(time.perf_counter() - t0, 2)}
    }
    try:
        results["vad"] = bench_vad(models)
        results["llm"] = await bench_llm(models, config)
        results["tts"] = await bench_tts(models)
        if args.turns:
            results["call"] = await bench_call(models, config, args.turns)
    finally:
        await models.aclose()
    return results


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=12, help="turns of the simulated call")
    parser.add_argument("--config", default=None, help="agent YAML file")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(table(results))
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
