"""``python -m bench.wire``: start the server, run the scenarios, write the results.

::

    .venv/bin/python -m bench.wire
        [--scenarios v2v,turns,bargein,concurrency,soak,install,sip,cloud[,pipecat]]
        [--quick] [--config agent.yaml] [--set turn.end_of_turn_silence_ms=450 ...]
        [--end-of-turn-model smart_turn|none] [--caller-voices synthetic,human]
        [--levels 1,2,4,8,16] [--cloud-levels 1,5,10,20,30] [--level-seconds 60]
        [--profile] [--out bench/results] [--tag TAG] [--compare earlier.json]

The server runs as a subprocess (``python -m signaling``) on a free
127.0.0.1 port; the barge-in scenario gets a second server whose agent
greets each call with a long canned reply. The ``sip`` scenario starts its
own servers with SIP and RTP on free loopback ports (the plain agent for
PCMU, again for G.722, and the greeter) and calls them with
``bench.wire.sip_phone``. The ``cloud`` scenario starts the loopback cloud
vendors in a process of their own (``bench.wire.vendors``) and a server
whose provider chains use them. Results: ``<out>/<date>[-tag].json``,
``<out>/<date>[-tag].md`` and ``<out>/<date>[-tag]-*.png``. The ``pipecat``
scenario (only when named) asks the v2v questions of the Pipecat reference
bot (``bench/pipecat_ref``; its venv comes from ``bench/pipecat_ref/install.sh``)
after the Parley server is done, and the report states Parley's ratio to it. Server logs and
the raw profile go to a temporary work directory named in the JSON.

``--caller-voices`` says who speaks the caller's lines in ``v2v`` and
``bargein``: ``synthetic`` (the default: Piper and espeak-ng saying the
scripted texts) and/or ``human`` (Debian's Asterisk prompts,
``bench.wire.speech.CallerVoice``). Each runs in turn on the same server; the
synthetic results keep their keys (``v2v``, ``bargein``), human speech's go to
``v2v-human`` and ``bargein-human`` (interruptions only: coughs and
backchannels are synthetic and run with the synthetic voices).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.config import DEFAULT_CONFIG_PATH, AgentConfig
from bench.pipecat_ref.process import PipecatProcess, bot_settings
from bench.wire import report
from bench.wire.profiler import Profiler
from bench.wire.scenarios import (
    bargein,
    cloud,
    concurrency,
    install,
    pipecat,
    sip,
    soak,
    turns,
    v2v,
)
from bench.wire.scenarios.common import BenchContext, log
from bench.wire.scenarios.concurrency import Level
from bench.wire.server import Monitor, ServerError, ServerProcess, read_tree
from bench.wire.speech import (
    BACKCHANNELS,
    CALLER_VOICES,
    GREETING,
    INTERRUPTIONS,
    QUESTIONS,
    SHORT_QUESTIONS,
    SPLIT_QUESTIONS,
    CallerVoice,
    espeak_available,
    human_lines,
    scenario_key,
    speech,
    voices,
)
from bench.wire.vendors import VendorError, VendorLatencies, VendorProcess

SCENARIOS = ("v2v", "turns", "bargein", "concurrency", "soak", "install", "sip", "cloud")
PARTS = ("sip-greeter",)
"""Parts of a scenario that can be run alone: ``sip-greeter`` is SIP barge-in and echo."""
REFERENCES = ("pipecat",)
"""Other servers asked the same questions, run only when named (``pipecat``: its own venv)."""
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each scenario to run."""

    v2v_calls: int
    v2v_turns_per_call: int
    paused_questions: int
    interruptions: int
    coughs: int
    backchannels: int
    levels: tuple[Level, ...]
    cloud_levels: tuple[Level, ...]
    """Concurrency levels of the cloud scenario."""
    soak_calls: int
    install_timeout_s: float
    sip_g722_questions: int
    """SIP calls over G.722 (the PCMU row asks as many questions as v2v)."""
    sip_echo_trials: int
    sip_echo_listen_s: float
    """Greeting heard over the echo before each echo trial's barge-in."""

    @classmethod
    def make(
        cls,
        quick: bool,
        levels: list[int],
        level_s: float | None,
        soak: int | None,
        cloud_levels: list[int] | None = None,
    ) -> Plan:
        """The quick smoke plan or the full one (the issue's minimum counts)."""
        if quick:
            secs = level_s or 25.0
            return cls(
                v2v_calls=1,
                v2v_turns_per_call=2,
                paused_questions=2,
                interruptions=2,
                coughs=1,
                backchannels=1,
                levels=tuple(Level(n, secs, 15.0) for n in levels or [1, 2]),
                cloud_levels=tuple(Level(n, secs, 15.0) for n in cloud_levels or [1, 5]),
                soak_calls=soak or 5,
                install_timeout_s=0.0,
                sip_g722_questions=1,
                sip_echo_trials=1,
                sip_echo_listen_s=10.0,
            )
        secs = level_s or 60.0
        return cls(
            v2v_calls=5,
            v2v_turns_per_call=4,
            paused_questions=12,
            interruptions=10,
            coughs=4,
            backchannels=3,
            levels=tuple(Level(n, secs, 25.0) for n in levels or [1, 2, 4, 8, 16]),
            cloud_levels=tuple(Level(n, secs, 25.0) for n in cloud_levels or [1, 5, 10, 20, 30]),
            soak_calls=soak or 100,
            install_timeout_s=1500.0,
            sip_g722_questions=5,
            sip_echo_trials=3,
            sip_echo_listen_s=20.0,
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m bench.wire",
        description="Start the Parley server on 127.0.0.1, call it with aiortc peers over "
        "loopback WebRTC, and write JSON, Markdown and PNG results.",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset; 'pipecat' (only when named) adds the Pipecat reference line",
    )
    p.add_argument("--quick", action="store_true", help="small smoke run (~3 min)")
    p.add_argument("--config", type=Path, default=None, help="agent YAML (default: embedded)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an agent knob, e.g. turn.end_of_turn_silence_ms=450 (repeatable)",
    )
    p.add_argument(
        "--end-of-turn-model",
        choices=("text", "smart_turn", "none"),
        default=None,
        help="turn.end_of_turn_model of the served agent (default: the config's); run once "
        "with each, e.g. --scenarios turns --tag eot-on / --tag eot-off, to compare",
    )
    p.add_argument(
        "--caller-voices",
        default="synthetic",
        help="who speaks the caller's lines in v2v and bargein, comma-separated: 'synthetic' "
        "(Piper and espeak-ng) and/or 'human' (Debian's Asterisk prompts, "
        "scripts/install_test_audio.sh)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the server during v2v")
    p.add_argument(
        "--workers", type=int, default=1, help="server worker processes (python -m signaling)"
    )
    p.add_argument("--levels", default="", help="concurrency levels, e.g. 1,2,4,8,16")
    p.add_argument(
        "--cloud-levels", default="", help="concurrency levels of the cloud scenario, e.g. 1,5,10"
    )
    p.add_argument("--level-seconds", type=float, default=None, help="duration of each level")
    p.add_argument("--soak-calls", type=int, default=None, help="calls of the soak (100)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results directory")
    p.add_argument("--tag", default="", help="suffix of the result files' names (--quick: 'quick')")
    p.add_argument("--compare", type=Path, default=None, help="earlier results JSON (before)")
    args = p.parse_args(argv)
    if args.quick and not args.tag:
        args.tag = "quick"  # a smoke run never overwrites the day's full results
    if args.end_of_turn_model is not None:
        args.set.append(f"turn.end_of_turn_model={args.end_of_turn_model}")
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS) - set(PARTS) - set(REFERENCES)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    kinds = [k.strip() for k in args.caller_voices.split(",") if k.strip()]
    if not kinds or set(kinds) - set(CALLER_VOICES):
        choices = " and/or ".join(CALLER_VOICES)
        p.error(f"--caller-voices takes {choices}, got {args.caller_voices!r}")
    args.caller_voices = [k for k in CALLER_VOICES if k in kinds]
    return args


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *path, key = dotted.split(".")
    node = raw
    for part in path:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SystemExit(f"--set {dotted}: {part} is not a section")
        node = child
    node[key] = value


