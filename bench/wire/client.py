"""The benchmark's caller: the project's WebRTC caller peer plus rooms, clips and traces.

The peer itself (paced microphone track, recording of the agent's audio and
events) is ``media.caller.CallerPeer``, shared with the call tests, so the
benchmark measures the same caller the tests exercise. This module adds what
a scenario needs on top: a room and the HTTP offer, clips that know where the
speech is in them (``BenchClip``), and the received audio as an ``AudioTrace``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from bench.wire.audio import AudioTrace
from bench.wire.speech import Utterance
from media.caller import CallerPeer, Clip
from media.frames import PIPELINE_RATE


class CallError(RuntimeError):
    """A call could not be set up (refused, timed out)."""


@dataclass(frozen=True, eq=False)
class BenchClip:
    """A spoken utterance queued on the caller's track."""

    utterance: Utterance
    clip: Clip

    @property
    def speech_start_at(self) -> float:
        """When the first sample of speech was sent (monotonic)."""
        return self.clip.sent_at(self.utterance.speech_start, PIPELINE_RATE)

    @property
    def speech_end_at(self) -> float:
        """When the last sample of speech was sent (monotonic)."""
        return self.clip.sent_at(self.utterance.speech_end, PIPELINE_RATE)

    async def wait(self, within_s: float) -> bool:
        """Wait until the whole clip is sent; False if that takes over ``within_s``."""
        return await self.clip.wait(within_s)


class WireCaller:
    """One caller: a room, a ``CallerPeer``, its audio and its events."""

    has_events: ClassVar[bool] = True
    """Whether the server sends session events (transcripts, replies, metrics)."""

    def __init__(self, client: httpx.AsyncClient, label: str = "caller") -> None:
        self.client = client
        self.label = label
        self.peer = CallerPeer()
        self.room: dict[str, Any] | None = None
        self.call_id: str | None = None
        self.connect_s: float | None = None

    @property
    def events(self) -> list[tuple[float, dict[str, Any]]]:
        """(arrival monotonic time, event) of every data-channel event."""
        return self.peer.events

    async def connect(self, within_s: float = 30.0) -> float:
        """Create a room, offer, wait for the media and the data channel; returns seconds."""
        t0 = time.monotonic()
        r = await self.client.post("/v1/rooms", json={"name": self.label})
        if r.status_code != 201:
            raise CallError(f"room refused: {r.status_code} {r.text[:200]}")
        room: dict[str, Any] = r.json()
        self.room = room
        r = await self.client.post(
            f"/v1/rooms/{room['id']}/offer",
            json={"sdp": await self.peer.offer(), "type": "offer"},
            headers={"Authorization": f"Bearer {room['token']}"},
        )
        if r.status_code != 200:
            raise CallError(f"offer refused: {r.status_code} {r.text[:200]}")
        answer = r.json()
        self.call_id = str(answer["call_id"])
        await self.peer.accept(answer["sdp"], answer["type"])
        if not await self.wait_until(
            lambda: self.peer.connected, within_s - (time.monotonic() - t0)
        ):
            state = self.peer.pc.connectionState
            raise CallError(f"call not connected within {within_s} s ({state})")
        self.connect_s = time.monotonic() - t0
        return self.connect_s

    def say(self, utterance: Utterance) -> BenchClip:
        """Queue an utterance on the caller's track."""
        return BenchClip(utterance, self.peer.track.play(utterance.pcm, PIPELINE_RATE))

    async def wait_until(self, predicate: Callable[[], bool], within_s: float) -> bool:
        """Poll ``predicate`` every 20 ms; False if it is still false after ``within_s``."""
        return await self.peer.wait_until(predicate, within_s)

    def of_type(self, kind: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        """Events of one type that arrived at or after ``since`` (monotonic)."""
        return self.peer.of_type(kind, since)

    def trace(self) -> AudioTrace:
        """The agent's received audio so far."""
        p = self.peer
        return AudioTrace.of(p.frame_times, p.frame_dbfs, p.frame_silent)

    def last_loud(self, threshold_dbfs: float) -> float | None:
        """Arrival time of the latest received frame louder than the threshold."""
        p = self.peer
        for t, db in zip(reversed(p.frame_times), reversed(p.frame_dbfs), strict=True):
            if db > threshold_dbfs:
                return t
        return None

    def loud_since(self, since: float, threshold_dbfs: float) -> float | None:
        """Arrival time of the first frame after ``since`` louder than the threshold."""
        times, dbfs = self.peer.frame_times, self.peer.frame_dbfs
        i = len(times)
        while i > 0 and times[i - 1] >= since:
            i -= 1
        for j in range(i, len(times)):
            if dbfs[j] > threshold_dbfs:
                return times[j]
        return None

    async def hang_up(self) -> None:
        """Delete the room (which ends the call on the server), then close the peer."""
        room = self.room
        if room is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.delete(
                    f"/v1/rooms/{room['id']}",
                    headers={"Authorization": f"Bearer {room['token']}"},
                    timeout=15,
                )
        await self.peer.close()
