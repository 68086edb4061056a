"""Playout buffer: the agent's outgoing audio, paced out in 20 ms frames.

The agent pushes PCM chunks tagged with the utterance and the text they speak;
a transport pulls fixed-size frames (silence when nothing is queued). The buffer
counts how many samples of every segment were actually pulled, which is what
lets the agent commit to history only the text the caller heard.

Bound and drop policy: at most ``max_buffered_ms`` of audio is queued.
Producers wait in ``push`` until there is room (back-pressure: agent speech is
never dropped while it is wanted); ``clear`` drops everything at once.

Held utterances: an utterance opened with ``held=True`` (a reply prepared
before the caller's turn is confirmed) is queued as usual but not played:
``pull`` stops at its first chunk and yields silence (it holds the line, and
audio queued behind it waits too) until ``release``; ``clear`` drops it
unheard. A held utterance has a bound of its own, ``max_held_ms`` (2 s by
default, well under the buffer's): past it its producer waits in ``push``
until the release (or the clear), so a reply prepared on a guess synthesizes
only a head start, not its whole answer, while the caller's turn is still
being heard and transcribed on the same cores. The bound counts the
utterance's queued audio; the buffer's own bound applies as well.

An echo canceller reads what the caller heard through ``tap()``: a
``ReferenceTap`` that keeps the last few hundred milliseconds of pulled frames
with their stream positions. It costs nothing until a transport asks for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from media.errors import AudioFormatError
from media.frames import FRAME_MS, PCM, AudioFrame
from media.pacer import Pacer

_RETIRED_IDS = 1024
"""How many forgotten utterance ids are remembered (so late producers cannot revive them)."""
TAP_KEEP_MS = 500
"""Default span of agent output a ``ReferenceTap`` keeps for an echo canceller."""
HELD_MS = 2_000
"""Default bound of a held utterance's queued audio (``PlayoutBuffer.max_held_ms``)."""


@dataclass(slots=True)
class SegmentPlayback:
    """What became of one text segment (one TTS chunk) of an utterance."""

    utterance_id: str
    index: int
    text: str
    pushed_samples: int = 0
    played_samples: int = 0
    complete: bool = False
    """True once the producer said no more audio follows for this segment."""

    @property
    def fraction_played(self) -> float:
        """Share of the segment's audio that was pulled (0..1)."""
        if self.pushed_samples == 0:
            return 0.0
        return min(1.0, self.played_samples / self.pushed_samples)


@dataclass(slots=True)
class _Chunk:
    segment: SegmentPlayback
    pcm: PCM
    offset: int = 0