def agent_config(
    base: Path | None, sets: list[str], work: Path, extra: dict[str, Any] | None = None
) -> Path | None:
    """The agent YAML to serve: ``base`` (None = embedded) with overrides applied."""
    if not sets and not extra:
        return base
    raw = yaml.safe_load((base or DEFAULT_CONFIG_PATH).read_text("utf-8")) or {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        _set(raw, key.strip(), yaml.safe_load(value))
    raw.update(extra or {})
    name = "greeter" if extra else "agent"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), "utf-8")
    AgentConfig.load(path)  # validate now, not in the server
    return path


def prepare_speech(names: list[str]) -> int:
    """Synthesize (and cache) every clip the scenarios may send; returns how many."""
    texts = [*QUESTIONS, *INTERRUPTIONS, *SHORT_QUESTIONS, *BACKCHANNELS]
    texts += [part for pair in SPLIT_QUESTIONS for part in pair]
    for text in texts:
        for voice in names:
            speech(text, voice)
    return len(texts) * len(names)


def human_speech_record() -> dict[str, Any]:
    """The human lines the scenarios speak, for the results (or why there are none)."""
    try:
        human = CallerVoice.human()
    except (OSError, ValueError) as exc:  # HumanSpeechMissingError is an OSError
        return {"error": f"{type(exc).__name__}: {exc}"}
    by_name = {line.name: line for line in human_lines()}

    def record(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {
                "prompt": name,
                "text": by_name[name].text,
                "speech_s": round(by_name[name].speech_s, 2),
            }
            for name in names
        ]

    n = len(human.questions)
    return {
        "source": "Debian asterisk-core-sounds-en-wav (one speaker, 8 kHz, upsampled to 16 kHz)",
        "questions": record(human.sources[:n]),
        "interruptions": record(human.sources[n:]),
    }


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        res = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return res.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _knobs(config: AgentConfig) -> dict[str, Any]:
    return {
        "vad": config.vad.model_dump(),
        "turn": config.turn.model_dump(),
        "stt": config.stt.model_dump(mode="json"),
        "llm": {k: v for k, v in config.llm.model_dump(mode="json").items() if k != "model_path"},
        "tts": config.tts.model_dump(mode="json"),
        "interruption": {
            k: v for k, v in config.interruption.model_dump().items() if k != "filler_words"
        },
        "chunker": config.chunker.model_dump(),
    }


