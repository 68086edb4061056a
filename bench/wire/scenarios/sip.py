"""Phone calls over SIP/RTP on loopback: voice-to-voice, barge-in, and a speakerphone's echo.

The server runs with SIP on a free loopback port and RTP on a range of its
own (``ServerProcess(sip=True)``); the caller is ``bench.wire.sip_phone.SipPhone``
(raw SIP over UDP, RTP with the codecs of ``media.sip.codecs``). Everything is
measured on the phone's side exactly as the WebRTC scenarios measure it, with
the same ``AudioTrace`` definitions:

* **Voice-to-voice** (``run_v2v``): the v2v scenario's questions and voices
  in the same order, one SIP call per question (INVITE, the question streamed
  in real time, the reply heard to its end, BYE), with PCMU and, as a second
  row on a fresh server (so its TTS phrase cache does not answer the repeated
  questions), G.722 (16 kHz). Per call: the send time of the question's last speech
  sample -> the arrival of the first loud agent RTP frame. After the BYE the
  session is read back with the admin token (``GET /v1/sessions?transport=sip``
  and its ``/history``): what the server heard, its reply, its own per-stage
  latencies (so the breakdown is the v2v scenario's), and its end reason.
* **Barge-in** (``run_bargein``): on the barge-in scenario's server (the long
  canned greeting), 1.0-3.4 s into the greeting the phone says an
  interruption phrase; caller onset -> the agent's RTP goes silent for at
  least 1 s (``AudioTrace.stop_after``), as over WebRTC. The call stays up
  until the server confirmed (``parley_barge_ins_total``) or resumed the
  reply, so each trial also says whether the stop was a real barge-in.
* **Echo** (``run_echo``): the phone returns the agent's own audio at -15 dB
  and 80 ms delay (``sip_phone.Echo``) from the first packet of the greeting.
  For ``listen_s`` of greeting over that echo, self-interruptions are counted
  from the server's own counters (``parley_barge_ins_total``: confirmed;
  ``parley_false_interruptions_total``: paused and resumed) and on the
  phone's side (a stop of >= 1 s, the longest silence); expected 0. Then the
  phone barges in over the echo, which must still stop the agent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from bench.wire.audio import LOUD_DBFS, STOP_HOLD_S, AudioTrace
from bench.wire.client import CallError
from bench.wire.scenarios.common import BenchContext, Turn, stage_summary
from bench.wire.sip_phone import Echo, SipPhone
from bench.wire.speech import INTERRUPTIONS, QUESTIONS, Utterance, utterance
from bench.wire.stats import summarize

REPLY_LISTEN_S = 40.0
"""Longest wait for a reply to be played out (as in the v2v scenario)."""
REPLY_END_HOLD_S = 1.5
"""Silence after which a reply counts as played out (its natural pauses are <= 400 ms)."""
ECHO = Echo(gain_db=-15.0, delay_ms=80.0)
"""The speakerphone of the issue: the agent's voice returned 15 dB down, 80 ms late."""


# ------------------------------------------------------------------ server side


def _admin(ctx: BenchContext) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.server.admin_token}"}


async def _session(
    ctx: BenchContext, call_id: str, within_s: float = 5.0, *, ended: bool = False
) -> dict[str, Any] | None:
    """The stored session of the SIP call with this Call-ID (admin token).

    ``ended``: wait (up to ``within_s``) until its end reason is stored too.
    """
    deadline = time.monotonic() + within_s
    found: dict[str, Any] | None = None
    while True:
        r = await ctx.client.get(
            "/v1/sessions", params={"transport": "sip", "limit": 20}, headers=_admin(ctx)
        )
        if r.status_code == 200:
            for s in r.json().get("sessions", []):
                if (s.get("attributes") or {}).get("call_id") == call_id:
                    found = s
                    if not ended or s.get("end_reason"):
                        return found
        if time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.2)