@dataclass(slots=True)
class _Utterance:
    segments: list[SegmentPlayback] = field(default_factory=list)
    finished: bool = False
    held: bool = False
    queued: int = 0
    """Samples of this utterance queued and not yet pulled."""
    first_audio_at: float | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    unheld: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a producer waiting on the held bound may go on (released or cleared)."""


class ReferenceTap:
    """The last ``keep_ms`` of audio pulled from a ``PlayoutBuffer``, by stream position.

    A ring buffer at the playout rate: ``write`` is called by ``pull`` with
    every frame the caller is sent (filler silence included, so positions are
    contiguous); an echo canceller reads any span with ``read`` (samples that
    are older than the ring or not pulled yet read as zeros) or the newest
    ``latest(ms)``. Positions are samples since the buffer was created, the
    same clock as ``PlayoutBuffer.position``. Memory is fixed at ``keep_ms``
    of int16 samples; nothing here allocates per frame except the copy a
    reader asks for.
    """

    def __init__(self, sample_rate: int, keep_ms: int = TAP_KEEP_MS) -> None:
        if sample_rate <= 0 or keep_ms <= 0:
            raise ValueError("a reference tap needs a positive rate and span")
        self.sample_rate = sample_rate
        self.size = sample_rate * keep_ms // 1000
        self._ring = np.zeros(self.size, np.int16)
        self._end = 0
        self._speech_end = 0

    @property
    def end(self) -> int:
        """Stream position just past the newest sample held (samples)."""
        return self._end

    @property
    def start(self) -> int:
        """Stream position of the oldest sample still held (samples)."""
        return max(0, self._end - self.size)

    @property
    def speech_end(self) -> int:
        """Position just past the last frame that carried agent audio (0: none yet)."""
        return self._speech_end

    def write(self, position: int, pcm: PCM, speech: bool) -> None:
        """Record a pulled frame that starts at stream ``position``.

        Frames normally follow each other; a gap reads back as silence, and a
        frame longer than the ring keeps only its newest samples.
        """
        if position < self._end:
            raise ValueError(f"tap write at {position} goes back before {self._end}")
        if position - self._end >= self.size:
            self._ring[:] = 0
        elif position > self._end:
            self._put(self._end, np.zeros(position - self._end, np.int16))
        if pcm.size > self.size:
            position += pcm.size - self.size
            pcm = pcm[-self.size :]
        self._put(position, pcm)
        self._end = position + pcm.size
        if speech:
            self._speech_end = self._end

    def _put(self, position: int, pcm: PCM) -> None:
        at = position % self.size
        first = min(pcm.size, self.size - at)
        self._ring[at : at + first] = pcm[:first]
        self._ring[: pcm.size - first] = pcm[first:]

    def read(self, start: int, count: int) -> PCM:
        """Samples ``[start, start + count)``; positions not held read as zeros."""
        out = np.zeros(max(0, count), np.int16)
        lo, hi = max(start, self.start), min(start + count, self._end)
        if hi <= lo:
            return out
        at, n = lo % self.size, hi - lo
        first = min(n, self.size - at)
        out[lo - start : lo - start + first] = self._ring[at : at + first]
        out[lo - start + first : hi - start] = self._ring[: n - first]
        return out

    def latest(self, ms: float) -> PCM:
        """The newest ``ms`` of output (zeros where nothing was pulled yet)."""
        count = min(self.size, round(ms * self.sample_rate / 1000))
        return self.read(self._end - count, count)


class PlayoutBuffer:
    """Bounded queue of agent audio with per-segment played accounting.

    All methods must be called from the event loop thread that owns the buffer.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        max_buffered_ms: int = 20_000,
        max_held_ms: int = HELD_MS,
        frame_ms: int = FRAME_MS,
    ) -> None:
        if max_buffered_ms < frame_ms:
            raise ValueError("max_buffered_ms must hold at least one frame")
        if max_held_ms < frame_ms:
            raise ValueError("max_held_ms must hold at least one frame")
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_ms = frame_ms
        self._max_samples = sample_rate * max_buffered_ms // 1000
        self._max_held = sample_rate * max_held_ms // 1000
        self._chunks: deque[_Chunk] = deque()
        self._queued = 0
        self._utterances: dict[str, _Utterance] = {}
        self._retired: OrderedDict[str, None] = OrderedDict()
        self._room = asyncio.Event()
        self._room.set()
        self._pauses: set[str] = set()
        self._position = 0  # samples pulled since creation (stream clock)
        self._tap: ReferenceTap | None = None

    # ---------------------------------------------------------------- producer

    def open_utterance(self, utterance_id: str, *, held: bool = False) -> None:
        """Start accounting for an utterance (idempotent; a forgotten one stays closed).

        ``held``: its audio is queued but not played until ``release``, at most
        ``max_held_ms`` of it (see the module doc); it applies when the
        utterance is first opened.
        """
        if utterance_id not in self._retired:
            self._utterances.setdefault(utterance_id, _Utterance(held=held))

    def release(self, utterance_id: str) -> None:
        """Let a held utterance play (from the next ``pull``) and its producer go on past
        the held bound; a no-op for any other."""
        utt = self._utterances.get(utterance_id)
        if utt is not None:
            utt.held = False
            utt.unheld.set()

    def is_held(self, utterance_id: str) -> bool:
        """Whether the utterance is open and held."""
        utt = self._utterances.get(utterance_id)
        return utt is not None and utt.held

    def open_segment(self, utterance_id: str, text: str) -> SegmentPlayback:
        """Declare the next text segment of an utterance; its audio follows via ``push``.

        For an utterance that was already forgotten (a late producer of a
        cancelled reply) the segment is detached: its audio is dropped.
        """
        self.open_utterance(utterance_id)
        utt = self._utterances.get(utterance_id)
        if utt is None:
            return SegmentPlayback(utterance_id, -1, text)
        seg = SegmentPlayback(utterance_id, len(utt.segments), text)
        utt.segments.append(seg)
        return seg

    async def push(self, segment: SegmentPlayback, pcm: PCM) -> None:
        """Queue audio of a segment, waiting while the buffer is full (or, for a held
        utterance, while its own bound is reached)."""
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise AudioFormatError("playout expects flat mono int16 PCM")
        pos = 0
        while pos < pcm.size:
            take = await self._room_for(segment.utterance_id)
            take = min(pcm.size - pos, take)
            self._enqueue(segment, pcm[pos : pos + take])
            pos += take

    async def _room_for(self, utterance_id: str) -> int:
        """Wait until a sample of the utterance may be queued; how many may be."""
        while True:
            utt = self._utterances.get(utterance_id)
            if utt is not None and utt.held and utt.queued >= self._max_held:
                utt.unheld.clear()
                await utt.unheld.wait()
                continue
            if self._queued >= self._max_samples:
                self._room.clear()
                await self._room.wait()
                continue
            room = self._max_samples - self._queued
            if utt is not None and utt.held:
                room = min(room, self._max_held - utt.queued)
            return room

    def _enqueue(self, segment: SegmentPlayback, pcm: PCM) -> None:
        utt = self._utterances.get(segment.utterance_id)
        if utt is None or (utt.finished and utt.done.is_set()):
            return  # utterance was cleared: late audio is dropped
        if not pcm.size:
            return
        self._chunks.append(_Chunk(segment, pcm))
        segment.pushed_samples += pcm.size
        self._queued += pcm.size
        utt.queued += pcm.size

    def close_segment(self, segment: SegmentPlayback) -> None:
        """No more audio follows for this segment."""
        segment.complete = True

    def finish_utterance(self, utterance_id: str) -> None:
        """No more segments follow; ``wait_done`` returns once all is played."""
        utt = self._utterances.get(utterance_id)
        if utt is None:
            return
        utt.finished = True
        self._check_done(utterance_id)

    # ---------------------------------------------------------------- consumer

    def pull(self) -> tuple[PCM, bool]:
        """Take the next frame; returns ``(pcm, has_speech)``.

        ``has_speech`` is False for a frame that is all filler silence (empty
        buffer, paused, or a held utterance next in line). Frames are always
        exactly ``frame_samples`` long.
        """
        out = np.zeros(self.frame_samples, np.int16)
        filled = 0
        if not self._pauses:
            while filled < self.frame_samples and self._chunks:
                chunk = self._chunks[0]
                utt = self._utterances.get(chunk.segment.utterance_id)
                if utt is not None and utt.held:
                    break  # it holds the line until released
                take = min(self.frame_samples - filled, chunk.pcm.size - chunk.offset)
                out[filled : filled + take] = chunk.pcm[chunk.offset : chunk.offset + take]
                chunk.offset += take
                filled += take
                chunk.segment.played_samples += take
                if utt is not None:
                    utt.queued -= take
                if utt is not None and utt.first_audio_at is None:
                    utt.first_audio_at = time.monotonic()
                    utt.started.set()
                if chunk.offset >= chunk.pcm.size:
                    self._chunks.popleft()
                    self._check_done(chunk.segment.utterance_id)
            self._queued -= filled
            if self._queued < self._max_samples:
                self._room.set()
        if self._tap is not None:
            self._tap.write(self._position, out, filled > 0)
        self._position += self.frame_samples
        return out, filled > 0

    def pull_frame(self) -> AudioFrame:
        """``pull`` wrapped as an ``AudioFrame`` stamped with the stream position."""
        return self._pull_stamped()[0]

    def _pull_stamped(self) -> tuple[AudioFrame, bool]:
        ts = self._position / self.sample_rate
        pcm, speech = self.pull()
        return AudioFrame(pcm, self.sample_rate, 1, ts), speech

    async def frames(self) -> AsyncIterator[tuple[AudioFrame, bool]]:
        """Paced real-time ``(frame, has_speech)`` pairs, forever (silence when idle).

        Push transports (the WebSocket; later SIP and LiveKit) send these.
        Pacing is ``media.pacer.Pacer``'s: deadlines from the start time, so
        it does not drift, and a resync instead of a burst when the consumer
        falls more than a few frames behind.
        """
        pacer = Pacer(self.frame_ms / 1000)
        while True:
            await pacer.wait()
            yield self._pull_stamped()

    def tap(self, keep_ms: int = TAP_KEEP_MS) -> ReferenceTap:
        """Start a tap on pulled output for an echo canceller (idempotent).

        The tap starts at the current position and records every later
        ``pull``. A second call returns the running tap, whatever its span.
        """
        if self._tap is None:
            self._tap = ReferenceTap(self.sample_rate, keep_ms)
            self._tap.write(self._position, np.zeros(0, np.int16), False)
        return self._tap

    # ----------------------------------------------------------------- control

    @property
    def paused(self) -> bool:
        """Whether pulls currently yield silence without consuming audio."""
        return bool(self._pauses)

    def pause(self, reason: str = "paused") -> None:
        """Output silence without consuming queued audio, until ``resume(reason)``.

        Pauses have reasons ("barge-in", "hold"...): the output stays paused
        while any reason holds, so each holder releases only its own.
        """
        self._pauses.add(reason)

    def resume(self, reason: str = "paused") -> None:
        """Release one reason; with none left, output continues where it stopped."""
        self._pauses.discard(reason)

    def clear(self, utterance_id: str | None = None) -> None:
        """Drop queued audio at once (of one utterance, or of all)."""
        kept = deque(
            c
            for c in self._chunks
            if utterance_id is not None and c.segment.utterance_id != utterance_id
        )
        self._queued = sum(c.pcm.size - c.offset for c in kept)
        self._chunks = kept
        self._room.set()
        for uid, utt in self._utterances.items():
            if utterance_id is None or uid == utterance_id:
                utt.finished = True
                utt.queued = 0
                utt.done.set()
                utt.unheld.set()  # its producer goes on, and its late audio is dropped

    def forget(self, utterance_id: str) -> None:
        """Release the accounting of an utterance that is over; it can never reopen."""
        utt = self._utterances.pop(utterance_id, None)
        if utt is not None:
            utt.unheld.set()
        self._retired[utterance_id] = None
        while len(self._retired) > _RETIRED_IDS:
            self._retired.popitem(last=False)

    # ---------------------------------------------------------------- queries

    @property
    def buffered_ms(self) -> float:
        """Audio queued and not yet pulled, in milliseconds."""
        return 1000.0 * self._queued / self.sample_rate

    @property
    def position(self) -> float:
        """Seconds of output pulled since creation (stream clock)."""
        return self._position / self.sample_rate

    def segments(self, utterance_id: str) -> list[SegmentPlayback]:
        """Playback records of an utterance's segments, in order."""
        utt = self._utterances.get(utterance_id)
        return list(utt.segments) if utt else []

    def first_audio_at(self, utterance_id: str) -> float | None:
        """Monotonic time the first sample of the utterance was pulled."""
        utt = self._utterances.get(utterance_id)
        return utt.first_audio_at if utt else None

    async def wait_started(self, utterance_id: str) -> None:
        """Wait until the first sample of the utterance is pulled (returns if forgotten)."""
        self.open_utterance(utterance_id)
        utt = self._utterances.get(utterance_id)
        if utt is not None:
            await utt.started.wait()

    async def wait_done(self, utterance_id: str) -> None:
        """Wait until the utterance is finished and fully played, cleared or forgotten."""
        self.open_utterance(utterance_id)
        utt = self._utterances.get(utterance_id)
        if utt is not None:
            await utt.done.wait()

    def is_done(self, utterance_id: str) -> bool:
        """Whether the utterance is over (played out or cleared)."""
        utt = self._utterances.get(utterance_id)
        return utt is not None and utt.done.is_set()

    def _check_done(self, utterance_id: str) -> None:
        utt = self._utterances.get(utterance_id)
        if utt is None or not utt.finished or utt.done.is_set():
            return
        if not any(c.segment.utterance_id == utterance_id for c in self._chunks):
            utt.done.set()


def heard_text(segments: list[SegmentPlayback]) -> str:
    """The text of an utterance the caller actually heard.

    Fully played segments count whole; in a partly played segment, a word
    counts once playback passed the end of that word, estimating positions
    by character offsets (speech rate is close to uniform within a clause).
    """
    parts: list[str] = []
    for seg in segments:
        if seg.played_samples == 0:
            break
        frac = seg.fraction_played
        if frac >= 1.0:
            parts.append(seg.text.strip())
            continue
        parts.append(_text_prefix(seg.text, frac))
        break
    return " ".join(p for p in parts if p)


def _text_prefix(text: str, fraction: float) -> str:
    words = text.split()
    total = sum(len(w) + 1 for w in words)
    budget = fraction * total
    kept: list[str] = []
    pos = 0
    for w in words:
        pos += len(w) + 1
        if pos > budget:
            break
        kept.append(w)
    return " ".join(kept)