async def _guard(
    name: str,
    results: dict[str, Any],
    budget_s: float,
    make: Callable[[], Awaitable[Any]],
    key: str | None = None,
) -> None:
    """Run one scenario with a time bound; failures are recorded, not raised.

    The outcome goes to ``results[key or name]``.
    """
    key = key or name
    log(f"scenario {name}: start (bound {budget_s:.0f} s)")
    t0 = time.monotonic()
    try:
        results[key] = await asyncio.wait_for(make(), budget_s)
    except TimeoutError:
        results[key] = {"error": f"timed out after {budget_s:.0f} s"}
    except Exception as exc:  # a failing scenario must not lose the others' figures
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    log(f"scenario {name}: done in {time.monotonic() - t0:.0f} s")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected scenarios; returns the results document."""
    chosen = [s for s in (*SCENARIOS, *PARTS, *REFERENCES) if s in args.scenarios.split(",")]
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    cloud_levels = [int(x) for x in args.cloud_levels.split(",") if x.strip()]
    plan = Plan.make(args.quick, levels, args.level_seconds, args.soak_calls, cloud_levels)
    work = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    config_path = agent_config(args.config, args.set, work)
    config = AgentConfig.load(config_path)
    names = voices()
    t_start = time.monotonic()
    log(f"work dir {work}; voices {names}; caller voices {args.caller_voices}; preparing speech")
    clips = await asyncio.to_thread(prepare_speech, names)
    doc: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "tag": args.tag,
        "scenarios_run": chosen,
        "git": _git(),
        "machine": _machine(),
        "config": {
            "path": str(args.config) if args.config else "embedded (agents/default.yaml)",
            "overrides": args.set,
            "knobs": _knobs(config),
        },
        "voices": names,
        "caller_voices": args.caller_voices,
        "espeak_ng": espeak_available(),
        "clips_prepared": clips,
        "work_dir": str(work),
        "servers": {},
        "scenarios": {},
    }
    if "human" in args.caller_voices:
        doc["human_speech"] = await asyncio.to_thread(human_speech_record)
    results: dict[str, Any] = doc["scenarios"]
    main_needed = [s for s in chosen if s in ("v2v", "turns", "concurrency", "soak")]
    if main_needed:
        await _with_server(doc, "main", config_path, config, names, args, plan, work)
    if "pipecat" in chosen:  # right after the Parley server's v2v: the same run, same machine
        await _pipecat(doc, config, names, args, plan, work)
    if "bargein" in chosen:
        greeter = agent_config(config_path, [], work, {"greeting": GREETING})
        await _with_server(doc, "bargein", greeter, config, names, args, plan, work)
    if "sip" in chosen or "sip-greeter" in chosen:
        results["sip"] = {"v2v": {}}
    if "sip" in chosen:
        await _with_server(doc, "sip", config_path, config, names, args, plan, work)
        if plan.sip_g722_questions > 0:  # a fresh server: no TTS phrase cached by the PCMU row
            await _with_server(doc, "sip-g722", config_path, config, names, args, plan, work)
    if "sip" in chosen or "sip-greeter" in chosen:
        greeter = agent_config(config_path, [], work, {"greeting": GREETING})
        await _with_server(doc, "sip-greeter", greeter, config, names, args, plan, work)
    if "cloud" in chosen:
        await _cloud(doc, config_path, config, names, args, plan, work)
    if "install" in chosen and plan.install_timeout_s > 0:
        await _guard(
            "install",
            results,
            plan.install_timeout_s + 900,
            lambda: install.run(REPO, work, plan.install_timeout_s),
        )
    doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    return doc


async def _with_server(
    doc: dict[str, Any],
    role: str,
    config_path: Path | None,
    config: AgentConfig,
    names: list[str],
    args: argparse.Namespace,
    plan: Plan,
    work: Path,
    vendors: VendorProcess | None = None,
) -> None:
    chosen = doc["scenarios_run"]
    results: dict[str, Any] = doc["scenarios"]
    server = ServerProcess(
        config=config_path,
        log_path=work / f"server-{role}.log",
        max_calls=max([32, *(lv.calls + 2 for lv in (*plan.levels, *plan.cloud_levels))]),
        sip=role.startswith("sip"),
        env=vendors.server_env() if vendors is not None else None,
        workers=args.workers,
    )
    log(f"starting the {role} server on {server.base_url}")
    ready = await server.start()
    log(f"{role} server ready in {ready:.2f} s")
    doc["servers"][role] = {
        "ready_s": round(ready, 2),
        "models_load_s": server.health.get("models"),
        "rss_ready_mb": round(read_tree(server.pid).rss_mb, 1),
        "workers": server.workers,
    }
    try:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
            Monitor(server.pid) as monitor,
        ):
            ctx = BenchContext(server, client, monitor, config, names, args.quick)
            if role.startswith("sip"):
                await _sip(ctx, role, results["sip"], plan)
                return
            if role == "cloud":
                if vendors is None:
                    raise ValueError("the cloud server needs the vendors")
                async with Monitor(vendors.pid) as vendor_monitor:
                    await _guard(
                        "cloud",
                        results,
                        90.0 * plan.v2v_calls * plan.v2v_turns_per_call
                        + sum(lv.duration_s + lv.drain_s + 120 for lv in plan.cloud_levels)
                        + 60,
                        lambda: cloud.run(
                            dataclasses.replace(ctx, vendors=vendor_monitor),
                            vendors.latencies,
                            plan.v2v_calls,
                            plan.v2v_turns_per_call,
                            list(plan.cloud_levels),
                        ),
                    )
                return
            if role == "bargein":
                for kind in args.caller_voices:
                    noises = plan.coughs + plan.backchannels if kind == "synthetic" else 0
                    key = scenario_key("bargein", kind)
                    await _guard(
                        key,
                        results,
                        60.0 * (plan.interruptions + noises) + 60,
                        functools.partial(_bargein, ctx, plan, kind),
                    )
                return
            if "v2v" in chosen:
                prof = Profiler(server.pid, work / "v2v-profile.txt") if args.profile else None
                if prof is not None and not prof.start():
                    doc["profile"] = {"error": "py-spy is not installed"}
                    prof = None
                for kind in args.caller_voices:
                    await _guard(
                        scenario_key("v2v", kind),
                        results,
                        90.0 * plan.v2v_calls * plan.v2v_turns_per_call + 60,
                        functools.partial(_v2v, ctx, plan, kind),
                    )
                if prof is not None:
                    doc["profile"] = await prof.stop()
            if "turns" in chosen:
                await _guard(
                    "turns",
                    results,
                    30.0 * plan.paused_questions + 60,
                    lambda: turns.run(ctx, plan.paused_questions),
                )
            if "concurrency" in chosen:
                budget = sum(lv.duration_s + lv.drain_s + 120 for lv in plan.levels)
                await _guard(
                    "concurrency",
                    results,
                    budget,
                    lambda: concurrency.run(ctx, list(plan.levels)),
                )
            if "soak" in chosen:
                await _guard(
                    "soak",
                    results,
                    # the calls, then the fuzzing pass (long TTS texts, long uploads) and
                    # the settling (past the server's memory-trim period)
                    30.0 * plan.soak_calls + (300 if args.quick else 1200) + soak.SETTLE_S,
                    lambda: soak.run(ctx, plan.soak_calls),
                )
    finally:
        code = await server.stop()
        doc["servers"][role]["exit_code"] = code
        doc["servers"][role]["log"] = str(server.log_path)


async def _v2v(ctx: BenchContext, plan: Plan, kind: str) -> dict[str, Any]:
    """The v2v scenario with caller voice ``kind``."""
    voice = CallerVoice.of(kind, ctx.voices)
    return await v2v.run(ctx, plan.v2v_calls, plan.v2v_turns_per_call, caller_voice=voice)


async def _bargein(ctx: BenchContext, plan: Plan, kind: str) -> dict[str, Any]:
    """The barge-in scenario with caller voice ``kind`` (coughs and backchannels are
    synthetic: they run with the synthetic voices only)."""
    voice = CallerVoice.of(kind, ctx.voices)
    synthetic = kind == "synthetic"
    coughs, backchannels = (plan.coughs, plan.backchannels) if synthetic else (0, 0)
    return await bargein.run(ctx, plan.interruptions, coughs, backchannels, caller_voice=voice)


async def _pipecat(
    doc: dict[str, Any],
    config: AgentConfig,
    names: list[str],
    args: argparse.Namespace,
    plan: Plan,
    work: Path,
) -> None:
    """The Pipecat reference bot with the served agent's knobs, asked the v2v questions."""
    results: dict[str, Any] = doc["scenarios"]
    try:
        server = PipecatProcess(settings=bot_settings(config), log_path=work / "server-pipecat.log")
        log(f"starting the Pipecat reference bot on {server.base_url}")
        ready = await server.start()
    except ServerError as exc:  # no venv, or the bot did not start: the rest must survive
        results["pipecat"] = {"error": f"bot did not start: {exc}"}
        return
    log(f"Pipecat bot ready in {ready:.2f} s")
    doc["servers"]["pipecat"] = {
        "ready_s": round(ready, 2),
        "rss_ready_mb": round(read_tree(server.pid).rss_mb, 1),
    }
    try:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
            Monitor(server.pid) as monitor,
        ):
            ctx = BenchContext(server, client, monitor, config, names, args.quick)
            await _guard(
                "pipecat",
                results,
                90.0 * plan.v2v_calls * plan.v2v_turns_per_call + 60,
                lambda: pipecat.run(ctx, server, plan.v2v_calls, plan.v2v_turns_per_call),
            )
            if "error" not in results["pipecat"]:
                ratio = pipecat.ratio(results.get("v2v"), results["pipecat"])
                results["pipecat"]["parley_over_pipecat"] = ratio
    finally:
        doc["servers"]["pipecat"]["exit_code"] = await server.stop()
        doc["servers"]["pipecat"]["log"] = str(server.log_path)


