"""Barge-in: talking over a long reply, and coughing over it.

The server of this scenario greets every call with a long canned reply
(``bench.wire.speech.GREETING``, ~40 s of speech with natural pauses), so
each call has a reply to talk over at a chosen moment, independent of the LLM.

* **Interruption**: 1.0-3.4 s into the greeting the caller says a short
  question (or, with human speech as the caller voice, an Asterisk prompt:
  ``bench.wire.speech.CallerVoice``). Measured: the onset of the caller's
  speech in the sent audio -> the moment the received agent audio goes
  silent and stays silent for at least 1 s (``AudioTrace.stop_after``;
  natural pauses of 100-400 ms never qualify). The stop time is split into
  its parts from the events' arrival times at the caller: **VAD onset**
  (caller onset -> the server's ``vad`` speaking event: audio path in, the
  VAD's onset windows), **hold** (``vad`` -> the ``interruption`` paused
  event: ``interruption.min_speech_ms`` and the VAD window it lands in), and
  **pause -> silence** (the paused event -> the caller hears silence: audio
  the server had already sent, the pacer's frame, the caller's jitter
  buffer; the event and the audio share the network path, so its latency
  cancels out).
* **Cough**: a 150-300 ms noise burst (``speech.cough``) instead of words.
  It must not stop the reply for longer than the configured window: the
  longest silence overlapping the burst and the window after it must stay
  under ``burst + interruption.false_interruption_timeout_ms + 300 ms``
  (the tolerance covers one natural pause and VAD hangover), the reply must
  resume, and no interruption may be confirmed. Silero VAD does not take
  such noise for speech, so the reply is normally not even paused.
* **Backchannel**: a short voiced sound without words ("Hmm.", "Uh-huh.",
  "Mm-hmm."): the VAD fires, the playout pauses, the transcript holds only
  filler words, and the reply must resume within the same window. This is
  the path that exercises ``false_interruption_timeout_ms``.

Coughs and backchannels are synthetic whatever the caller voice: a run on
human speech asks for none (``coughs=0, backchannels=0``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.wire.audio import LOUD_DBFS, STOP_HOLD_S, AudioTrace
from bench.wire.client import WireCaller
from bench.wire.scenarios.common import BenchContext
from bench.wire.speech import (
    BACKCHANNELS,
    CallerVoice,
    Utterance,
    cough,
    scenario_key,
    utterance,
)
from bench.wire.stats import summarize

COUGH_TOLERANCE_S = 0.3
"""Slack over burst + window: one natural pause of the reply and the VAD's hangover."""
COUGH_MS = (150, 200, 250, 300)


def _phase_times(caller: WireCaller, since: float) -> dict[str, float]:
    """Arrival time of the first interruption event of each phase after ``since``."""
    out: dict[str, float] = {}
    for t, e in caller.of_type("interruption", since):
        out.setdefault(str(e.get("phase")), t)
    return out


def _vad_onset_time(caller: WireCaller, since: float) -> float | None:
    """Arrival time of the first ``vad`` speaking event after ``since``."""
    for t, e in caller.of_type("vad", since):
        if e.get("speaking"):
            return t
    return None


def _stop_parts(
    onset: float, vad: float | None, paused: float | None, stop: float | None
) -> dict[str, float | None]:
    """The stop time's parts in ms (None where a mark is missing)."""

    def part(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 1)

    return {
        "vad_onset_ms": part(onset, vad),
        "hold_ms": part(vad, paused),
        "pause_to_silence_ms": part(paused, stop),
    }


async def _greeted(caller: WireCaller) -> float | None:
    """Wait for the greeting to be heard; returns its first loud frame's arrival."""
    if not await caller.wait_until(lambda: caller.last_loud(LOUD_DBFS) is not None, 20.0):
        return None
    return caller.trace().first_loud(0.0)


