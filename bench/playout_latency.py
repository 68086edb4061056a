"""Where the fixed time between the two ends of a WebRTC call goes, each way.

::

    .venv/bin/python -m bench.playout_latency [--trials 10] [--inbound-prefetch 0] [--piper]

Two aiortc peers over loopback: the agent's side is the project's own
``WebRtcTransport`` (its ``PlayoutTrack`` on a ``PlayoutBuffer``, and the
caller's audio through its inbound jitter buffer, ``media.jitter``), the
caller is ``media.caller.CallerPeer`` (the wire benchmark's caller, with
aiortc's own jitter buffer of 4 packets, as an honest client keeps).

**Outbound** (the agent speaks): between silences, a loud 400 ms tone is
pushed into the playout buffer; per trial, monotonic timestamps of:

* **push**: the audio enters the playout buffer (the reply's TTS pushes it);
* **pull**: the pacer's next tick hands it to aiortc's encoder
  (``PlayoutBuffer.first_audio_at``);
* **rtp**: the first RTP packet carrying it reaches the caller's receiver
  (Opus encoding, SRTP, loopback UDP; told from the silence packets by size);
* **decoded**: the caller's track yields the first loud frame (the caller's
  jitter buffer, then Opus decoding).

**Inbound** (the caller speaks): the caller's microphone plays the tone;
timestamps of **sent** (its first frame handed to the caller's encoder),
**rtp** (its first packet reaches the agent's receiver) and **decoded** (the
agent's ``inbound()`` yields the first loud frame: what the VAD gets). The
agent's jitter buffer holds ``--inbound-prefetch`` packets (the server's
``PARLEY_WEBRTC_INBOUND_PREFETCH``; 4 is aiortc's own default).

With ``--piper``, the local voice's leading quiet: how long the first chunk
of a reply stays under the wire benchmark's loudness threshold (-45 dBFS per
20 ms frame), as Piper makes it and as the reply plays it after
``media.leadin`` trims it. The wire benchmark counts it as network/playout,
since it measures the first loud frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from media.caller import CallerPeer
from media.frames import PCM, rms_dbfs
from media.jitter import INBOUND_PREFETCH
from media.leadin import LeadInTrimmer
from media.playout import PlayoutBuffer
from media.webrtc import WebRtcTransport

RATE = 48_000
LOUD_DBFS = -45.0
SPEECH_PAYLOAD_BYTES = 40
"""Opus packets of digital silence are a few bytes; a loud tone's are far larger."""


def tone(seconds: float, rate: int = RATE) -> PCM:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def first_loud(times: Iterable[tuple[float, float]], since: float) -> float | None:
    """The first time at or after ``since`` whose loudness is over the threshold."""
    return next((t for t, db in times if t >= since and db > LOUD_DBFS), None)


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    keys = list(rows[0]) if rows else []
    return {
        "trials": len(rows),
        "median_ms": {k: round(statistics.median(r[k] for r in rows), 1) for k in keys},
        "max_ms": {k: round(max(r[k] for r in rows), 1) for k in keys},
    }


class Arrivals:
    """Arrival time and payload size of every RTP packet, per receiver (aiortc patched)."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, int, RTCRtpReceiver]] = []
        self._original = RTCRtpReceiver._handle_rtp_packet

    def __enter__(self) -> Arrivals:
        original, packets = self._original, self.packets

        async def recording(self: RTCRtpReceiver, packet: RtpPacket, arrival_time_ms: int) -> None:
            packets.append((time.monotonic(), len(packet.payload), self))
            await original(self, packet, arrival_time_ms)

        RTCRtpReceiver._handle_rtp_packet = recording  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        RTCRtpReceiver._handle_rtp_packet = self._original  # type: ignore[method-assign]

    def first_speech(self, pc: RTCPeerConnection, since: float) -> float | None:
        """When the first packet of sound after ``since`` reached ``pc``'s receiver."""
        receivers = pc.getReceivers()
        return next(
            (
                t
                for t, size, receiver in self.packets
                if t >= since and size > SPEECH_PAYLOAD_BYTES and receiver in receivers
            ),
            None,
        )


