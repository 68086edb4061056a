"""The results document written out: JSON, a Markdown report and the plots."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.wire import plots
from bench.wire.audio import LOUD_DBFS, STOP_HOLD_S, UNDERRUN_MIN_S
from bench.wire.scenarios import cloud
from bench.wire.scenarios.common import STAGES
from bench.wire.speech import CALLER_VOICES, scenario_key


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return f"{value}{unit}"


def _dist(s: dict[str, Any] | None, unit: str = " ms") -> str:
    """'min / median / p90 / p99 / max (n)' of a summary."""
    if not s:
        return "-"
    keys = ("min", "median", "p90", "p99", "max")
    return " / ".join(_fmt(s.get(k)) for k in keys) + f"{unit} (n={s.get('n')})"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def _err(sc: dict[str, Any], name: str) -> str | None:
    r = sc.get(name)
    return str(r["error"]) if isinstance(r, dict) and "error" in r else None


def spoken_on(sc: dict[str, Any], kind: str) -> str:
    """What a figure of caller voice ``kind`` says it was measured on: nothing for the
    synthetic voices in a run without human speech (the report as it always was),
    else " on synthetic voices" / " on human speech"."""
    if kind == "synthetic" and not any(k in sc for k in ("v2v-human", "bargein-human")):
        return ""
    return " on human speech" if kind == "human" else f" on {kind} voices"


def _v2v_rows(sc: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    """The v2v scenario's rows for caller voice ``kind``."""
    key = scenario_key("v2v", kind)
    on = spoken_on(sc, kind)
    rows: list[tuple[str, str]] = []
    if (v := sc.get(key)) and "v2v_ms" in v:
        asked = (
            f"{v['questions']} questions, {len(v['voices'])} voices"
            if kind == "synthetic"
            else f"{v['questions']} Asterisk prompts, one speaker"
        )
        rows.append(
            (
                f"voice-to-voice{on}, 1 call ({asked}): min / median / p90 / p99 / max",
                _dist(v["v2v_ms"]),
            )
        )
        rows += _stage_rows(v.get("stages", {}))
        rows.append(("  unanswered turns", _fmt(v.get("unanswered"))))
        rows.append(
            (
                "  underruns in single-call replies",
                f"{v.get('underruns')} ({v.get('underrun_ms')} ms over {v.get('reply_audio_s')} s)",
            )
        )
    elif e := _err(sc, key):
        rows.append((f"voice-to-voice{on}", f"error: {e}"))
    return rows


