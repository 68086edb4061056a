"""The cloud vendors of the ``cloud`` scenario, served on loopback in a process of their own.

::

    .venv/bin/python -m bench.wire.vendors [--llm-first-token-ms 150] [--llm-tokens-per-s 400]
        [--stt-latency-ms 250] [--tts-first-audio-ms 200] [--tts-realtime-factor 50]
        [--tts-chunk-chars 4]

serves Groq (``tests.vendors.openai_api.OpenAIAPIServer``: streamed chat
completions and Whisper transcriptions) and ElevenLabs
(``tests.vendors.elevenlabs_api.ElevenLabsAPI``: the input-streaming
WebSocket and HTTP streaming) on free 127.0.0.1 ports, with the latencies of
real vendors injected (the defaults, ``VendorLatencies``). The keys come from
``GROQ_API_KEY`` and ``ELEVENLABS_API_KEY``. The first line on stdout is JSON
with both base URLs once both listen; on SIGINT or SIGTERM the process stops
and prints a second JSON line with the requests it answered.

Why a process of its own: served from the benchmark's caller process, the
vendors' HTTP, SSE and WebSocket work would run on the callers' event loop
and delay their 20 ms media timers, which the caller-side timing relies on;
here their CPU is also measured apart from the server's and the callers'.

What the loopback vendors say:

* **LLM**: a short canned answer of one or two sentences to each of the
  benchmark's questions (``ANSWERS``, keyed by ``bench.wire.speech.QUESTIONS``),
  a generic sentence to anything else, streamed one word per chunk at
  ``llm_tokens_per_s`` after ``llm_first_token_s``, so replies have the
  length (and the spoken duration) of a real assistant's.
* **STT**: the loopback cannot transcribe. Each transcription answers, after
  ``stt_latency_s``, the next of the benchmark's questions in turn (not the
  one the caller asked: requests from simultaneous calls interleave), so the
  LLM gets a plausible question and the replies vary in length as real ones
  do. The transcript only feeds the LLM; no scenario checks it.
* **TTS**: ``ElevenLabsAPI``'s synthetic voice, 60 ms of audio per character
  (about 170 words a minute), first audio ``tts_first_audio_s`` after the
  text that starts a generation (the service's chunk length schedule, which
  the adapter sets, decides when that is), then audio at ``tts_realtime_factor``
  times real time, ``tts_chunk_chars`` characters per message.

Recorded requests are counted and dropped every few seconds, so a long run
does not keep every uploaded WAV in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench.wire.speech import QUESTIONS
from tests.vendors.elevenlabs_api import Behaviour, ElevenLabsAPI
from tests.vendors.openai_api import ChatReply, OpenAIAPIServer, TranscriptionReply

ANSWERS: Mapping[str, str] = dict(
    zip(
        QUESTIONS,
        (
            "The capital of France is Paris, a city famous for the Eiffel Tower and its cafes.",
            "A spider has eight legs. Insects have six, which is one way to tell them apart.",
            "On a clear day the sky is blue, because the air scatters blue sunlight the most.",
            "You might enjoy The Hobbit by Tolkien. It is a warm and funny adventure.",
            "Summer is usually warm and sunny, with long days and the odd thunderstorm.",
            "Put the egg in boiling water for about seven minutes, then cool it in cold water.",
            "Romeo and Juliet was written by William Shakespeare in the fifteen nineties.",
            "Two plus two is four.",
            "The moon is about a quarter as wide as the Earth, and it always shows us the same "
            "side.",
            "How about a simple pasta with tomatoes, garlic and basil? It takes twenty minutes.",
            "The sun is about one hundred and fifty million kilometers away. Its light takes "
            "eight minutes to reach us.",
            "My name is Parley, your voice assistant. How can I help you today?",
            "Cats purr when they are content, and also to calm themselves when they are stressed.",
            "Mount Everest is about eight thousand eight hundred and fifty meters tall.",
            "I cannot see a clock, but Tokyo is nine hours ahead of Greenwich Mean Time.",
            "Jupiter is the largest planet in our solar system. More than a thousand Earths "
            "would fit inside it.",
            "Bees collect nectar from flowers and fan it with their wings in the hive until it "
            "thickens into honey.",
            "How about Biscuit or Max? Short names are easy for a dog to learn.",
            "Most penguins live in the southern hemisphere, from Antarctica to the coasts of "
            "South America and Africa.",
            "A leap year has three hundred and sixty six days, with an extra day in February.",
        ),
        strict=True,
    )
)
"""The loopback LLM's answer to each of the benchmark's questions."""
GENERIC_ANSWER = "I am not sure about that, but I am happy to help with something else."
"""The answer to anything that is not one of the benchmark's questions."""
TRIM_EVERY_S = 5.0
"""How often recorded requests are counted and dropped."""
DEFAULT_KEYS = {"GROQ_API_KEY": "bench-groq-key", "ELEVENLABS_API_KEY": "bench-elevenlabs-key"}


