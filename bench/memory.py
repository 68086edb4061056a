"""The server's resident memory under a fuzzing pass of the HTTP utilities (issue 14, defect 4).

Starts ``python -m signaling`` on a free loopback port (SIP off, a data
directory of its own), then hammers ``POST /v1/chat/text``, ``POST
/v1/voice/tts`` and ``POST /v1/voice/stt`` with varied inputs: long and
unpunctuated texts, many distinct sessions, continued sessions, foreign
session ids, non-speech and garbage audio, truncated files and bodies that
are not what they claim. The server's RSS (``VmRSS``) is read after each
phase and every few requests, then again while the server sits idle, and the
curve is printed (and written as JSON with ``--json``).

::

    .venv/bin/python -m bench.memory [--rounds 3] [--concurrency 4] [--settle 30]
        [--json out.json] [--env KEY=VALUE ...]

``--env`` passes settings to the server (e.g. ``MALLOC_ARENA_MAX=8`` to
compare allocator settings). RSS is also sampled every 0.2 s for the true
peak; past ``--max-rss-mb`` the server is killed and the run stops (the
machine is shared: an unbounded server must not take it down). It prints
figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.fuzz import Fuzzer, Request, burst
from bench.wire.server import ServerProcess


def rss_mb(pid: int) -> float:
    """``VmRSS`` of a process and its child processes (a supervisor's workers), in MiB.

    ``OSError`` when the process itself is gone.
    """
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:  # a thread may end between the listing and the read
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            with contextlib.suppress(OSError):
                total += rss_mb(int(child))
    return total


@dataclass
class Point:
    """One RSS reading."""

    label: str
    requests: int
    seconds: float
    rss_mb: float


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, fuzz it, read RSS; returns the results document."""
    work = Path(tempfile.mkdtemp(prefix="parley-memory-"))
    env = dict(item.split("=", 1) for item in args.env)
    env.setdefault("PYTHONFAULTHANDLER", "1")  # a crash leaves its stacks in the server log
    server = ServerProcess(config=None, log_path=work / "server.log", env=env)
    await server.start()
    rng = random.Random(args.seed)
    fuzz = Fuzzer()
    t0 = time.monotonic()
    points: list[Point] = []
    sent = 0

    def mark(label: str) -> None:
        point = Point(label, sent, round(time.monotonic() - t0, 1), round(rss_mb(server.pid), 1))
        points.append(point)
        print(f"{point.seconds:7.1f} s  {point.requests:5d} req  {point.rss_mb:8.1f} MB  {label}")
        sys.stdout.flush()

    phases: list[tuple[str, list[Request], int]] = [
        ("chat: new sessions", [fuzz.chat_new], args.chat),
        ("chat: continued and bad", [fuzz.chat_continue, fuzz.chat_bad], args.chat),
        ("tts", [fuzz.tts], args.tts),
        ("stt", [fuzz.stt], args.stt),
        ("mixed", [fuzz.chat_new, fuzz.chat_bad, fuzz.tts, fuzz.stt], args.chat),
    ]
    failures = 0
    sampled_peak = 0.0
    aborted: str | None = None

    async def watch() -> str:
        """Sample RSS until it passes the limit or the server is gone; says which."""
        nonlocal sampled_peak
        while True:
            try:
                sampled_peak = max(sampled_peak, rss_mb(server.pid))
            except OSError:
                code = server.proc.returncode if server.proc is not None else None
                return f"the server died (exit status {code})"
            if sampled_peak > args.max_rss_mb:
                if server.proc is not None:
                    server.proc.kill()
                return f"RSS passed {args.max_rss_mb:.0f} MB: server killed"
            await asyncio.sleep(0.2)

    async def fuzz_all(client: httpx.AsyncClient) -> None:
        nonlocal sent, failures
        for round_no in range(args.rounds):
            for name, kinds, n in phases:
                failures += await burst(client, kinds, n, args.concurrency, rng)
                sent += n
                mark(f"round {round_no + 1}: after {name}")

    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=600) as client:
            await asyncio.sleep(2.0)
            mark("ready (idle)")
            watcher = asyncio.create_task(watch())
            fuzzing = asyncio.create_task(fuzz_all(client))
            try:
                await asyncio.wait({watcher, fuzzing}, return_when=asyncio.FIRST_COMPLETED)
                if watcher.done():
                    aborted = watcher.result()
                    print(f"aborted: {aborted}", flush=True)
                else:
                    await fuzzing  # raises what the fuzz raised
                    deadline = time.monotonic() + args.settle
                    while time.monotonic() < deadline:
                        await asyncio.sleep(min(10.0, max(deadline - time.monotonic(), 0.0)))
                        mark("idle")
            finally:
                for task in (watcher, fuzzing):
                    task.cancel()
                await asyncio.gather(watcher, fuzzing, return_exceptions=True)
    finally:
        await server.stop()
    start, peak, end = points[0].rss_mb, max(p.rss_mb for p in points), points[-1].rss_mb
    summary = {
        "aborted": aborted,
        "rss_start_mb": start,
        "rss_sampled_peak_mb": round(max(sampled_peak, peak), 1),
        "rss_peak_mb": peak,
        "rss_end_mb": end,
        "growth_pct": round(100 * (end - start) / start, 1),
        "requests": sent,
        "server_errors": fuzz.server_errors,
        "transport_errors": failures,
        "statuses": fuzz.statuses,
        "env": env,
        "points": [p.__dict__ for p in points],
        "server_log": str(server.log_path),
    }
    print(
        f"RSS start {start:.0f} MB, peak {summary['rss_sampled_peak_mb']:.0f} MB, "
        f"after settling {end:.0f} MB "
        f"({summary['growth_pct']:+.1f} %); {sent} requests, {fuzz.server_errors} 5xx, "
        f"{failures} without an answer"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="passes over the phases")
    p.add_argument("--chat", type=int, default=40, help="chat requests per chat phase")
    p.add_argument("--tts", type=int, default=16, help="TTS requests per pass")
    p.add_argument("--stt", type=int, default=16, help="STT requests per pass")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--settle", type=float, default=30.0, help="idle seconds read at the end")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-rss-mb", type=float, default=6000.0, help="kill the server past it")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    doc = asyncio.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
