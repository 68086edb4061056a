"""Where the time between the server's first audio and the caller hearing it goes.

::

    .venv/bin/python -m bench.playout_latency [--trials 10] [--piper]

Two aiortc peers over loopback: the agent's side is the project's own
``PlayoutTrack`` on a ``PlayoutBuffer`` (as in a call), the caller is
``media.caller.CallerPeer`` (the wire benchmark's caller). Between silences,
a loud 400 ms tone is pushed into the playout buffer; per trial, monotonic
timestamps of:

* **push**: the audio enters the playout buffer (the reply's TTS pushes it);
* **pull**: the pacer's next tick hands it to aiortc's encoder
  (``PlayoutBuffer.first_audio_at``);
* **rtp**: the first RTP packet carrying it reaches the caller's receiver
  (Opus encoding, SRTP, loopback UDP; told from the silence packets by size);
* **decoded**: the caller's track yields the first loud frame (aiortc's
  jitter buffer holds 4 packets before it releases one, then Opus decoding).

With ``--piper``, the local voice's leading quiet is measured too: how long
Piper's first chunk of a reply stays under the wire benchmark's loudness
threshold (-45 dBFS per 20 ms frame), which the benchmark counts as
network/playout since it measures the first loud frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from media.caller import CallerPeer
from media.frames import rms_dbfs
from media.playout import PlayoutBuffer
from media.webrtc import PlayoutTrack

RATE = 48_000
LOUD_DBFS = -45.0
SPEECH_PAYLOAD_BYTES = 40
"""Opus packets of digital silence are a few bytes; a loud tone's are far larger."""


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


async def trials(n: int) -> dict[str, Any]:
    arrivals: list[tuple[float, int]] = []
    original = RTCRtpReceiver._handle_rtp_packet

    async def recording(self: RTCRtpReceiver, packet: RtpPacket, arrival_time_ms: int) -> None:
        arrivals.append((time.monotonic(), len(packet.payload)))
        await original(self, packet, arrival_time_ms)

    RTCRtpReceiver._handle_rtp_packet = recording  # type: ignore[method-assign]
    server = RTCPeerConnection()
    track = PlayoutTrack(RATE)
    server.addTrack(track)
    playout = PlayoutBuffer(RATE)
    track.attach(playout)
    caller = CallerPeer()
    rows: list[dict[str, float]] = []
    try:
        offer = await caller.offer()
        await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await server.setLocalDescription(await server.createAnswer())
        await caller.accept(server.localDescription.sdp)
        deadline = time.monotonic() + 10
        while caller.pc.connectionState != "connected" or len(caller.frame_times) < 25:
            if time.monotonic() > deadline:
                raise RuntimeError("the peers did not connect")
            await asyncio.sleep(0.02)
        silent_sizes = [size for _, size in arrivals[-20:]]
        for i in range(n):
            await asyncio.sleep(0.5 + 0.013 * i)  # a different phase to the 20 ms tick each time
            uid = f"u{i}"
            segment = playout.open_segment(uid, "tone")
            pushed = time.monotonic()
            await playout.push(segment, tone(0.4))
            playout.close_segment(segment)
            playout.finish_utterance(uid)
            await playout.wait_done(uid)
            await asyncio.sleep(0.3)
            pulled = playout.first_audio_at(uid)
            rtp = next(
                (t for t, size in arrivals if t >= pushed and size > SPEECH_PAYLOAD_BYTES), None
            )
            heard = next(
                (
                    t
                    for t, db in zip(caller.frame_times, caller.frame_dbfs, strict=True)
                    if t >= pushed and db > LOUD_DBFS
                ),
                None,
            )
            playout.forget(uid)
            if pulled is None or rtp is None or heard is None:
                continue
            rows.append(
                {
                    "push_to_pull_ms": (pulled - pushed) * 1000,
                    "pull_to_rtp_ms": (rtp - pulled) * 1000,
                    "rtp_to_decoded_ms": (heard - rtp) * 1000,
                    "total_ms": (heard - pushed) * 1000,
                }
            )
    finally:
        RTCRtpReceiver._handle_rtp_packet = original  # type: ignore[method-assign]
        await caller.close()
        await server.close()
    keys = ("push_to_pull_ms", "pull_to_rtp_ms", "rtp_to_decoded_ms", "total_ms")
    return {
        "trials": len(rows),
        "silence_packet_bytes": sorted(set(silent_sizes)),
        "median_ms": {k: round(statistics.median(r[k] for r in rows), 1) for k in keys},
        "max_ms": {k: round(max(r[k] for r in rows), 1) for k in keys},
    }


def piper_leading_quiet() -> dict[str, Any]:
    """How long each reply's first Piper chunk stays below the loudness threshold."""
    from agent.providers.piper import PiperTTS

    tts = PiperTTS()
    texts = (
        "Paris is the capital of France.",
        "Sure, here it is.",
        "A spider has eight legs.",
        "Water boils at one hundred degrees.",
        "Hello! How can I help you today?",
    )
    out: dict[str, float] = {}
    try:
        for text in texts:
            pcm = np.concatenate(tts.synthesize(text))
            frame = tts.sample_rate * 20 // 1000
            first = next(
                (
                    i
                    for i in range(0, pcm.size - frame, frame)
                    if rms_dbfs(pcm[i : i + frame]) > LOUD_DBFS
                ),
                pcm.size,
            )
            out[text] = round(first / tts.sample_rate * 1000, 1)
    finally:
        tts.close()
    return {"leading_quiet_ms": out, "median_ms": statistics.median(out.values())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--piper", action="store_true", help="also measure Piper's leading quiet")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"webrtc_loopback": asyncio.run(trials(args.trials))}
    if args.piper:
        result["piper"] = piper_leading_quiet()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