def answer(question: str) -> str:
    """The loopback LLM's reply to the last user message."""
    return ANSWERS.get(question.strip(), GENERIC_ANSWER)


@dataclass(frozen=True, slots=True)
class VendorLatencies:
    """What the loopback vendors inject, as realistic figures for Groq and ElevenLabs."""

    llm_first_token_s: float = 0.150
    llm_tokens_per_s: float = 400.0
    stt_latency_s: float = 0.250
    """From the upload to the transcript, per request."""
    tts_first_audio_s: float = 0.200
    """From the text that starts a generation to its first audio."""
    tts_realtime_factor: float = 50.0
    """Seconds of audio produced per second once a generation speaks."""
    tts_chunk_chars: int = 4
    """Characters of text per WebSocket audio message (60 ms of audio each)."""

    def args(self) -> list[str]:
        """The command-line flags of ``python -m bench.wire.vendors`` for these figures."""
        return [
            f"--llm-first-token-ms={self.llm_first_token_s * 1000:g}",
            f"--llm-tokens-per-s={self.llm_tokens_per_s:g}",
            f"--stt-latency-ms={self.stt_latency_s * 1000:g}",
            f"--tts-first-audio-ms={self.tts_first_audio_s * 1000:g}",
            f"--tts-realtime-factor={self.tts_realtime_factor:g}",
            f"--tts-chunk-chars={self.tts_chunk_chars}",
        ]

    def to_json(self) -> dict[str, float]:
        """JSON-ready figures."""
        return asdict(self)


# ------------------------------------------------------------------ the vendor process


class _GroqLoopback(OpenAIAPIServer):
    """Groq's API answering each question with ``answer`` and each upload with the next
    question in turn (see the module docstring)."""

    def __init__(self, api_key: str, latencies: VendorLatencies) -> None:
        self._transcripts: Iterator[TranscriptionReply] = itertools.cycle(
            [TranscriptionReply.of(q, latency_s=latencies.stt_latency_s) for q in QUESTIONS]
        )
        chat = ChatReply(
            text=answer,
            first_token_s=latencies.llm_first_token_s,
            tokens_per_s=latencies.llm_tokens_per_s,
        )
        super().__init__(api_key, chat=chat)

    @property
    def transcription(self) -> TranscriptionReply:
        """The answer to the next transcription request (read once per request)."""
        return next(self._transcripts)

    @transcription.setter
    def transcription(self, reply: TranscriptionReply) -> None:
        """Ignored: the answers cycle through the questions."""


def _tally(groq: OpenAIAPIServer, eleven: ElevenLabsAPI, served: Counter[str]) -> None:
    """Count the recorded requests by endpoint and forget them."""
    served.update(f"groq {r.endpoint}" for r in groq.requests)
    served.update(f"elevenlabs {r.kind}" for r in eleven.requests)
    groq.requests.clear()
    eleven.reset()