async def _history(
    ctx: BenchContext, session_id: str, within_s: float = 5.0
) -> list[dict[str, Any]]:
    """The session's turns, once its reply is stored (or whatever is there after ``within_s``)."""
    deadline = time.monotonic() + within_s
    turns: list[dict[str, Any]] = []
    while True:
        r = await ctx.client.get(f"/v1/sessions/{session_id}/history", headers=_admin(ctx))
        if r.status_code == 200:
            turns = list(r.json().get("turns", []))
            if any(t.get("role") == "assistant" for t in turns):
                return turns
        if time.monotonic() >= deadline:
            return turns
        await asyncio.sleep(0.2)


async def _counters(ctx: BenchContext) -> dict[str, float]:
    """The server's interruption and RTP counters from ``/metrics``."""
    out: dict[str, float] = {}
    r = await ctx.client.get("/metrics")
    if r.status_code != 200:
        return out
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name == "parley_barge_ins_total":
            out["confirmed"] = float(value)
        elif name == "parley_false_interruptions_total":
            out["resumed"] = float(value)
        elif name.startswith('parley_rtp_packets_total{kind="'):
            out["rtp_" + name.split('"')[1]] = float(value)
    return out


def _delta(after: dict[str, float], before: dict[str, float], key: str) -> int | None:
    if key not in after:
        return None
    return round(after[key] - before.get(key, 0.0))


async def _settle(ctx: BenchContext, before: dict[str, float]) -> None:
    """Wait until the barge-in's pause is confirmed or resumed (at most the window + 1 s).

    A stop measured on the wire may still be a pause that the server resumes
    when the words never come; the call stays up until the server decided.
    """
    deadline = time.monotonic() + ctx.config.interruption.false_interruption_timeout_ms / 1000
    while time.monotonic() < deadline + 1.0:
        now = await _counters(ctx)
        if _delta(now, before, "confirmed") or _delta(now, before, "resumed"):
            return
        await asyncio.sleep(0.2)


async def _finish(ctx: BenchContext, phone: SipPhone) -> None:
    await phone.hang_up()
    await ctx.server.wait_idle(ctx.client)


# ------------------------------------------------------------------ voice to voice


async def _ask(phone: SipPhone, u: Utterance, call: str) -> Turn:
    """Speak ``u``, wait for the agent's first loud frame, then hear the reply out."""
    turn = Turn(u.text, u.voice, call, 0, round(u.speech_s, 2))
    clip = phone.say(u)
    if not await clip.wait(u.duration_s + 15.0):
        turn.error = "clip not sent"
        return turn
    end = clip.speech_end_at
    turn.asked_at = end
    if not await phone.wait_until(lambda: phone.loud_since(end, LOUD_DBFS) is not None, 30.0):
        turn.error = "no agent audio in time"
        return turn
    first = phone.loud_since(end, LOUD_DBFS)
    assert first is not None
    turn.v2v_ms = round((first - end) * 1000, 1)

    def over() -> bool:
        return phone.trace().stop_after(first, REPLY_END_HOLD_S, lookback_s=0.0) is not None

    if not await phone.wait_until(over, REPLY_LISTEN_S) and phone.ended_by is None:
        turn.error = "reply not over in time"
    trace = phone.trace()
    stop = trace.stop_after(first, REPLY_END_HOLD_S, lookback_s=0.0)
    span = trace.reply_span(first - 0.001, stop.at if stop else trace.end)
    if span is not None:
        turn.reply_audio_s = round(span[1] - span[0] + 0.02, 2)
        turn.underruns = trace.underruns(span[0], span[1])
    return turn


