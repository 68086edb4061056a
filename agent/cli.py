"""``python -m agent call IN.wav --out OUT.wav``: a whole call from a WAV file.

The input is streamed into a VoiceSession in 20 ms frames (in real time, or
as fast as the pipeline allows with ``--fast``); everything the agent says is
written to OUT.wav on the same timeline as the input, and every session event
is printed to stdout as one JSON object per line.

In ``--fast`` mode the input's silences pass at the speed of the computer,
so ``voice_to_voice_ms`` then measures the pipeline's compute only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.events import AgentEvent, SessionState
from agent.runtime import AgentModels
from agent.session import VoiceSession
from media.errors import AudioFormatError
from media.frames import FRAME_MS, PIPELINE_RATE, AudioFrame
from media.resample import resample
from media.wav import read_wav, write_wav

TAIL_LIMIT_S = 90.0
"""After the input ends, wait at most this long for the agent to finish."""
IDLE_END_S = 1.0
"""The call ends once the agent has been idle this long after the input ended."""


def _frames(pcm: np.ndarray) -> Iterator[AudioFrame]:
    n = PIPELINE_RATE * FRAME_MS // 1000
    for i in range(0, pcm.size - pcm.size % n, n):
        yield AudioFrame(pcm[i : i + n], PIPELINE_RATE, 1, i / PIPELINE_RATE)


def load_input(path: Path) -> np.ndarray:
    """Read any PCM WAV and convert it to 16 kHz mono int16."""
    frame = read_wav(path).to_mono()
    return resample(frame.samples, frame.sample_rate, PIPELINE_RATE)


def _idle(session: VoiceSession) -> bool:
    return session.state is SessionState.LISTENING and session.playout.buffered_ms == 0


async def run_call(session: VoiceSession, pcm: np.ndarray, *, fast: bool) -> np.ndarray:
    """Drive ``session`` with ``pcm``; return the agent's audio on the input's timeline."""
    out: list[np.ndarray] = []
    silence = AudioFrame.silence(PIPELINE_RATE)
    frame_s = FRAME_MS / 1000
    if fast:
        for frame in _frames(pcm):
            session.push_audio(frame)
            await session.wait_settled()
            out.append(session.playout.pull()[0])
        idle_for, waited = 0.0, 0.0
        while idle_for < IDLE_END_S and waited < TAIL_LIMIT_S:
            session.push_audio(silence)
            await session.wait_settled()
            out.append(session.playout.pull()[0])
            waited += frame_s
            idle_for = idle_for + frame_s if _idle(session) else 0.0
        return np.concatenate(out)

    async def feed() -> None:
        start = time.monotonic()
        n = 0
        for frame in _frames(pcm):
            session.push_audio(frame)
            n += 1
            await asyncio.sleep(max(0.0, start + n * frame_s - time.monotonic()))
        idle_since: float | None = None
        deadline = time.monotonic() + TAIL_LIMIT_S
        while time.monotonic() < deadline:
            session.push_audio(silence)
            n += 1
            if _idle(session):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= IDLE_END_S:
                    return
            else:
                idle_since = None
            await asyncio.sleep(max(0.0, start + n * frame_s - time.monotonic()))

    async def play() -> None:
        async for frame, _ in session.playout.frames():
            out.append(frame.samples)

    player = asyncio.create_task(play(), name="cli-playout")
    try:
        await feed()
    finally:
        player.cancel()
        await asyncio.gather(player, return_exceptions=True)
    return np.concatenate(out) if out else np.zeros(0, np.int16)


async def _call(args: argparse.Namespace) -> int:
    pcm = load_input(args.input)
    config = AgentConfig.load(args.config)
    models = await asyncio.to_thread(AgentModels.load, config)

    def print_event(event: AgentEvent) -> None:
        print(json.dumps(event.to_dict()), flush=True)

    try:
        async with VoiceSession(config, models, sinks=[print_event]) as session:
            audio = await run_call(session, pcm, fast=args.fast)
        write_wav(args.out, AudioFrame(audio, PIPELINE_RATE))
    finally:
        models.close()
    return 0


def _say(texts: list[str], out: Path, gap: float) -> int:
    from agent.providers.piper import PiperTTS

    tts = PiperTTS()
    try:
        pause = np.zeros(int(gap * PIPELINE_RATE), np.int16)
        parts: list[np.ndarray] = [pause[: PIPELINE_RATE // 2]]
        for text in texts:
            speech = np.concatenate(tts.synthesize(text))
            parts += [resample(speech, tts.sample_rate, PIPELINE_RATE), pause]
        write_wav(out, AudioFrame(np.concatenate(parts), PIPELINE_RATE))
    finally:
        tts.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m agent``."""
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    call = sub.add_parser("call", help="stream a WAV file into a voice session")
    call.add_argument("input", type=Path, help="the caller's audio (PCM WAV, any rate)")
    call.add_argument("--out", type=Path, required=True, help="WAV file for the agent's audio")
    call.add_argument("--fast", action="store_true", help="do not pace the input in real time")
    call.add_argument("--config", type=Path, default=None, help="agent YAML file")
    call.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    say = sub.add_parser("say", help="synthesize caller speech to a WAV (for trying calls)")
    say.add_argument("texts", nargs="+", help="sentences; each becomes one spoken turn")
    say.add_argument("--out", type=Path, required=True, help="WAV file to write (16 kHz)")
    say.add_argument("--gap", type=float, default=2.0, help="seconds of silence between turns")
    say.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "say":
            return _say(args.texts, args.out, args.gap)
        return asyncio.run(_call(args))
    except (AudioFormatError, AgentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