async def serve(latencies: VendorLatencies, keys: Mapping[str, str]) -> dict[str, int]:
    """Serve both vendors until SIGINT or SIGTERM; returns the requests answered."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    behaviour = Behaviour(
        first_audio_s=latencies.tts_first_audio_s,
        realtime_factor=latencies.tts_realtime_factor,
        chunk_chars=latencies.tts_chunk_chars,
    )
    served: Counter[str] = Counter()
    async with (
        _GroqLoopback(keys["GROQ_API_KEY"], latencies) as groq,
        ElevenLabsAPI(keys["ELEVENLABS_API_KEY"], default=behaviour) as eleven,
    ):
        ready = {"groq_base_url": groq.groq_base_url, "elevenlabs_base_url": eleven.base_url}
        print(json.dumps(ready), flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TRIM_EVERY_S)
            _tally(groq, eleven, served)
    return dict(sorted(served.items()))


def parse_args(argv: Sequence[str] | None) -> VendorLatencies:
    """The latencies from the command line (defaults: ``VendorLatencies``)."""
    d = VendorLatencies()
    p = argparse.ArgumentParser(
        prog="python -m bench.wire.vendors",
        description="Serve loopback Groq and ElevenLabs APIs with realistic latencies.",
    )
    p.add_argument("--llm-first-token-ms", type=float, default=d.llm_first_token_s * 1000)
    p.add_argument("--llm-tokens-per-s", type=float, default=d.llm_tokens_per_s)
    p.add_argument("--stt-latency-ms", type=float, default=d.stt_latency_s * 1000)
    p.add_argument("--tts-first-audio-ms", type=float, default=d.tts_first_audio_s * 1000)
    p.add_argument("--tts-realtime-factor", type=float, default=d.tts_realtime_factor)
    p.add_argument("--tts-chunk-chars", type=int, default=d.tts_chunk_chars)
    a = p.parse_args(argv)
    if a.llm_tokens_per_s <= 0 or a.tts_realtime_factor <= 0 or a.tts_chunk_chars < 1:
        p.error("rates and chunk sizes must be positive")
    return VendorLatencies(
        llm_first_token_s=a.llm_first_token_ms / 1000,
        llm_tokens_per_s=a.llm_tokens_per_s,
        stt_latency_s=a.stt_latency_ms / 1000,
        tts_first_audio_s=a.tts_first_audio_ms / 1000,
        tts_realtime_factor=a.tts_realtime_factor,
        tts_chunk_chars=a.tts_chunk_chars,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: serve until interrupted, then print what was served."""
    latencies = parse_args(argv)
    keys = {name: os.environ.get(name) or default for name, default in DEFAULT_KEYS.items()}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        served = runner.run(serve(latencies, keys))
    print(json.dumps({"served": served}), flush=True)
    return 0


# ------------------------------------------------------------- the benchmark's handle


class VendorError(RuntimeError):
    """The vendor process did not start or died."""


class VendorProcess:
    """``python -m bench.wire.vendors`` as a subprocess, with keys of its own.

    ``start()`` waits for its ready line; ``server_env()`` is the environment
    that points a server's provider chains at it; ``stop()`` returns what it
    served. Its stderr goes to ``log_path``.
    """

    def __init__(
        self,
        latencies: VendorLatencies,
        log_path: Path,
        *,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        self.latencies = latencies
        self.log_path = log_path
        self.python = python
        self.cwd = cwd
        self.keys = {name: secrets.token_urlsafe(16) for name in DEFAULT_KEYS}
        self.proc: asyncio.subprocess.Process | None = None
        self.urls: dict[str, str] = {}

    @property
    def pid(self) -> int:
        """The vendor process's id."""
        if self.proc is None:
            raise VendorError("vendors not started")
        return self.proc.pid

    async def start(self, timeout_s: float = 60.0) -> float:
        """Spawn the process and wait for its ready line; returns seconds to ready."""
        cmd = [self.python, "-m", "bench.wire.vendors", *self.latencies.args()]
        env = {**os.environ, **self.keys, "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=subprocess.PIPE, stderr=log, env=env, cwd=self.cwd
            )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
            urls = json.loads(line)
        except (TimeoutError, ValueError):
            await self.stop()
            raise VendorError(f"vendors not ready within {timeout_s} s: {self.tail()}") from None
        if not isinstance(urls, dict):
            await self.stop()
            raise VendorError(f"vendors said {line!r}")
        self.urls = {str(k): str(v) for k, v in urls.items()}
        return time.monotonic() - t0

    def server_env(self) -> dict[str, str]:
        """A server's environment for the chains groq,local (STT, LLM) and elevenlabs,local."""
        return {
            "PARLEY_STT": "groq,local",
            "PARLEY_LLM": "groq,local",
            "PARLEY_TTS": "elevenlabs,local",
            "GROQ_BASE_URL": self.urls["groq_base_url"],
            "ELEVENLABS_BASE_URL": self.urls["elevenlabs_base_url"],
            **self.keys,
        }

    def tail(self, lines: int = 20) -> str:
        """The end of the vendors' log."""
        try:
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout_s: float = 15.0) -> dict[str, Any] | None:
        """SIGINT, then SIGKILL past ``timeout_s``; returns the requests served (None: unknown)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
        for line in reversed(out.decode("utf-8", "replace").splitlines()):
            with contextlib.suppress(ValueError):
                last = json.loads(line)
                if isinstance(last, dict) and isinstance(last.get("served"), dict):
                    return dict(last["served"])
        return None


if __name__ == "__main__":
    sys.exit(main())