async def _question(ctx: BenchContext, codec: str, n: int) -> tuple[Turn, SipPhone, str | None]:
    """One call with the ``n``-th question of the v2v scenario; returns its end reason."""
    text = QUESTIONS[n % len(QUESTIONS)]
    voice = ctx.voices[n % len(ctx.voices)]
    label = f"sip-{codec.lower()}-{n}"
    phone = SipPhone(ctx.server.sip_address, codec, label)
    turn = Turn(text, voice, label, 0, 0.0)
    try:
        await phone.dial()
        await asyncio.sleep(0.5)
        turn = await _ask(phone, utterance(text, voice, lead_s=0.4), label)
    except CallError as exc:
        turn.error = str(exc)
    finally:
        await _finish(ctx, phone)
    session = await _session(ctx, phone.call_id)
    if session is None:
        turn.error = turn.error or "session not found"
        return turn, phone, None
    turns = await _history(ctx, str(session["id"]))
    turn.transcript = " | ".join(str(t.get("text", "")) for t in turns if t.get("role") == "user")
    replies = [t for t in turns if t.get("role") == "assistant"]
    if replies:
        reply = replies[0]
        turn.reply = str(reply.get("text") or "")
        turn.server = dict(reply.get("latencies") or {})
        turn.completed = turn.error is None and not reply.get("interrupted")
    ended = await _session(ctx, phone.call_id, 3.0, ended=True) or session
    return turn, phone, ended.get("end_reason")


def _codec_summary(
    turns: list[Turn], phones: list[SipPhone], ends: list[str | None]
) -> dict[str, Any]:
    v2v = [t.v2v_ms for t in turns if t.v2v_ms is not None]
    gaps = [g for t in turns for g in t.underruns]
    setup = [p.setup_s * 1000 for p in phones if p.setup_s is not None]
    return {
        "turns": [t.to_json() for t in turns],
        "questions": len({t.question for t in turns}),
        "voices": sorted({t.voice for t in turns}),
        "v2v_ms": summarize(v2v),
        "stages": stage_summary(turns),
        "unanswered": sum(1 for t in turns if t.v2v_ms is None),
        "completed": sum(1 for t in turns if t.completed),
        "reply_audio_s": round(sum(t.reply_audio_s for t in turns), 1),
        "underruns": len(gaps),
        "underrun_ms": round(sum(g.seconds for g in gaps) * 1000),
        "setup_ms": summarize(setup),
        "ended_by_bye": sum(1 for e in ends if e == "caller hung up (BYE)"),
        "end_reasons": sorted({str(e) for e in ends}),
        "rtp": {
            "received": sum(p.rtp_counters.packets for p in phones),
            "sent": sum(p.rtp_counters.sent for p in phones),
            "lost": sum(p.rtp_counters.lost for p in phones),
            "reordered": sum(p.rtp_counters.reordered for p in phones),
            "max_gap_ms": round(max((p.rtp_counters.max_gap_ms for p in phones), default=0), 1),
        },
    }


async def run_v2v(ctx: BenchContext, codec: str, questions: int) -> dict[str, Any]:
    """The v2v scenario's first ``questions`` questions, one ``codec`` call each."""
    t0 = time.monotonic()
    before = await _counters(ctx)
    turns: list[Turn] = []
    phones: list[SipPhone] = []
    ends: list[str | None] = []
    for n in range(questions):
        turn, phone, end = await _question(ctx, codec, n)
        turns.append(turn)
        phones.append(phone)
        ends.append(end)
        ctx.say(
            f"sip {codec} call {n}: {turn.v2v_ms} ms ({turn.voice}; heard "
            f"{turn.transcript!r}; {end}){' ' + turn.error if turn.error else ''}"
        )
        await asyncio.sleep(0.3)
    t1 = time.monotonic()
    after = await _counters(ctx)
    return {
        **_codec_summary(turns, phones, ends),
        "codec": codec,
        "server_rtp": {
            k.removeprefix("rtp_"): _delta(after, before, k) for k in after if k.startswith("rtp_")
        },
        "server": ctx.monitor.window(t0, t1),
        "seconds": round(t1 - t0, 1),
    }


# ------------------------------------------------------------------ barge-in and echo