async def _interrupt(ctx: BenchContext, i: int, lines: CallerVoice) -> dict[str, Any]:
    phrase, voice = lines.interruption(i)
    delay = 1.0 + (i % 5) * 0.6
    caller = WireCaller(ctx.client, f"{scenario_key('barge', lines.kind)}-{i}")
    out: dict[str, Any] = {"phrase": phrase, "voice": voice, "into_reply_s": delay}
    try:
        await caller.connect()
        heard = await _greeted(caller)
        if heard is None:
            return {**out, "error": "greeting not heard"}
        await asyncio.sleep(max(0.0, heard + delay - time.monotonic()))
        clip = caller.say(utterance(phrase, voice, lead_s=0.0))
        await clip.wait(clip.utterance.duration_s + 10.0)
        onset = clip.speech_start_at
        speaking = caller.trace().loud_times(onset - 0.5, onset).size > 0
        deadline = clip.speech_end_at + 3.0 + STOP_HOLD_S
        await caller.wait_until(
            lambda: caller.trace().stop_after(onset) is not None, deadline - time.monotonic()
        )
        stop = caller.trace().stop_after(onset)
        phases = _phase_times(caller, onset)
        vad_at = _vad_onset_time(caller, onset)
        replies = [e for _, e in caller.of_type("reply") if e.get("interrupted")]
        out.update(
            {
                "agent_was_speaking": speaking,
                "stop_ms": None if stop is None else round(max(0.0, stop.at - onset) * 1000, 1),
                "silent_s": None if stop is None else round(stop.silent_s, 2),
                "in_pause": None if stop is None else stop.in_pause,
                "paused_event_ms": _rel(phases.get("paused"), onset),
                "confirmed_event_ms": _rel(phases.get("confirmed"), onset),
                "stop_parts": _stop_parts(
                    onset, vad_at, phases.get("paused"), None if stop is None else stop.at
                ),
                "heard_text": str(replies[0].get("heard_text", "")) if replies else None,
            }
        )
        if stop is None:
            out["error"] = "agent did not stop"
            out["timeline"] = _timeline(caller, onset)
        return out
    finally:
        await caller.hang_up()
        await ctx.server.wait_idle(ctx.client)


def _timeline(caller: WireCaller, origin: float) -> dict[str, Any]:
    """Loud stretches and events around ``origin`` (seconds relative to it), for diagnosis."""
    loud = caller.trace().loud_times(origin - 1.0)
    runs: list[list[float]] = []
    for t in loud.tolist():
        if runs and t - runs[-1][1] <= 0.1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    events = [
        [round(t - origin, 2), e.get("type"), e.get("phase") or e.get("state") or e.get("text")]
        for t, e in caller.events
        if t >= origin - 1.0 and e.get("type") in ("interruption", "state", "transcript", "reply")
    ]
    return {
        "loud_runs_s": [[round(a - origin, 2), round(b - origin + 0.02, 2)] for a, b in runs[:30]],
        "events": events[:40],
        "last_frame_s": round(caller.trace().end - origin, 2),
    }


def _rel(t: float | None, origin: float) -> float | None:
    return None if t is None else round((t - origin) * 1000, 1)


async def _not_words(ctx: BenchContext, i: int, sound: Utterance) -> dict[str, Any]:
    """A sound without words over the greeting: it may pause the reply, never stop it."""
    burst_s = sound.speech_s
    window_s = ctx.config.interruption.false_interruption_timeout_ms / 1000
    delay = 1.3 + (i % 3) * 0.7
    caller = WireCaller(ctx.client, f"noise-{i}")
    out: dict[str, Any] = {
        "sound": sound.text,
        "voice": sound.voice,
        "burst_ms": round(burst_s * 1000),
        "into_reply_s": delay,
    }
    try:
        await caller.connect()
        heard = await _greeted(caller)
        if heard is None:
            return {**out, "error": "greeting not heard"}
        await asyncio.sleep(max(0.0, heard + delay - time.monotonic()))
        clip = caller.say(sound)
        await clip.wait(clip.utterance.duration_s + 10.0)
        onset, end = clip.speech_start_at, clip.speech_end_at
        await asyncio.sleep(max(0.0, end + window_s + 2.0 - time.monotonic()))
        trace: AudioTrace = caller.trace()
        longest = trace.longest_silence(onset, end + window_s)
        limit = burst_s + window_s + COUGH_TOLERANCE_S
        resumed = trace.first_loud(end + 0.05) is not None
        phases = _phase_times(caller, onset)
        ok = longest <= limit and resumed and "confirmed" not in phases
        out.update(
            {
                "longest_silence_ms": round(longest * 1000),
                "limit_ms": round(limit * 1000),
                "paused": "paused" in phases,
                "resumed_event": "resumed" in phases,
                "confirmed": "confirmed" in phases,
                "heard": [str(e.get("text")) for _, e in caller.of_type("transcript", onset)],
                "audio_resumed": resumed,
                "ok": ok,
            }
        )
        return out
    finally:
        await caller.hang_up()
        await ctx.server.wait_idle(ctx.client)