def _bargein_rows(sc: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    """The barge-in scenario's rows for caller voice ``kind`` (noise rows where it ran any)."""
    key = scenario_key("bargein", kind)
    on = spoken_on(sc, kind)
    rows: list[tuple[str, str]] = []
    if (b := sc.get(key)) and "stop_ms" in b:
        rows.append(
            (
                f"barge-in{on}: caller onset -> agent silent >= {STOP_HOLD_S:.0f} s: "
                "min / median / p90 / p99 / max",
                _dist(b["stop_ms"]),
            )
        )
        parts = b.get("stop_parts_ms") or {}
        if parts:
            rows.append(
                (
                    f"  stop parts (median / p90), interruption.min_speech_ms "
                    f"{b.get('min_speech_ms')}: VAD onset; hold to pause; pause -> silence "
                    "at the caller",
                    "; ".join(
                        f"{_fmt((parts.get(k) or {}).get('median'))} / "
                        f"{_fmt((parts.get(k) or {}).get('p90'))} ms"
                        for k in ("vad_onset_ms", "hold_ms", "pause_to_silence_ms")
                    ),
                )
            )
        rows.append(("  interruptions that did not stop the agent", _fmt(b.get("not_stopped"))))
        window = b["false_interruption_timeout_ms"]
        for noise, label in (("coughs", "cough bursts"), ("backchannels", "backchannels (hmm)")):
            n = b.get(noise, {})
            if kind != "synthetic" and not n.get("trials"):
                continue  # synthetic sounds: measured with the synthetic voices only
            rows.append(
                (
                    f"{label} within burst + {window} ms window",
                    f"{n.get('ok')}/{len(n.get('trials', []))} ok; paused {n.get('paused')}, "
                    f"false interruptions {n.get('false_interruptions')}; longest silence "
                    f"max {_fmt(n.get('longest_silence_ms', {}).get('max'))} ms",
                )
            )
    elif e := _err(sc, key):
        rows.append((f"barge-in{on}", f"error: {e}"))
    return rows


def figures(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline figures: (figure, value) rows."""
    sc = doc["scenarios"]
    rows: list[tuple[str, str]] = []
    for role, s in doc.get("servers", {}).items():
        rows.append((f"server time to ready ({role} server)", _fmt(s.get("ready_s"), " s")))
    rows += _v2v_rows(sc, "synthetic")
    rows += _pipecat_rows(sc)  # asked the synthetic voices' questions
    rows += _v2v_rows(sc, "human")
    for kind in CALLER_VOICES:
        rows += _bargein_rows(sc, kind)
    rows += _sip_figures(sc.get("sip"))
    if (t := sc.get("turns")) and "cut_off" in t:
        pauses = sorted(x["pause_ms"] for x in t["trials"])
        rows.append(
            (
                f"turn-taking: cut off early ({pauses[0]}-{pauses[-1]} ms pauses, "
                f"end_of_turn_silence_ms {t['end_of_turn_silence_ms']})",
                f"{t['cut_off']}/{t['questions']} (missed {t['missed']})",
            )
        )
    elif e := _err(sc, "turns"):
        rows.append(("turn-taking", f"error: {e}"))
    if (c := sc.get("concurrency")) and "levels" in c:
        for lv in c["levels"]:
            m = lv["v2v_ms"]
            rows.append(
                (
                    f"concurrency {lv['calls']}: v2v median / p90; answered; underruns; "
                    "CPU; RSS peak",
                    f"{_fmt(m.get('median'))} / {_fmt(m.get('p90'))} ms; "
                    f"{lv['turns_answered']}/{lv['turns_asked']}; {lv['underruns']}; "
                    f"{_fmt(lv['server_cpu_pct'])} %; {_fmt(lv['server_rss_peak_mb'])} MB",
                )
            )
        per = c.get("rss_per_call_mb", {})
        rows.append(("RSS per added call (slope of peak RSS)", _fmt(per.get("peak_slope"), " MB")))
    elif e := _err(sc, "concurrency"):
        rows.append(("concurrency", f"error: {e}"))
    rows += _cloud_figures(sc.get("cloud"), doc.get("vendors"))
    if (s := sc.get("soak")) and "before" in s:
        b0, b1 = s["before"], s["after"]
        rows.append(
            (
                f"soak ({s['calls']} calls): RSS / fds / threads before -> after",
                f"{b0['rss_mb']} -> {b1['rss_mb']} MB / {b0['fds']} -> {b1['fds']} / "
                f"{b0['threads']} -> {b1['threads']}; failures {len(s['failures'])}",
            )
        )
        if (r := s.get("rss_mb")) and (f := s.get("fuzz")):
            rows.append(
                (
                    "soak: fuzzing pass (requests, 5xx, unanswered)",
                    f"{f['requests']}, {f['server_errors']}, {f['unanswered']}",
                )
            )
            rows.append(
                (
                    "soak: RSS start -> after calls -> after fuzz -> settled",
                    f"{r['start']} -> {r['after_calls']} -> {r['after_fuzz']} -> {r['settled']} MB "
                    f"({s['rss_growth_pct']:+} %; within 5 %: "
                    f"{'yes' if s['rss_back_within_5pct'] else 'no'}; from the first call's "
                    f"{r['after_first_call']} MB: {s['rss_growth_after_warm_pct']:+} %)",
                )
            )
    elif e := _err(sc, "soak"):
        rows.append(("soak", f"error: {e}"))
    if (i := sc.get("install")) is not None:
        if "setup_s" in i:
            rows.append(
                (
                    "install: scripts/setup.sh in a fresh clone (warm pip cache)",
                    f"{_fmt(i.get('setup_s'), ' s')} ({_fmt(i.get('venv_mb'))} MB venv)",
                )
            )
            rows.append(
                (
                    "install: fresh server time to ready (first / warm start)",
                    f"{_fmt(i.get('ready_first_s'))} / {_fmt(i.get('ready_warm_s'))} s",
                )
            )
        if "error" in i:
            rows.append(("install", f"error: {i['error']}"))
    return rows


def _injected(lat: dict[str, Any]) -> str:
    """The loopback vendors' injected latencies in words."""
    return (
        f"LLM first token {lat['llm_first_token_s'] * 1000:.0f} ms then "
        f"{lat['llm_tokens_per_s']:.0f} tokens/s, Whisper {lat['stt_latency_s'] * 1000:.0f} ms "
        f"per request, TTS first audio {lat['tts_first_audio_s'] * 1000:.0f} ms"
    )


def _served(served: dict[str, dict[str, int]] | None) -> str:
    """'stt groq 20; llm groq 20; tts elevenlabs 19, local 1' of a served-by count."""
    if not served:
        return "-"
    return "; ".join(
        f"{stage} " + ", ".join(f"{name} {n}" for name, n in counts.items())
        for stage, counts in served.items()
        if counts
    )


def _stage_rows(stages: dict[str, Any]) -> list[tuple[str, str]]:
    """One row per voice-to-voice stage: its median and p90."""
    rows = []
    for key, label in STAGES:
        s = stages.get(key, {})
        rows.append(
            (
                f"  stage: {label} (median / p90)",
                f"{_fmt(s.get('median'))} / {_fmt(s.get('p90'))} ms",
            )
        )
        if key == "network_ms":
            for part, way in (
                ("network_in_ms", "in: caller -> the agent's VAD"),
                ("network_out_ms", "out: agent playout -> caller, with the voice's lead-in"),
            ):
                if p := stages.get(part):
                    rows.append(
                        (
                            f"    of which {way} (median / p90)",
                            f"{_fmt(p.get('median'))} / {_fmt(p.get('p90'))} ms",
                        )
                    )
    hidden = stages.get("preemptive_hidden_ms") or {}
    if hidden.get("n"):
        rows.append(
            (
                "  preemptive replies: LLM + TTS time hidden behind the end-of-turn wait, "
                "not in the stages above (median / p90)",
                f"{_fmt(hidden.get('median'))} / {_fmt(hidden.get('p90'))} ms "
                f"(n={hidden.get('n')})",
            )
        )
    return rows


def _cloud_share(lv: dict[str, Any]) -> str:
    """Turns of a level served by the cloud provider of each stage: 'stt/llm/tts of n'."""
    served = lv.get("served_by") or {}
    providers = {"stt": "groq", "llm": "groq", "tts": "elevenlabs"}
    parts = [str((served.get(stage) or {}).get(name, 0)) for stage, name in providers.items()]
    return f"{'/'.join(parts)} of {lv['turns_answered']}"


def _cloud_figures(
    c: dict[str, Any] | None, vendors: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """Headline rows of the cloud scenario (loopback Groq and ElevenLabs)."""
    if not c:
        return []
    if "error" in c:
        return [("cloud providers", f"error: {c['error']}")]
    v = c["v2v"]
    partials = "on" if c["partials"] else "off"
    rows = [
        (
            f"cloud providers (loopback vendors: {_injected(c['latencies'])}; local partials "
            f"{partials}): voice-to-voice, 1 call: min / median / p90 / p99 / max",
            _dist(v["v2v_ms"]),
        )
    ]
    rows += _stage_rows(v.get("stages", {}))
    rem = v.get("remainder_ms", {})
    rows.append(
        (
            "  remainder: v2v minus end-of-turn silence and injected LLM/TTS latency "
            "(median / p90)",
            f"{_fmt(rem.get('median'))} / {_fmt(rem.get('p90'))} ms",
        )
    )
    rows.append(
        (
            "  unanswered; underruns; turns served by",
            f"{v.get('unanswered')}; {v.get('underruns')} ({v.get('underrun_ms')} ms over "
            f"{v.get('reply_audio_s')} s); {_served(v.get('served_by'))}",
        )
    )
    for lv in c["levels"]:
        m = lv["v2v_ms"]
        per = lv.get("cpu_per_call_pct", {})
        rows.append(
            (
                f"cloud concurrency {lv['calls']}: v2v median / p90; answered; underruns; "
                "server CPU (per call); vendors CPU",
                f"{_fmt(m.get('median'))} / {_fmt(m.get('p90'))} ms; "
                f"{lv['turns_answered']}/{lv['turns_asked']}; {lv['underruns']}; "
                f"{_fmt(lv['server_cpu_pct'])} % ({_fmt(per.get('total'))} %); "
                f"{_fmt(lv.get('vendors_cpu_pct'))} %",
            )
        )
    target = c["target"]
    held = c.get("holds_calls")
    rows.append(
        (
            f"cloud: most simultaneous calls with every question answered, no underrun and "
            f"v2v p90 < {target['v2v_p90_ms'] / 1000:g} s (target {target['calls']})",
            "none of the levels run" if held is None else str(held),
        )
    )
    if vendors and vendors.get("served"):
        rows.append(
            (
                "  requests the loopback vendors answered",
                ", ".join(f"{k} {n}" for k, n in vendors["served"].items()),
            )
        )
    return rows


CLOUD_THREAD_COLUMNS = (*cloud.THREADS, (cloud.OTHER, "other"), ("total", "total"))
"""Columns of the CPU-per-call table: (key of ``cpu_per_call_pct``, header)."""


def _cloud_section(doc: dict[str, Any]) -> list[str]:
    """The cloud scenario's tables: single-call stages, levels, CPU per call by stage."""
    c = doc["scenarios"].get("cloud") or {}
    if "v2v" not in c:
        return []
    lat = c["latencies"]
    v = c["v2v"]
    served = (doc.get("vendors") or {}).get("served") or {}
    partials = (
        "on: partial transcripts from the local Whisper, finals from Groq"
        if c["partials"]
        else "off: finals only, from Groq; barge-in is confirmed by VAD and the final"
    )
    lines = [
        "## Cloud providers (loopback Groq and ElevenLabs)",
        "",
        "The server ran the provider chains `groq,local` (STT), `groq,local` (LLM) and "
        "`elevenlabs,local` (TTS) against loopback vendors in a process of their own "
        f"(`bench.wire.vendors`): {_injected(lat)}, then "
        f"{lat['tts_realtime_factor']:g}x real time in messages of {lat['tts_chunk_chars']} "
        "characters (60 ms of audio per character). The LLM answers each question with a "
        "canned one- or two-sentence reply; Whisper answers the benchmark's questions in turn "
        f"(it cannot transcribe). `stt.partials` {partials}. The vendors, the callers and "
        "the server share this machine's cores"
        + (
            f"; the vendors answered {', '.join(f'{k} {n}' for k, n in served.items())}."
            if served
            else "."
        ),
        "",
        f"One call at a time ({v['questions']} questions, "
        f"{v['v2v_ms'].get('n', 0)} answered): the stages of the voice-to-voice time next to "
        "what the vendors inject. The remainder is the caller's voice-to-voice minus the "
        f"end-of-turn silence ({c['end_of_turn_silence_ms']:.0f} ms) and the injected LLM first "
        "token and TTS first audio: the server's own overhead plus the WebRTC path.",
        "",
    ]
    st = v.get("stages", {})
    injected = {
        "stt_wait_ms": f"{lat['stt_latency_s'] * 1000:.0f} (runs during the silence when the "
        "speculative final hits)",
        "llm_first_token_ms": f"{lat['llm_first_token_s'] * 1000:.0f}",
        "tts_first_audio_ms": f"{lat['tts_first_audio_s'] * 1000:.0f} after the first "
        "generation's text",
    }
    rows: list[list[Any]] = [
        [label, st.get(key, {}).get("median"), st.get(key, {}).get("p90"), injected.get(key, "-")]
        for key, label in STAGES
    ]
    rows.append(
        [
            "caller's voice-to-voice",
            v["v2v_ms"].get("median"),
            v["v2v_ms"].get("p90"),
            f"{(lat['llm_first_token_s'] + lat['tts_first_audio_s']) * 1000:.0f} in all",
        ]
    )
    rem = v.get("remainder_ms", {})
    rows.append(
        ["remainder (server overhead + WebRTC path)", rem.get("median"), rem.get("p90"), "-"]
    )
    lines += _table(("stage", "median ms", "p90 ms", "injected by the vendors, ms"), rows)
    lines += [
        "",
        f"Simultaneous calls: each caller asks, listens to the whole reply, waits 0.7 s and "
        f"asks again. A level holds when every call connected, every question was answered, "
        f"no reply underran and the voice-to-voice p90 stayed under "
        f"{c['target']['v2v_p90_ms']:.0f} ms. CPU is % of one core (200 % = both cores); "
        "per call = the server's CPU over the level divided by the calls; other work = the "
        "machine's busy time (/proc/stat) minus the server, vendors and callers; served by "
        "cloud = turns whose STT/LLM/TTS the cloud provider served (the rest fell back to "
        "local).",
        "",
    ]
    lines += _table(
        (
            "calls",
            "answered/asked",
            "v2v median ms",
            "v2v p90 ms",
            "v2v max ms",
            "underruns (starved/stalled)",
            "remainder median ms",
            "server CPU %",
            "per call %",
            "vendors CPU %",
            "callers CPU %",
            "other work CPU %",
            "RSS peak MB",
            "served by cloud",
            "holds",
        ),
        (
            (
                lv["calls"],
                f"{lv['turns_answered']}/{lv['turns_asked']}",
                lv["v2v_ms"].get("median"),
                lv["v2v_ms"].get("p90"),
                lv["v2v_ms"].get("max"),
                f"{lv['underruns']} ({lv['underruns_starved']}/{lv['underruns_stalled']})",
                lv.get("remainder_ms", {}).get("median"),
                lv["server_cpu_pct"],
                lv.get("cpu_per_call_pct", {}).get("total"),
                lv.get("vendors_cpu_pct"),
                lv["client_cpu_pct"],
                lv.get("others_cpu_pct"),
                lv["server_rss_peak_mb"],
                _cloud_share(lv),
                "yes" if lv.get("holds") else "no",
            )
            for lv in c["levels"]
        ),
    )
    held = c.get("holds_calls")
    lines += [
        "",
        f"Held: {'no level' if held is None else f'{held} simultaneous calls'} "
        f"(target {c['target']['calls']}).",
        "",
        "Server CPU per call by stage (% of one core per call: each server thread's CPU over "
        "the level, from /proc, divided by the calls). The event loop carries WebRTC (ICE, "
        "DTLS, SRTP, RTP), the sessions, the playout and the vendors' HTTP and WebSocket "
        "clients; the executor encodes the agent's Opus; the audio decoder decodes the "
        "callers'; the local Whisper's partial transcripts compute in CTranslate2's native "
        "threads (its STT worker thread mostly waits on them); the local LLM and TTS only run "
        "on a fallback:",
        "",
    ]
    lines += _table(
        ("calls", *(label for _, label in CLOUD_THREAD_COLUMNS)),
        (
            (lv["calls"], *(lv.get("cpu_per_call_pct", {}).get(k) for k, _ in CLOUD_THREAD_COLUMNS))
            for lv in c["levels"]
        ),
    )
    lines += [
        "",
        "Stages by level (median / p90 ms), with the `/health` round trip through the "
        "server's event loop and the lateness of the callers' own 20 ms timers (a late server "
        "loop shows in the first, a starved caller process in the second):",
        "",
    ]

    def pair(s: dict[str, Any] | None, a: str = "median", b: str = "p90") -> str:
        return f"{_fmt(s.get(a))} / {_fmt(s.get(b))}" if s else "-"

    lines += _table(
        (
            "calls",
            *(label for _, label in STAGES),
            "/health median / p90",
            "callers' timer lag p99 / max",
        ),
        (
            (
                lv["calls"],
                *(pair((lv.get("stages") or {}).get(key)) for key, _ in STAGES),
                pair(lv.get("server_health_ms")),
                pair(lv.get("client_timer_lag_ms"), "p99", "max"),
            )
            for lv in c["levels"]
        ),
    )
    return [*lines, ""]


SIP_CODECS = (("PCMU", "SIP PCMU"), ("G722", "SIP G.722"))


def _sip_figures(sip: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Headline rows of the SIP scenario (phone calls over SIP/RTP)."""
    if not sip:
        return []
    if "error" in sip:
        return [("SIP", f"error: {sip['error']}")]
    rows: list[tuple[str, str]] = []
    v = sip.get("v2v", {})
    for codec, label in SIP_CODECS:
        r = v.get(codec)
        if not r:
            continue
        if "error" in r:
            rows.append((f"{label} voice-to-voice", f"error: {r['error']}"))
            continue
        rows.append(
            (
                f"{label} voice-to-voice ({r['questions']} questions, {len(r['voices'])} "
                "voices, one call each): min / median / p90 / p99 / max",
                _dist(r["v2v_ms"]),
            )
        )
        setup, rtp = r.get("setup_ms", {}), r.get("rtp", {})
        rows.append(
            (
                "  unanswered; replies heard out; calls ended by the phone's BYE",
                f"{r['unanswered']}; {r['completed']}/{len(r['turns'])}; "
                f"{r['ended_by_bye']}/{len(r['turns'])}",
            )
        )
        rows.append(
            (
                "  INVITE -> 200 OK (median / max); agent RTP lost / reordered; "
                "largest arrival gap",
                f"{_fmt(setup.get('median'))} / {_fmt(setup.get('max'))} ms; "
                f"{rtp.get('lost')} / {rtp.get('reordered')} of {rtp.get('received')}; "
                f"{_fmt(rtp.get('max_gap_ms'))} ms",
            )
        )
        rows.append(
            (
                "  underruns in replies",
                f"{r.get('underruns')} ({r.get('underrun_ms')} ms over {r.get('reply_audio_s')} s)",
            )
        )
    b = sip.get("bargein", {})
    if "stop_ms" in b:
        rows.append(
            (
                f"SIP barge-in ({b.get('codec')}): caller onset -> agent RTP silent >= "
                f"{STOP_HOLD_S:.0f} s: min / median / p90 / p99 / max",
                _dist(b["stop_ms"]),
            )
        )
        rows.append(
            (
                "  interruptions that did not stop the agent; confirmed by the server",
                f"{_fmt(b.get('not_stopped'))}; {_fmt(b.get('confirmed'))}/"
                f"{len(b.get('interruptions', []))}",
            )
        )
    elif "error" in b:
        rows.append(("SIP barge-in", f"error: {b['error']}"))
    e = sip.get("echo", {})
    if "trials" in e:
        echo = e.get("echo", {})
        rows.append(
            (
                f"SIP echo ({_fmt(echo.get('gain_db'))} dB, {_fmt(echo.get('delay_ms'))} ms): "
                f"self-interruptions over {e['greeting_heard_s']} s of greeting in "
                f"{len(e['trials'])} calls (confirmed; paused and resumed; greeting stopped)",
                f"{_fmt(e.get('self_interruptions'))}; {_fmt(e.get('self_pauses'))}; "
                f"{e.get('stopped_itself')}/{len(e['trials'])}; longest silence "
                f"{_fmt(e.get('longest_silence_ms'))} ms",
            )
        )
        eb = e.get("barge_in", {})
        rows.append(
            (
                "  barge-in over the echo: stop min / median / p90 / p99 / max; not stopped; "
                "left out (the agent had already stopped itself / was silent)",
                f"{_dist(eb.get('stop_ms'))}; {eb.get('not_stopped')}; "
                f"{eb.get('after_self_stop')} / {eb.get('agent_not_speaking')}",
            )
        )
    elif "error" in e:
        rows.append(("SIP echo", f"error: {e['error']}"))
    return rows


def _four(s: dict[str, Any] | None) -> str:
    """'min / median / p90 / max (n)' of a summary."""
    if not s:
        return "-"
    keys = ("min", "median", "p90", "max")
    return " / ".join(_fmt(s.get(k)) for k in keys) + f" (n={s.get('n')})"


def _side_by_side(sc: dict[str, Any]) -> list[str]:
    """The SIP rows next to the WebRTC rows (``-``: not run)."""
    sip = sc.get("sip") or {}
    codecs = sip.get("v2v") or {}
    web = sc.get("v2v") or {}
    wb = sc.get("bargein") or {}
    sb = sip.get("bargein") or {}
    echo = sip.get("echo") or {}
    cols = [web, *(codecs.get(c) or {} for c, _ in SIP_CODECS)]

    def stage(r: dict[str, Any], key: str) -> str:
        st = (r.get("stages") or {}).get(key) or {}
        return f"{_fmt(st.get('median'))} / {_fmt(st.get('p90'))}" if st else "-"

    rows: list[list[Any]] = [
        ["voice-to-voice ms: min / median / p90 / max (n)", *(_four(r.get("v2v_ms")) for r in cols)]
    ]
    rows += [
        [f"  {label} ms (median / p90)", *(stage(r, key) for r in cols)] for key, label in STAGES
    ]
    rows.append(["  unanswered", *(r.get("unanswered", "-") for r in cols)])
    rows.append(
        [
            "  underruns in replies (ms)",
            *(
                f"{r['underruns']} ({r.get('underrun_ms')})" if "underruns" in r else "-"
                for r in cols
            ),
        ]
    )
    rows.append(
        [
            f"barge-in: onset -> silent >= {STOP_HOLD_S:.0f} s, ms: min / median / p90 / max (n)",
            _four(wb.get("stop_ms")),
            _four(sb.get("stop_ms")),
            "-",
        ]
    )
    rows.append(
        [
            "  interruptions that did not stop the agent",
            wb.get("not_stopped", "-"),
            sb.get("not_stopped", "-"),
            "-",
        ]
    )
    rows.append(
        [
            "echo -15 dB / 80 ms: self-interruptions (confirmed; paused)",
            "- (the browser cancels its own echo)",
            f"{_fmt(echo.get('self_interruptions'))}; {_fmt(echo.get('self_pauses'))}"
            if "trials" in echo
            else "-",
            "-",
        ]
    )
    rows.append(
        [
            "  barge-in over the echo, ms: min / median / p90 / max (n)",
            "-",
            _four((echo.get("barge_in") or {}).get("stop_ms")) if "trials" in echo else "-",
            "-",
        ]
    )
    lines = [
        "## SIP and WebRTC side by side",
        "",
        "The same questions and caller voices; the WebRTC caller asks "
        f"{web.get('questions', '-')} questions over calls of several turns, the phone one "
        "question per SIP call (G.722 on a fresh server, so the TTS phrase cache holds none "
        "of the PCMU row's replies). Barge-in and echo run on the server whose agent greets "
        "with the long canned reply; the phone's barge-in and echo use PCMU.",
        "",
    ]
    lines += _table(("figure", "WebRTC (Opus)", "SIP PCMU", "SIP G.722"), rows)
    return [*lines, ""]


def _pipecat_rows(sc: dict[str, Any]) -> list[tuple[str, str]]:
    """The Pipecat reference line and Parley's ratio to it."""
    if "pipecat" not in sc:
        return []
    if e := _err(sc, "pipecat"):
        return [("Pipecat reference voice-to-voice", f"error: {e}")]
    p = sc["pipecat"]
    rows = [
        (
            f"Pipecat reference voice-to-voice, same models and questions ({p['questions']}): "
            "min / median / p90 / p99 / max",
            _dist(p["v2v_ms"]),
        ),
        ("  unanswered turns (Pipecat)", _fmt(p.get("unanswered"))),
    ]
    r = p.get("parley_over_pipecat")
    value = (
        f"median {r['median']:.2f}, p90 {r['p90']:.2f} over {r['turns']} turns "
        f"({r['parley_median_ms']:.0f} / {r['pipecat_median_ms']:.0f} ms median); "
        f"later turns only: median {_fmt(r.get('later_median'))}"
        if r
        else "- (run v2v in the same run)"
    )
    rows.append(("Parley / Pipecat voice-to-voice (below 1: Parley answers sooner)", value))
    return rows


def _pipecat_section(sc: dict[str, Any]) -> list[str]:
    """What the Pipecat reference bot shares with the Parley agent and what it does not."""
    ref = (sc.get("pipecat") or {}).get("reference")
    if not ref:
        return []
    s = ref["settings"]
    turn = (
        "Pipecat's Smart Turn v3 stop strategy"
        if s["end_of_turn"] == "smart_turn"
        else f"{s['end_of_turn_silence_ms']} ms of silence (Silero stop 200 ms + "
        f"user_speech_timeout {s['end_of_turn_silence_ms'] - 200} ms)"
    )
    lines = [
        "## Pipecat reference line",
        "",
        "`pipecat-ai` with its SmallWebRTC transport (`bench/pipecat_ref/bot.py`, its own venv "
        "from `bench/pipecat_ref/install.sh`), asked the v2v scenario's questions in the same "
        "voices by the same aiortc caller right after the Parley server, on the same machine. "
        "Its figure comes from the audio only (it sends no events, so it has no stages). "
        f"End of turn: {turn}.",
        "",
        "Matched:",
        "",
        *(f"- {m}" for m in ref["matched"]),
        "",
        "Different:",
        "",
        *(f"- {d}" for d in ref["differs"]),
        "",
    ]
    return lines


def _compare(doc: dict[str, Any], before: dict[str, Any]) -> list[str]:
    """Before/after table of the tuning-relevant figures."""

    def pick(d: dict[str, Any]) -> list[tuple[str, Any]]:
        sc = d["scenarios"]
        v = sc.get("v2v", {})
        t = sc.get("turns", {})
        b = sc.get("bargein", {})
        out: list[tuple[str, Any]] = [
            ("v2v median ms", v.get("v2v_ms", {}).get("median")),
            ("v2v p90 ms", v.get("v2v_ms", {}).get("p90")),
            ("v2v max ms", v.get("v2v_ms", {}).get("max")),
        ]
        for key, label in STAGES:
            out.append((f"{label} median ms", v.get("stages", {}).get(key, {}).get("median")))
        ref = sc.get("pipecat", {})
        out.append(("Pipecat reference v2v median ms", ref.get("v2v_ms", {}).get("median")))
        out.append(
            ("Parley / Pipecat v2v median", (ref.get("parley_over_pipecat") or {}).get("median"))
        )
        out.append(("turns cut off early", t.get("cut_off")))
        out.append(("turn-taking questions", t.get("questions")))
        out.append(("barge-in stop median ms", b.get("stop_ms", {}).get("median")))
        hv, hb = sc.get("v2v-human", {}), sc.get("bargein-human", {})
        out.append(("human speech: v2v median ms", hv.get("v2v_ms", {}).get("median")))
        out.append(("human speech: v2v p90 ms", hv.get("v2v_ms", {}).get("p90")))
        out.append(("human speech: barge-in stop median ms", hb.get("stop_ms", {}).get("median")))
        for key in ("coughs", "backchannels"):
            out.append((f"{key}: false interruptions", b.get(key, {}).get("false_interruptions")))
        c = sc.get("cloud", {})
        if "v2v" in c:
            out += [
                ("cloud: v2v median ms", c["v2v"]["v2v_ms"].get("median")),
                ("cloud: v2v p90 ms", c["v2v"]["v2v_ms"].get("p90")),
                ("cloud: remainder median ms", c["v2v"].get("remainder_ms", {}).get("median")),
            ]
            for lv in c["levels"]:
                calls = f"{lv['calls']} call{'s' if lv['calls'] > 1 else ''}"
                out += [
                    (f"cloud, {calls}: v2v p90 ms", lv["v2v_ms"].get("p90")),
                    (f"cloud, {calls}: underruns", lv["underruns"]),
                    (f"cloud, {calls}: server CPU %", lv["server_cpu_pct"]),
                ]
            out.append(("cloud: most calls held", c.get("holds_calls")))
        return out

    old, new = dict(pick(before)), pick(doc)
    new += [(k, None) for k in old if k not in dict(new)]  # figures only the earlier run has
    lines = [
        "## Before / after",
        "",
        f"Before: `{before.get('tag') or before.get('date')}` overrides "
        f"{before['config'].get('overrides') or 'none'}; after: overrides "
        f"{doc['config'].get('overrides') or 'none'}.",
        "",
    ]
    rows = [(k, old.get(k), v) for k, v in new if old.get(k) is not None or v is not None]
    lines += _table(("figure", "before", "after"), rows)
    return [*lines, ""]


def _turn_taking(doc: dict[str, Any]) -> str:
    """The turn-taking settings the figures were measured with (older results: none)."""
    knobs = doc.get("config", {}).get("knobs") or {}
    turn, barge = knobs.get("turn") or {}, knobs.get("interruption") or {}
    if not turn:
        return ""
    model = turn.get("end_of_turn_model", "none")
    check = {"text": turn.get("text_turn"), "smart_turn": turn.get("smart_turn")}.get(model)
    if check:
        eot = (
            f"{model} model asked at {check['check_after_ms']} ms of silence (done >= "
            f"{check['complete_threshold']}, unfinished < {check['incomplete_threshold']} -> "
            f"{check['incomplete_silence_ms']} ms), else the "
            f"{turn['end_of_turn_silence_ms']} ms timer"
        )
    else:
        eot = f"the {turn['end_of_turn_silence_ms']} ms silence timer"
    return (
        f"Turn-taking: end of turn by {eot}; preemptive replies "
        f"{'on' if turn.get('preemptive_reply') else 'off'}; barge-in onset hold "
        f"{barge.get('min_speech_ms')} ms. "
    )


def _caller_voices(doc: dict[str, Any]) -> str:
    """The header's sentence on who spoke the caller's lines."""
    voices = ", ".join(doc["voices"])
    human = doc.get("human_speech")
    if human is None:  # synthetic voices only: the sentence as it always was
        return f"Caller voices: {voices}."
    synthetic = "synthetic" in doc.get("caller_voices", ["synthetic"])
    if "error" in human:
        missing = f"human speech was asked for but is not available ({human['error']})"
        return f"Caller voices: {voices}; {missing}." if synthetic else f"Caller voice: {missing}."
    prompts = (
        "Debian's Asterisk prompts, one person on 8 kHz telephone audio upsampled to 16 kHz "
        f"(the first of {len(human['questions'])} v2v and {len(human['interruptions'])} "
        "barge-in lines listed in the JSON)"
    )
    if synthetic:
        return f"Caller voices: {voices} (synthetic voices); figures 'on human speech': {prompts}."
    return f"Caller voice: human speech, {prompts}."


def _human_definition(doc: dict[str, Any]) -> list[str]:
    """The definition of the human-speech figures (none when none were asked for)."""
    human = doc.get("human_speech")
    if not human or "error" in human:
        return []
    return [
        "- On human speech: the caller's lines are Debian's Asterisk prompts "
        "(`asterisk-core-sounds-en-wav`, one human speaker), those with one plain English "
        "sentence of at least three words and 1.5-5 s of speech, in a fixed order (a hash of "
        "the prompt's name); trimmed to their speech and normalised to the synthetic clips' "
        "peak. The prompts are statements, not questions (the agent answers anything). "
        "Barge-in on human speech interrupts the greeting with the next prompts of the same "
        "order; coughs and backchannels are synthetic sounds, run with the synthetic voices "
        "only. The prompts are listed in the JSON (`human_speech`).",
    ]


def markdown(
    doc: dict[str, Any], plot_paths: dict[str, Path], out: Path, before: dict[str, Any] | None
) -> str:
    """The report as Markdown."""
    m = doc["machine"]
    title = f"# Parley over the wire: {doc['date']}" + (f" ({doc['tag']})" if doc["tag"] else "")
    lines = [
        title,
        "",
        f"{'Quick smoke run' if doc['quick'] else 'Full run'} of `python -m bench.wire` "
        f"({', '.join(doc['scenarios_run'])}) in {doc['seconds']:.0f} s on {m['cpus']} CPUs "
        f"({m['cpu_model']}), load average {m['loadavg_start']} at start and "
        f"{m.get('loadavg_end')} at the end (other work shares this machine). Commit "
        f"`{doc['git']['commit'][:10]}`{' (dirty tree)' if doc['git']['dirty'] else ''}; agent "
        f"config {doc['config']['path']}, overrides {doc['config']['overrides'] or 'none'}. "
        + _turn_taking(doc)
        + _caller_voices(doc),
        "",
        "## Figures",
        "",
    ]
    lines += _table(("figure", "value"), figures(doc))
    lines.append("")
    if doc["quick"] and "install" in doc["scenarios_run"]:
        lines += ["The install scenario is skipped in a quick run.", ""]
    lines += _pipecat_section(doc["scenarios"])
    if doc["scenarios"].get("sip"):
        lines += _side_by_side(doc["scenarios"])
    c = doc["scenarios"].get("concurrency", {})
    if c.get("levels"):
        lines += ["## Concurrency", ""]
        lines += _table(
            (
                "calls",
                "answered/asked",
                "completed",
                "v2v median ms",
                "v2v p90 ms",
                "v2v max ms",
                "underruns (starved/stalled)",
                "per min of speech",
                "server CPU %",
                "RSS mean / peak MB",
                "client CPU %",
            ),
            (
                (
                    lv["calls"],
                    f"{lv['turns_answered']}/{lv['turns_asked']}",
                    lv["turns_completed"],
                    lv["v2v_ms"].get("median"),
                    lv["v2v_ms"].get("p90"),
                    lv["v2v_ms"].get("max"),
                    f"{lv['underruns']} ({lv['underruns_starved']}/{lv['underruns_stalled']})",
                    lv["underruns_per_min_speech"],
                    lv["server_cpu_pct"],
                    f"{_fmt(lv['server_rss_mean_mb'])} / {_fmt(lv['server_rss_peak_mb'])}",
                    lv["client_cpu_pct"],
                )
                for lv in c["levels"]
            ),
        )
        lines += [
            "",
            "Server threads (% of one core over the level; the event loop is `MainThread`, "
            "`uvloop` is the executor that encodes Opus), `/health` round trip through the "
            "server's event loop, and lateness of the caller process's own 20 ms timers "
            "(a late caller loop would show as stalls that are not the server's):",
            "",
        ]
        names = [
            "MainThread",
            "uvloop",
            "vad",
            "stt-whisper",
            "llm-llama",
            "tts-piper",
            "audio-decoder",
        ]
        lines += _table(
            (
                "calls",
                *names,
                "native",
                "/health median / max ms",
                "caller timer lag p99 / max ms",
            ),
            (
                (
                    lv["calls"],
                    *(lv.get("server_threads_cpu_pct", {}).get(n) for n in names),
                    sum(
                        v
                        for k, v in lv.get("server_threads_cpu_pct", {}).items()
                        if k.startswith("native")
                    ),
                    f"{_fmt(lv.get('server_health_ms', {}).get('median'))} / "
                    f"{_fmt(lv.get('server_health_ms', {}).get('max'))}",
                    f"{_fmt(lv.get('client_timer_lag_ms', {}).get('p99'))} / "
                    f"{_fmt(lv.get('client_timer_lag_ms', {}).get('max'))}",
                )
                for lv in c["levels"]
            ),
        )
        per = c.get("rss_per_call_mb", {})
        lines += [
            "",
            f"RSS per added call: {_fmt(per.get('peak_slope'))} MB (least-squares slope of peak "
            f"RSS over the levels); with the calls connected but silent: "
            f"{per.get('idle_connected')} MB per call at each level.",
            "",
        ]
    lines += _cloud_section(doc)
    prof = doc.get("profile")
    if prof and "stages" in prof:
        lines += [
            "## Profile of the server during the voice-to-voice scenario (py-spy)",
            "",
            f"Over {prof['seconds']} s the server used {prof['cpu_s']} CPU s, "
            f"{prof['cpu_pct_of_core']} % of one core on average (200 % = both cores), "
            "measured per thread from /proc; py-spy's "
            f"{prof['samples']} samples ({prof['rate_hz']} Hz) split each thread's CPU "
            "between stages and functions.",
            "",
        ]
        lines += _table(
            ("stage", "CPU s", "% of one core", "share %"),
            (
                (k, v["cpu_s"], v["cpu_pct_of_core"], v["share_pct"])
                for k, v in prof["stages"].items()
            ),
        )
        lines += ["", "By thread:", ""]
        lines += _table(
            ("thread", "CPU s", "% of one core", "share %"),
            (
                (k, v["cpu_s"], v["cpu_pct_of_core"], v["share_pct"])
                for k, v in prof["threads"].items()
            ),
        )
        lines += ["", "Hottest functions (innermost Python frame; native code runs below it):", ""]
        lines += _table(
            ("thread | function", "CPU s", "share %"),
            ((f"`{h['where']}`", h["cpu_s"], h["share_pct"]) for h in prof["hot_functions"]),
        )
        lines.append("")
    elif prof and "error" in prof:
        lines += [f"Profile: {prof['error']}", ""]
    if before is not None:
        lines += _compare(doc, before)
    if plot_paths:
        lines += ["## Plots", ""]
        for name, path in plot_paths.items():
            rel = os.path.relpath(path, out)
            lines.append(f"![{name}]({rel})")
            lines.append("")
        lines += [f"Files: {', '.join(f'`{p}`' for p in plot_paths.values())}", ""]
    lines += [
        "## Definitions",
        "",
        f"- Loud frame: a received 20 ms agent frame above {LOUD_DBFS:.0f} dBFS.",
        "- Voice-to-voice: the send time of the last speech sample of the caller's question "
        "-> the arrival of the first loud agent frame. Stages come from the session's own "
        "metrics event; 'LLM first chunk wait + scheduling' is the server's voice-to-voice "
        "minus the named stages (tokens until the chunker's first clause, task hand-offs, "
        "the playout tick); 'network / playout' is the caller's figure minus the server's: "
        "both RTP paths, Opus, the jitter buffers (the agent's holds "
        "PARLEY_WEBRTC_INBOUND_PREFETCH packets, 0 by default; the caller's, aiortc's, 4) "
        "and what is left of the voice's quiet lead-in before its first loud frame. Its "
        "'in' part ends when the server's VAD got the last speech sample (placed on the "
        "caller's clock by the metrics event's arrival, ~1 ms late); 'out' is the rest.",
        f"- Barge-in stop: the caller's speech onset -> the end of the last loud agent frame "
        f"followed by at least {STOP_HOLD_S:.0f} s without a loud frame.",
        "- Cough: a 150-300 ms band-limited noise burst; backchannel: a voiced 'hmm' without "
        "words. Each is ok when the longest silence overlapping the sound and the window "
        "after it stays within its length + false_interruption_timeout_ms + 300 ms, the "
        "reply resumes, and no interruption is confirmed.",
        *_human_definition(doc),
        "- Turn cut off early: a final transcript or the THINKING state arrived before the "
        "second half of the question was spoken, or the question produced two final "
        "transcripts.",
        "- SIP: the phone (`bench/wire/sip_phone.py`) calls the server's SIP port on "
        "loopback UDP and streams RTP in real time (20 ms packets, PCMU at 8 kHz or G.722 at "
        "16 kHz); voice-to-voice and barge-in are measured on the RTP it receives with the "
        "same definitions (no jitter buffer on the phone: packets are analysed as they "
        "arrive). Its stages come from the session's stored per-turn latencies (read with "
        "the admin token). Echo: the phone returns the agent's decoded audio, laid out on "
        "its RTP timeline, 15 dB down and 80 ms late; self-interruptions are the server's "
        "`parley_barge_ins_total` (confirmed) and `parley_false_interruptions_total` "
        "(paused and resumed) over the greeting before the phone speaks. With G.722 a "
        "starved playout does not decode to exact zeros, so only stalls count as underruns.",
        "- Cloud providers: the loopback vendors (`bench.wire.vendors`) speak Groq's and "
        "ElevenLabs' documented protocols and inject the latencies named above; the remainder "
        "is the caller's voice-to-voice minus the end-of-turn silence setting and the "
        "injected LLM first token and TTS first audio (the STT's latency is hidden in the "
        "end-of-turn silence when the speculative final transcription hits, and otherwise "
        "shows as the final STT wait). The 60 ms of digital silence their synthetic voice "
        "puts at each space reaches the caller as low-level Opus output, never as exact-zero "
        "frames (checked over 940 received frames of replies), so starved frames still mean "
        "an empty playout.",
        f"- Underrun: a gap of at least {UNDERRUN_MIN_S * 1000:.0f} ms inside a reply (first to "
        "last loud frame) that is not a natural pause: 'starved' = received frames of digital "
        "silence (the server's playout had no audio; Piper's own pauses are never exact "
        "zeros), 'stalled' = no frame arrived at all (a stalled event loop or path).",
        "",
        f"Raw data: `{out / (doc['date'] + (('-' + doc['tag']) if doc['tag'] else '') + '.json')}`;"
        f" server logs and raw profile in `{doc['work_dir']}`.",
        "",
    ]
    return "\n".join(lines)


def write(
    doc: dict[str, Any], out: Path, stem: str, before: dict[str, Any] | None = None
) -> list[Path]:
    """Write ``<stem>.json``, the plots and ``<stem>.md`` under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    # the figures first: a run of many minutes is never lost to a failing plot
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n", "utf-8")
    try:
        plot_paths = plots.write_all(doc, out, stem)
    except ModuleNotFoundError as exc:  # matplotlib comes with requirements/bench.lock
        print(f"[bench] no plots ({exc}); scripts/bench.sh installs the bench tools")
        plot_paths = {}
    doc["plots"] = {k: str(v) for k, v in plot_paths.items()}
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n", "utf-8")
    md_path = out / f"{stem}.md"
    md_path.write_text(markdown(doc, plot_paths, out, before), "utf-8")
    return [json_path, md_path, *plot_paths.values()]