async def _greeted(phone: SipPhone) -> float | None:
    """Wait for the greeting to be heard; returns its first loud frame's arrival."""
    if not await phone.wait_until(lambda: phone.last_loud(LOUD_DBFS) is not None, 20.0):
        return None
    return phone.trace().first_loud(0.0)


async def _barge(phone: SipPhone, phrase: str, voice: str) -> dict[str, Any]:
    """Say ``phrase`` now; the caller's onset -> the agent's stop, as the bargein scenario."""
    clip = phone.say(utterance(phrase, voice, lead_s=0.0))
    await clip.wait(clip.utterance.duration_s + 10.0)
    onset = clip.speech_start_at
    speaking = phone.trace().loud_times(onset - 0.5, onset).size > 0
    deadline = clip.speech_end_at + 3.0 + STOP_HOLD_S
    await phone.wait_until(
        lambda: phone.trace().stop_after(onset) is not None, deadline - time.monotonic()
    )
    trace = phone.trace()
    stop = trace.stop_after(onset)
    out: dict[str, Any] = {
        "speech_s": round(clip.speech_end_at - onset, 2),
        "agent_was_speaking": speaking,
        "stop_ms": None if stop is None else round(max(0.0, stop.at - onset) * 1000, 1),
        "silent_s": None if stop is None else round(stop.silent_s, 2),
        "in_pause": None if stop is None else stop.in_pause,
        "loud_runs_s": _loud_runs(trace, onset),
    }
    if stop is None:
        out["error"] = "agent did not stop"
    return out


def _loud_runs(trace: AudioTrace, origin: float) -> list[list[float]]:
    """Stretches of loud agent audio from 1 s before ``origin`` (seconds relative to it)."""
    runs: list[list[float]] = []
    for t in trace.loud_times(origin - 1.0).tolist():
        if runs and t - runs[-1][1] <= 0.1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return [[round(a - origin, 2), round(b - origin + 0.02, 2)] for a, b in runs[:30]]


async def _interrupt(ctx: BenchContext, i: int) -> dict[str, Any]:
    phrase = INTERRUPTIONS[i % len(INTERRUPTIONS)]
    voice = ctx.voices[i % len(ctx.voices)]
    delay = 1.0 + (i % 5) * 0.6
    out: dict[str, Any] = {"phrase": phrase, "voice": voice, "into_reply_s": delay}
    before = await _counters(ctx)
    phone = SipPhone(ctx.server.sip_address, "PCMU", f"sip-barge-{i}")
    try:
        await phone.dial()
        heard = await _greeted(phone)
        if heard is None:
            return {**out, "error": "greeting not heard"}
        await asyncio.sleep(max(0.0, heard + delay - time.monotonic()))
        out.update(await _barge(phone, phrase, voice))
        await _settle(ctx, before)
    except CallError as exc:
        out["error"] = str(exc)
    finally:
        await _finish(ctx, phone)
    after = await _counters(ctx)
    out["confirmed"] = _delta(after, before, "confirmed")
    out["resumed"] = _delta(after, before, "resumed")
    return out