def _noise_summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "trials": trials,
        "ok": sum(1 for t in trials if t.get("ok")),
        "paused": sum(1 for t in trials if t.get("paused")),
        "false_interruptions": sum(1 for t in trials if t.get("confirmed")),
        "longest_silence_ms": summarize(
            [float(t["longest_silence_ms"]) for t in trials if "longest_silence_ms" in t]
        ),
    }


async def run(
    ctx: BenchContext,
    interruptions: int,
    coughs: int,
    backchannels: int,
    caller_voice: CallerVoice | None = None,
) -> dict[str, Any]:
    """Run the interruption, cough and backchannel trials; returns records and summaries.

    ``caller_voice``: who interrupts (default: the synthetic voices of ``ctx``).
    """
    lines = caller_voice or CallerVoice.synthetic(ctx.voices)
    t0 = time.monotonic()
    trials: list[dict[str, Any]] = []
    for i in range(interruptions):
        trial = await _interrupt(ctx, i, lines)
        trials.append(trial)
        ctx.say(
            f"{scenario_key('barge-in', lines.kind)} {i}: stop after {trial.get('stop_ms')} ms "
            f"{trial.get('error') or ''}"
        )
    coughs_done: list[dict[str, Any]] = []
    for i in range(coughs):
        ms = COUGH_MS[i % len(COUGH_MS)]
        trial = await _not_words(ctx, i, cough(ms / 1000, seed=1000 + i))
        coughs_done.append(trial)
        ctx.say(
            f"cough {i}: {ms} ms burst, longest silence {trial.get('longest_silence_ms')} ms "
            f"(limit {trial.get('limit_ms')}) {'ok' if trial.get('ok') else 'FAIL'}"
        )
    fillers: list[dict[str, Any]] = []
    for i in range(backchannels):
        text = BACKCHANNELS[i % len(BACKCHANNELS)]
        sound = utterance(text, ctx.voices[i % len(ctx.voices)], lead_s=0.0)
        trial = await _not_words(ctx, i, sound)
        fillers.append(trial)
        ctx.say(
            f"backchannel {i} {text!r}: paused {trial.get('paused')}, longest silence "
            f"{trial.get('longest_silence_ms')} ms (limit {trial.get('limit_ms')}) "
            f"{'ok' if trial.get('ok') else 'FAIL'}"
        )
    stops = [float(t["stop_ms"]) for t in trials if t.get("stop_ms") is not None]
    return {
        "caller_voice": lines.kind,
        "interruptions": trials,
        "stop_ms": summarize(stops),
        "stopped": len(stops),
        "not_stopped": sum(1 for t in trials if t.get("stop_ms") is None),
        "paused_event_ms": summarize(
            [float(t["paused_event_ms"]) for t in trials if t.get("paused_event_ms") is not None]
        ),
        "confirmed_event_ms": summarize(
            [
                float(t["confirmed_event_ms"])
                for t in trials
                if t.get("confirmed_event_ms") is not None
            ]
        ),
        "stop_parts_ms": {
            key: summarize(
                [
                    float(v)
                    for t in trials
                    if (v := (t.get("stop_parts") or {}).get(key)) is not None
                ]
            )
            for key in ("vad_onset_ms", "hold_ms", "pause_to_silence_ms")
        },
        "min_speech_ms": ctx.config.interruption.min_speech_ms,
        "coughs": _noise_summary(coughs_done),
        "backchannels": _noise_summary(fillers),
        "false_interruption_timeout_ms": ctx.config.interruption.false_interruption_timeout_ms,
        "seconds": round(time.monotonic() - t0, 1),
    }
