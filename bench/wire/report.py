"""The results document written out: JSON, a Markdown report and the plots."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.wire import plots
from bench.wire.audio import LOUD_DBFS, STOP_HOLD_S, UNDERRUN_MIN_S
from bench.wire.scenarios.common import STAGES


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


def figures(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline figures: (figure, value) rows."""
    sc = doc["scenarios"]
    rows: list[tuple[str, str]] = []
    for role, s in doc.get("servers", {}).items():
        rows.append((f"server time to ready ({role} server)", _fmt(s.get("ready_s"), " s")))
    if (v := sc.get("v2v")) and "v2v_ms" in v:
        rows.append(
            (
                f"voice-to-voice, 1 call ({v['questions']} questions, "
                f"{len(v['voices'])} voices): min / median / p90 / p99 / max",
                _dist(v["v2v_ms"]),
            )
        )
        st = v.get("stages", {})
        for key, label in STAGES:
            s = st.get(key, {})
            rows.append(
                (
                    f"  stage: {label} (median / p90)",
                    f"{_fmt(s.get('median'))} / {_fmt(s.get('p90'))} ms",
                )
            )
        rows.append(("  unanswered turns", _fmt(v.get("unanswered"))))
        rows.append(
            (
                "  underruns in single-call replies",
                f"{v.get('underruns')} ({v.get('underrun_ms')} ms over {v.get('reply_audio_s')} s)",
            )
        )
    elif e := _err(sc, "v2v"):
        rows.append(("voice-to-voice", f"error: {e}"))
    if (b := sc.get("bargein")) and "stop_ms" in b:
        rows.append(
            (
                f"barge-in: caller onset -> agent silent >= {STOP_HOLD_S:.0f} s: "
                "min / median / p90 / p99 / max",
                _dist(b["stop_ms"]),
            )
        )
        rows.append(("  interruptions that did not stop the agent", _fmt(b.get("not_stopped"))))
        window = b["false_interruption_timeout_ms"]
        for key, label in (("coughs", "cough bursts"), ("backchannels", "backchannels (hmm)")):
            n = b.get(key, {})
            rows.append(
                (
                    f"{label} within burst + {window} ms window",
                    f"{n.get('ok')}/{len(n.get('trials', []))} ok; paused {n.get('paused')}, "
                    f"false interruptions {n.get('false_interruptions')}; longest silence "
                    f"max {_fmt(n.get('longest_silence_ms', {}).get('max'))} ms",
                )
            )
    elif e := _err(sc, "bargein"):
        rows.append(("barge-in", f"error: {e}"))
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
    if (s := sc.get("soak")) and "before" in s:
        b0, b1 = s["before"], s["after"]
        rows.append(
            (
                f"soak ({s['calls']} calls): RSS / fds / threads before -> after",
                f"{b0['rss_mb']} -> {b1['rss_mb']} MB / {b0['fds']} -> {b1['fds']} / "
                f"{b0['threads']} -> {b1['threads']}; failures {len(s['failures'])}",
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
        out.append(("turns cut off early", t.get("cut_off")))
        out.append(("turn-taking questions", t.get("questions")))
        out.append(("barge-in stop median ms", b.get("stop_ms", {}).get("median")))
        for key in ("coughs", "backchannels"):
            out.append((f"{key}: false interruptions", b.get(key, {}).get("false_interruptions")))
        return out

    old, new = dict(pick(before)), pick(doc)
    lines = [
        "## Before / after",
        "",
        f"Before: `{before.get('tag') or before.get('date')}` overrides "
        f"{before['config'].get('overrides') or 'none'}; after: overrides "
        f"{doc['config'].get('overrides') or 'none'}.",
        "",
    ]
    lines += _table(("figure", "before", "after"), ((k, old.get(k), v) for k, v in new))
    return [*lines, ""]


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
        f"Caller voices: {', '.join(doc['voices'])}.",
        "",
        "## Figures",
        "",
    ]
    lines += _table(("figure", "value"), figures(doc))
    lines.append("")
    if doc["quick"] and "install" in doc["scenarios_run"]:
        lines += ["The install scenario is skipped in a quick run.", ""]
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
        "both RTP paths with aiortc's audio jitter buffers (4 packets of prefetch each way), "
        "Opus, and the voice's quiet lead-in before its first loud frame.",
        f"- Barge-in stop: the caller's speech onset -> the end of the last loud agent frame "
        f"followed by at least {STOP_HOLD_S:.0f} s without a loud frame.",
        "- Cough: a 150-300 ms band-limited noise burst; backchannel: a voiced 'hmm' without "
        "words. Each is ok when the longest silence overlapping the sound and the window "
        "after it stays within its length + false_interruption_timeout_ms + 300 ms, the "
        "reply resumes, and no interruption is confirmed.",
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
    plot_paths = plots.write_all(doc, out, stem)
    doc["plots"] = {k: str(v) for k, v in plot_paths.items()}
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n", "utf-8")
    md_path = out / f"{stem}.md"
    md_path.write_text(markdown(doc, plot_paths, out, before), "utf-8")
    return [json_path, md_path, *plot_paths.values()]