def _stops(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Stop times of the trials where the agent was speaking when the caller started."""
    valid = [t for t in trials if t.get("agent_was_speaking")]
    stops = [float(t["stop_ms"]) for t in valid if t.get("stop_ms") is not None]
    return {
        "stop_ms": summarize(stops),
        "stopped": len(stops),
        "not_stopped": sum(1 for t in valid if t.get("stop_ms") is None),
        "agent_not_speaking": len(trials) - len(valid),
        "confirmed": sum(1 for t in valid if t.get("confirmed")),
    }


async def run_bargein(ctx: BenchContext, interruptions: int) -> dict[str, Any]:
    """Talk over the greeting ``interruptions`` times (PCMU)."""
    t0 = time.monotonic()
    trials: list[dict[str, Any]] = []
    for i in range(interruptions):
        trial = await _interrupt(ctx, i)
        trials.append(trial)
        ctx.say(
            f"sip barge-in {i}: stop after {trial.get('stop_ms')} ms {trial.get('error') or ''}"
        )
    return {
        "interruptions": trials,
        **_stops(trials),
        "codec": "PCMU",
        "seconds": round(time.monotonic() - t0, 1),
    }


async def _echo_trial(ctx: BenchContext, i: int, listen_s: float) -> dict[str, Any]:
    phrase = INTERRUPTIONS[i % len(INTERRUPTIONS)]
    voice = ctx.voices[i % len(ctx.voices)]
    out: dict[str, Any] = {"echo": asdict(ECHO), "listen_s": listen_s, "phrase": phrase}
    before = mid = await _counters(ctx)
    phone = SipPhone(ctx.server.sip_address, "PCMU", f"sip-echo-{i}")
    phone.echo = ECHO  # a speakerphone from the first packet on
    try:
        await phone.dial()
        heard = await _greeted(phone)
        if heard is None:
            return {**out, "error": "greeting not heard"}
        end = heard + listen_s
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        mid = await _counters(ctx)
        trace = phone.trace()
        stop = trace.stop_after(heard, lookback_s=0.0)
        self_stop = stop is not None and stop.at < end
        out.update(
            {
                "greeting_heard_s": round(trace.seconds_between(heard, end), 1),
                "self_interruptions": _delta(mid, before, "confirmed"),
                "self_pauses": _delta(mid, before, "resumed"),
                "stopped_itself": self_stop,
                "longest_silence_ms": round(trace.longest_silence(heard, end) * 1000),
            }
        )
        out["barge_in"] = await _barge(phone, phrase, voice)
        await _settle(ctx, mid)
    except CallError as exc:
        out["error"] = str(exc)
    finally:
        await _finish(ctx, phone)
    after = await _counters(ctx)
    if "barge_in" in out:
        out["barge_in"]["confirmed"] = _delta(after, mid, "confirmed")
        out["barge_in"]["resumed"] = _delta(after, mid, "resumed")
    return out


async def run_echo(ctx: BenchContext, trials: int, listen_s: float) -> dict[str, Any]:
    """``trials`` greetings heard over the echo for ``listen_s``, each ended by a barge-in."""
    t0 = time.monotonic()
    done: list[dict[str, Any]] = []
    for i in range(trials):
        trial = await _echo_trial(ctx, i, listen_s)
        done.append(trial)
        b = trial.get("barge_in", {})
        ctx.say(
            f"sip echo {i}: self-interruptions {trial.get('self_interruptions')}, pauses "
            f"{trial.get('self_pauses')}, longest silence {trial.get('longest_silence_ms')} ms; "
            f"barge-in over the echo: stop after {b.get('stop_ms')} ms "
            f"{trial.get('error') or b.get('error') or ''}"
        )

    def total(key: str) -> int | None:
        values = [t[key] for t in done if t.get(key) is not None]
        return sum(values) if values else None

    # a barge-in after the agent stopped itself tests nothing: left out of the summary
    barges = [t["barge_in"] for t in done if "barge_in" in t and not t.get("stopped_itself")]
    return {
        "trials": done,
        "echo": asdict(ECHO),
        "greeting_heard_s": round(sum(float(t.get("greeting_heard_s", 0.0)) for t in done), 1),
        "self_interruptions": total("self_interruptions"),
        "self_pauses": total("self_pauses"),
        "stopped_itself": sum(1 for t in done if t.get("stopped_itself")),
        "longest_silence_ms": max(
            (int(t["longest_silence_ms"]) for t in done if "longest_silence_ms" in t), default=None
        ),
        "barge_in": {
            **_stops(barges),
            "after_self_stop": sum(1 for t in done if "barge_in" in t and t.get("stopped_itself")),
        },
        "seconds": round(time.monotonic() - t0, 1),
    }