async def _cloud(
    doc: dict[str, Any],
    config_path: Path | None,
    config: AgentConfig,
    names: list[str],
    args: argparse.Namespace,
    plan: Plan,
    work: Path,
) -> None:
    """The cloud scenario: the loopback vendors' process, then a server that uses them."""
    vendors = VendorProcess(VendorLatencies(), work / "vendors.log")
    log("starting the loopback cloud vendors")
    try:
        ready = await vendors.start()
    except (VendorError, OSError) as exc:  # the other scenarios' figures must survive
        doc["scenarios"]["cloud"] = {"error": f"vendors did not start: {exc}"}
        return
    log(f"vendors ready in {ready:.2f} s: {vendors.urls}")
    doc["vendors"] = {
        "latencies": vendors.latencies.to_json(),
        "ready_s": round(ready, 2),
        "log": str(vendors.log_path),
    }
    try:
        await _with_server(doc, "cloud", config_path, config, names, args, plan, work, vendors)
    except ServerError as exc:  # e.g. the cloud SDKs are not installed
        doc["scenarios"]["cloud"] = {"error": f"server did not start: {exc}"}
    finally:
        doc["vendors"]["served"] = await vendors.stop()


async def _sip(ctx: BenchContext, role: str, results: dict[str, Any], plan: Plan) -> None:
    """The SIP scenario's parts: v2v on the plain servers, barge-in and echo on the greeter."""
    if role in ("sip", "sip-g722"):
        codec = "PCMU" if role == "sip" else "G722"
        # the PCMU row asks as many questions as v2v
        n = plan.v2v_calls * plan.v2v_turns_per_call if role == "sip" else plan.sip_g722_questions
        await _guard(
            f"sip v2v {codec}",
            results["v2v"],
            60.0 * n + 60,
            lambda: sip.run_v2v(ctx, codec, n),
            key=codec,
        )
        return
    await _guard(
        "sip bargein",
        results,
        45.0 * plan.interruptions + 60,
        lambda: sip.run_bargein(ctx, plan.interruptions),
        key="bargein",
    )
    await _guard(
        "sip echo",
        results,
        (plan.sip_echo_listen_s + 45.0) * plan.sip_echo_trials + 60,
        lambda: sip.run_echo(ctx, plan.sip_echo_trials, plan.sip_echo_listen_s),
        key="echo",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a scenario failed)."""
    args = parse_args(argv)
    doc = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = doc["date"] + (f"-{args.tag}" if args.tag else "")
    before = json.loads(args.compare.read_text("utf-8")) if args.compare else None
    paths = report.write(doc, args.out, stem, before)
    for path in paths:
        print(path)
    failed = [k for k, v in doc["scenarios"].items() if isinstance(v, dict) and "error" in v]
    sip_parts = dict(doc["scenarios"].get("sip", {}))
    sip_parts.update({f"v2v {k}": v for k, v in sip_parts.pop("v2v", {}).items()})
    failed += [f"sip {k}" for k, v in sip_parts.items() if isinstance(v, dict) and "error" in v]
    if failed:
        print(f"scenarios with errors: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