async def trials(n: int, inbound_prefetch: int) -> dict[str, Any]:
    server = RTCPeerConnection()
    transport = WebRtcTransport(server, RATE, inbound_prefetch=inbound_prefetch)
    playout = PlayoutBuffer(RATE)
    transport.track.attach(playout)
    caller = CallerPeer()
    heard_by_agent: list[tuple[float, float]] = []

    async def agent_listens() -> None:
        async for frame in transport.inbound():  # what the agent's VAD gets
            heard_by_agent.append((time.monotonic(), rms_dbfs(frame.to_mono().samples)))

    outbound: list[dict[str, float]] = []
    inbound: list[dict[str, float]] = []
    with Arrivals() as arrivals:
        listener = asyncio.create_task(agent_listens(), name="bench:agent-listens")
        try:
            await server.setRemoteDescription(RTCSessionDescription(await caller.offer(), "offer"))
            await server.setLocalDescription(await server.createAnswer())
            await caller.accept(server.localDescription.sdp)
            deadline = time.monotonic() + 10
            while caller.pc.connectionState != "connected" or len(caller.frame_times) < 25:
                if time.monotonic() > deadline:
                    raise RuntimeError("the peers did not connect")
                await asyncio.sleep(0.02)
            for i in range(n):
                await asyncio.sleep(0.5 + 0.013 * i)  # another phase to the 20 ms tick each time
                uid = f"u{i}"
                segment = playout.open_segment(uid, "tone")
                pushed = time.monotonic()
                await playout.push(segment, tone(0.4))
                playout.close_segment(segment)
                playout.finish_utterance(uid)
                await playout.wait_done(uid)
                await asyncio.sleep(0.3)
                pulled = playout.first_audio_at(uid)
                rtp = arrivals.first_speech(caller.pc, pushed)
                heard = first_loud(zip(caller.frame_times, caller.frame_dbfs, strict=True), pushed)
                playout.forget(uid)
                if pulled is not None and rtp is not None and heard is not None:
                    outbound.append(
                        {
                            "push_to_pull_ms": (pulled - pushed) * 1000,
                            "pull_to_rtp_ms": (rtp - pulled) * 1000,
                            "rtp_to_decoded_ms": (heard - rtp) * 1000,
                            "total_ms": (heard - pushed) * 1000,
                        }
                    )
            for i in range(n):
                await asyncio.sleep(0.5 + 0.013 * i)
                clip = caller.track.play(tone(0.4), RATE)
                if not await clip.wait(5.0):
                    raise RuntimeError("the caller's clip was not sent")
                await asyncio.sleep(0.3)
                sent = clip.started_at
                rtp = arrivals.first_speech(server, sent)
                heard = first_loud(heard_by_agent, sent)
                if rtp is not None and heard is not None:
                    inbound.append(
                        {
                            "sent_to_rtp_ms": (rtp - sent) * 1000,
                            "rtp_to_decoded_ms": (heard - rtp) * 1000,
                            "total_ms": (heard - sent) * 1000,
                        }
                    )
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await caller.close()
            await transport.close("bench done")
    buffer = transport.inbound_buffer
    return {
        "outbound": summary(outbound),
        "inbound": {
            "prefetch": inbound_prefetch,
            "late_packets": None if buffer is None else buffer.late,
            **summary(inbound),
        },
    }


def piper_leading_quiet() -> dict[str, Any]:
    """How long each reply's first Piper chunk stays quiet, as made and as trimmed."""
    from agent.providers.piper import PiperTTS

    tts = PiperTTS()
    texts = (
        "Paris is the capital of France.",
        "Sure, here it is.",
        "A spider has eight legs.",
        "Water boils at one hundred degrees.",
        "Hello! How can I help you today?",
    )
    frame = tts.sample_rate * 20 // 1000

    def quiet_ms(pcm: PCM) -> float:
        first = next(
            (
                i
                for i in range(0, pcm.size - frame, frame)
                if rms_dbfs(pcm[i : i + frame]) > LOUD_DBFS
            ),
            pcm.size,
        )
        return round(first / tts.sample_rate * 1000, 1)

    async def first_chunk(text: str) -> PCM:
        """The reply's first chunk as the reply gets it (``stream``, not ``synthesize``)."""
        chunks = [chunk.pcm async for chunk in tts.stream(text)]
        return chunks[0]

    made: dict[str, float] = {}
    trimmed: dict[str, float] = {}
    dropped: dict[str, float] = {}
    try:
        for text in texts:
            pcm = asyncio.run(first_chunk(text))
            trimmer = LeadInTrimmer(tts.sample_rate)
            made[text] = quiet_ms(pcm)
            trimmed[text] = quiet_ms(trimmer.process(pcm))
            dropped[text] = round(trimmer.trimmed / tts.sample_rate * 1000, 1)
    finally:
        tts.close()
    return {
        "leading_quiet_ms": made,
        "median_ms": statistics.median(made.values()),
        "trimmed_leading_quiet_ms": trimmed,
        "trimmed_median_ms": statistics.median(trimmed.values()),
        "dropped_ms": dropped,
        "dropped_median_ms": statistics.median(dropped.values()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=int, default=10)
    p.add_argument(
        "--inbound-prefetch",
        type=int,
        default=INBOUND_PREFETCH,
        help="packets the agent's jitter buffer holds (4: aiortc's default)",
    )
    p.add_argument("--piper", action="store_true", help="also measure Piper's leading quiet")
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "webrtc_loopback": asyncio.run(trials(args.trials, args.inbound_prefetch))
    }
    if args.piper:
        result["piper"] = piper_leading_quiet()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
