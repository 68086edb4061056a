"""Memory of the LiveKit worker: idle (models loaded) and per job, without a LiveKit server.

The worker runs unregistered with the thread executor; jobs are livekit-agents'
fake jobs (``simulate_job(fake_job=True)``: its mock room, our real entrypoint,
session, store and ``rtc.AudioSource``), each speaking a greeting so a reply
(LLM-free canned text, Piper, the playout and the source) really runs. Per-job
memory is the RSS growth with ``--jobs`` jobs live, divided by their number. A
fake job has no caller audio: the caller's stream, Opus decoding and WebRTC
transport of a real room are not in the figure.

    python -m bench.livekit_memory            # one job
    python -m bench.livekit_memory --jobs 2   # two calls at once on one copy of the models

The worker keeps one idle job runner warm, as deployed (``PARLEY_LIVEKIT_IDLE_PROCESSES``
is at least 1: with none, livekit-agents 1.3.11 leaves the second of two jobs
launched back to back waiting for a runner forever; see ``signaling.livekit_settings``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
from livekit.agents.ipc.mock_room import create_mock_room

from agent.pricing import PriceTable
from signaling.livekit_settings import LiveKitSettings
from signaling.livekit_worker import WorkerRuntime, build_server
from store.settings import StoreSettings
from store.store import Store

GREETING = "Hello, you are through to the parley agent. How can I help you today?"


def rss_mb() -> float:
    """This process's resident set size in MiB."""
    return float(psutil.Process().memory_info().rss) / 2**20


async def measure(jobs: int, data_dir: Path) -> None:
    before_models = rss_mb()
    store_settings = StoreSettings(PARLEY_DATA_DIR=data_dir)
    store = await Store.open(store_settings)
    await store.close()
    loaded = WorkerRuntime.load()
    runtime = WorkerRuntime(
        server=loaded.server.model_copy(update={"no_audio_timeout_s": 600.0}),
        store=store_settings,
        config=loaded.config.model_copy(update={"greeting": GREETING}),
        models=loaded.models,
        prices=PriceTable.load(None),
        loaded_at=time.time(),
    )
    WorkerRuntime.install(runtime)
    settings = LiveKitSettings.model_validate(
        {
            "LIVEKIT_URL": "ws://127.0.0.1:7880",
            "LIVEKIT_API_KEY": "bench",
            "LIVEKIT_API_SECRET": "bench-secret-bench-secret-bench-secret",
            "PARLEY_LIVEKIT_HTTP_PORT": 0,
        }
    )
    room = create_mock_room()
    room.isconnected.return_value = True
    server = build_server(settings)
    started = asyncio.Event()
    server.on("worker_started", started.set)
    runner = asyncio.create_task(server.run(devmode=True, unregistered=True))
    await started.wait()
    await asyncio.sleep(1.0)
    gc.collect()
    idle = rss_mb()
    print(f"before models: {before_models:7.1f} MiB")
    print(f"worker idle:   {idle:7.1f} MiB (models loaded, AgentServer running, no job)")
    for i in range(jobs):
        await server.simulate_job(f"room_bench_{i}", fake_job=True)
    deadline = time.monotonic() + 120
    participant = room.local_participant
    while time.monotonic() < deadline:
        finals = [
            c
            for c in participant.send_text.call_args_list
            if c.kwargs.get("topic") == "lk.transcription"
            and c.kwargs["attributes"].get("lk.transcription_final") == "true"
        ]
        if len(finals) >= jobs:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    busy = rss_mb()
    print(f"{jobs} jobs live: {busy:7.1f} MiB (each spoke its greeting)")
    print(f"per job:       {(busy - idle) / jobs:7.1f} MiB")
    await server.aclose()
    await runner
    gc.collect()
    print(f"after jobs:    {rss_mb():7.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    print(f"pid {os.getpid()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="parley-lk-bench-") as tmp:
        asyncio.run(measure(args.jobs, Path(tmp)))


if __name__ == "__main__":
    main()
