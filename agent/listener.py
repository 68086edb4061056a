"""The listener: inbound audio -> VAD -> turn detector (+ end-of-turn model) -> STT.

It turns the caller's audio into what the session needs to know: speech
started, paused, resumed or was discarded, partial transcripts while the
caller speaks, and complete user turns with their final transcript. It knows
nothing about replies; the session (its ``Hearing`` delegate) decides what
those events mean.

Tasks (owned, reaped on ``aclose``): the audio loop, at most one partial STT
at a time, the speculative final STT started when the caller pauses (its
transcript is offered to the session while the turn is still pending, for a
preemptive reply: ``Hearing.speculative_transcript``), at most
one end-of-turn model inference (asked by the turn detector during a pause,
cancelled when the caller speaks again; a model that reads text first waits
for that pause's speculative transcript; its score goes back to the detector
with the stream time it was asked for, so a late answer is recognised as
stale), and the finalisation of each ended turn. Final transcriptions are asked with
priority over partials (the STT provider orders its queue by it), and
delivered in the order the turns ended, whichever transcription finishes
first.

Inbound bound: ``INPUT_QUEUE_FRAMES`` frames (3 s of 20 ms audio); past it
the oldest frame is dropped and counted in ``dropped_frames``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agent.config import AgentConfig
from agent.errors import ProviderError
from agent.stt import STT, Transcript
from agent.tasks import FailureHandler, TaskOwner, describe_failure
from agent.turnclock import TurnClock
from agent.turns import TurnDetector, TurnEvent, TurnEventKind
from agent.vad import WINDOW_SAMPLES
from media.frames import AudioFrame, FloatPCM

log = logging.getLogger(__name__)

INPUT_QUEUE_FRAMES = 150
"""Inbound audio queue bound: 3 s of 20 ms frames; the oldest frame is dropped past it."""

URGENT_PARTIAL_INTERVAL_S = 0.3
"""Partial interval while a paused reply waits for words to confirm a barge-in."""


@dataclass(frozen=True, slots=True)
class UserTurn:
    """A caller turn with its final transcript."""

    turn_id: str
    transcript: Transcript
    clock: TurnClock
    speech_end: float | None = None
    """Stream time at which the caller's speech stopped (None: typed input)."""


class Hearing(Protocol):
    """What the listener reports (the session implements it). Called on the event loop."""

    def speech_started(self, turn_id: str, speech_start: float, now: float) -> None:
        """Speech onset at stream time ``speech_start`` (detected at ``now``)."""
        ...

    def speech_paused(self, turn_id: str, speech_end: float) -> None:
        """The caller stopped at ``speech_end``; the end-of-turn timer runs."""
        ...

    def speech_resumed(self, turn_id: str, now: float) -> None:
        """The caller spoke again before the turn ended."""
        ...

    def speech_discarded(self, turn_id: str, now: float) -> None:
        """The speech was too short to be a turn."""
        ...

    def stream_advanced(self, now: float) -> None:
        """One VAD window was processed (stream time ``now``)."""
        ...

    def partial_transcript(self, turn_id: str, transcript: Transcript) -> None:
        """An interim transcript of the speech under way."""
        ...

    def speculative_transcript(
        self, turn_id: str, speech_end: float, transcript: Transcript
    ) -> None:
        """The caller paused at ``speech_end`` and the utterance so far is transcribed,
        while the end of turn is still pending: if the turn ends without more speech,
        its final transcript is this one (``user_turn`` follows, same ``speech_end``)."""
        ...

    def user_turn(self, turn: UserTurn) -> None:
        """A turn ended and was transcribed (its text may hold no words)."""
        ...

    def stt_failed(self, turn_id: str, error: ProviderError, final: bool) -> None:
        """A transcription failed."""
        ...


@dataclass(frozen=True, slots=True)
class EndOfTurnScorer:
    """How the listener asks the end-of-turn model (the session builds it)."""

    score: Callable[[FloatPCM, str], Awaitable[float]]
    """``(audio, words) -> probability that the caller is done``, off the event loop:
    the utterance audio with its silence so far, and the words before the pause
    (the speculative transcript, for a model that reads text; "" otherwise)."""
    reads_text: bool = False
    """The model reads the pause's speculative transcript: it is asked once that
    transcript is ready (no words: not asked, the timer decides)."""


@dataclass(slots=True)
class _Speculation:
    speech_end: float
    task: asyncio.Task[Transcript | ProviderError]


@dataclass(slots=True)
class _Inbound:
    frame: AudioFrame
    arrival: float = field(default_factory=time.monotonic)


class Listener:
    """Hears one call's caller. ``start()``, ``push()`` frames, ``aclose()``."""

    def __init__(
        self,
        config: AgentConfig,
        stt: STT,
        run_vad: Callable[[FloatPCM], Awaitable[Sequence[float]]],
        hearing: Hearing,
        new_turn_id: Callable[[], str],
        on_failure: FailureHandler | None = None,
        end_of_turn: EndOfTurnScorer | None = None,
    ) -> None:
        """``end_of_turn`` runs the end-of-turn model off the event loop (None,
        or ``turn.end_of_turn_model: none``: turns end on the silence timer alone)."""
        self._config = config
        self._stt = stt
        self._run_vad = run_vad
        self._end_of_turn = end_of_turn
        self._hearing = hearing
        self._new_turn_id = new_turn_id
        turn = config.turn.to_settings(model=end_of_turn is not None)
        self._detector = TurnDetector(turn, config.vad.to_settings())
        self._inbound: asyncio.Queue[_Inbound] = asyncio.Queue(INPUT_QUEUE_FRAMES)
        self._pending = np.zeros(0, np.float32)
        self._tasks = TaskOwner("listener", on_failure)
        self._partial: asyncio.Task[None] | None = None
        self._speculation: _Speculation | None = None
        self._scoring: asyncio.Task[None] | None = None
        self._last_partial_at = 0.0
        self._arrival = 0.0
        self._turn_id = ""
        self._finals = 0
        self._last_final: asyncio.Event | None = None
        self._processing = False
        self.urgent_partials = False
        """Set while a paused reply waits for words: partials come faster."""
        self.muted = False
        """Set while the call is on hold: the caller's audio is heard as silence
        (stream time goes on, so a turn under way ends or is discarded as usual)."""
        self.dropped_frames = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the audio loop."""
        self._tasks.spawn(self._audio_loop(), "audio-loop")

    async def aclose(self) -> None:
        """Stop listening: cancel the audio loop and every STT task, and wait for them."""
        await self._tasks.aclose()

    # ------------------------------------------------------------ state

    def push(self, frame: AudioFrame) -> None:
        """Queue a 16 kHz mono frame; never blocks (drops the oldest past the bound)."""
        if self._inbound.full():
            self._inbound.get_nowait()
            self.dropped_frames += 1
        self._inbound.put_nowait(_Inbound(frame))

    @property
    def in_turn(self) -> bool:
        """Whether the caller is in a turn (speaking, or in the end-of-turn pause)."""
        return self._detector.in_turn

    @property
    def in_speech(self) -> bool:
        """Whether the caller is speaking now."""
        return self._detector.in_speech

    @property
    def finals_pending(self) -> int:
        """Ended turns whose final transcript has not come back yet."""
        return self._finals

    @property
    def now(self) -> float:
        """Input stream position in seconds."""
        return self._detector.now

    def settled(self, *, transcripts: bool = True) -> bool:
        """No queued input (and, with ``transcripts``, no transcription or end-of-turn
        inference under way)."""
        if not self._inbound.empty() or self._processing:
            return False
        if not transcripts:
            return True
        return all(t.get_name() == "audio-loop" or t.done() for t in self._tasks.tasks())

    @property
    def active_tasks(self) -> int:
        """Tasks the listener still owns."""
        return self._tasks.active

    # ------------------------------------------------------------ the audio loop

    async def _audio_loop(self) -> None:
        while True:
            item = await self._inbound.get()
            self._processing = True
            try:
                await self._process(item)
            finally:
                self._processing = False

    async def _process(self, item: _Inbound) -> None:
        parts = [self._heard(item.frame)]
        while not self._inbound.empty():
            item = self._inbound.get_nowait()
            parts.append(self._heard(item.frame))
        self._arrival = item.arrival
        audio = np.concatenate([self._pending, *parts])
        n = audio.size // WINDOW_SAMPLES
        self._pending = audio[n * WINDOW_SAMPLES :]
        if n == 0:
            return
        windows = audio[: n * WINDOW_SAMPLES]
        probs = await self._run_vad(windows)
        for i, prob in enumerate(probs):
            window = windows[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
            for event in self._detector.process(window, float(prob)):
                self._on_turn_event(event)
            self._hearing.stream_advanced(self._detector.now)
            self._schedule_partial()

    def _heard(self, frame: AudioFrame) -> FloatPCM:
        audio = frame.to_float()
        return np.zeros_like(audio) if self.muted else audio

    def _wall(self, stream_time: float) -> float:
        """Monotonic time at which input stream position ``stream_time`` arrived."""
        return self._arrival - (self._detector.now - stream_time)

    def _on_turn_event(self, event: TurnEvent) -> None:
        kind = event.kind
        det = self._detector
        if kind is TurnEventKind.SPEECH_STARTED:
            self._turn_id = self._new_turn_id()
            self._last_partial_at = det.now
            self._hearing.speech_started(self._turn_id, event.speech_start, det.now)
        elif kind is TurnEventKind.SPEECH_PAUSED:
            speech_end = event.speech_end if event.speech_end is not None else event.time
            if self._config.turn.speculative_stt:
                audio = det.utterance_audio(until_speech_end=True)
                task = self._tasks.spawn(self._speculate(audio, speech_end), "stt-speculative")
                self._speculation = _Speculation(speech_end, task)
            self._hearing.speech_paused(self._turn_id, speech_end)
        elif kind is TurnEventKind.END_OF_TURN_CHECK:
            self._drop_scoring()
            audio = det.utterance_audio()  # the silence so far included: the model weighs it
            spec = self._speculation
            words = spec.task if spec is not None and spec.speech_end == event.speech_end else None
            self._scoring = self._tasks.spawn(
                self._score_turn(audio, words, asked_at=event.time), "end-of-turn"
            )
        elif kind is TurnEventKind.SPEECH_RESUMED:
            self._drop_speculation()
            self._drop_scoring()
            self._hearing.speech_resumed(self._turn_id, det.now)
        elif kind is TurnEventKind.SPEECH_DISCARDED:
            self._drop_speculation()
            self._drop_scoring()
            self._hearing.speech_discarded(self._turn_id, det.now)
        elif kind is TurnEventKind.TURN_ENDED:
            self._drop_scoring()
            speech_end = event.speech_end if event.speech_end is not None else event.time
            clock = TurnClock(speech_end=self._wall(speech_end), turn_end=time.monotonic())
            audio = det.utterance_audio(until_speech_end=True)
            spec = self._speculation
            self._speculation = None
            if spec is not None and spec.speech_end != speech_end:
                spec.task.cancel()
                spec = None
            self._finals += 1
            previous, delivered = self._last_final, asyncio.Event()
            self._last_final = delivered
            self._tasks.spawn(
                self._finish_turn(
                    self._turn_id, audio, spec, clock, previous, delivered, speech_end
                ),
                "turn-finish",
            )

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.task.cancel()
            self._speculation = None

    def _drop_scoring(self) -> None:
        """Cancel a pending inference (a queued one never runs); its answer is stale anyway."""
        scoring, self._scoring = self._scoring, None
        if scoring is not None and scoring is not asyncio.current_task():
            scoring.cancel()

    # ------------------------------------------------------------ end-of-turn model

    async def _score_turn(
        self,
        audio: FloatPCM,
        words: asyncio.Task[Transcript | ProviderError] | None,
        *,
        asked_at: float,
    ) -> None:
        """Run the end-of-turn model and hand its score to the detector.

        A model that reads text waits for the pause's speculative transcript
        (``words``; shielded: the turn's final may still need it when this
        check is cancelled). No transcript, a failed one or one without words,
        and a failed inference, leave the decision to the silence timer (the
        call goes on as without the model); the detector ignores a stale answer.
        """
        scorer = self._end_of_turn
        assert scorer is not None
        text = ""
        if scorer.reads_text:
            outcome = await asyncio.shield(words) if words is not None else None
            if not isinstance(outcome, Transcript) or not outcome.text.strip():
                return
            text = outcome.text
        try:
            score = await scorer.score(audio, text)
        except Exception as exc:
            log.warning(
                "listener: end-of-turn model failed (%s); the timer decides", describe_failure(exc)
            )
            return
        if self._scoring is asyncio.current_task():
            self._scoring = None
        for event in self._detector.end_of_turn_score(score, asked_at=asked_at):
            self._on_turn_event(event)

    # ------------------------------------------------------------ STT

    async def _speculate(self, audio: FloatPCM, speech_end: float) -> Transcript | ProviderError:
        """The speculative final of the pause at ``speech_end``; offered to the session
        while it is still the pending turn's (not once the turn ended or speech resumed)."""
        outcome = await self._transcribe_final(audio)
        spec = self._speculation
        if (
            isinstance(outcome, Transcript)
            and spec is not None
            and spec.task is asyncio.current_task()
            and spec.speech_end == speech_end
        ):
            try:
                self._hearing.speculative_transcript(self._turn_id, speech_end, outcome)
            except Exception as exc:  # the turn itself must not be lost to it
                log.error(
                    "listener: speculative transcript handler raised %s", describe_failure(exc)
                )
        return outcome

    async def _transcribe_final(self, audio: FloatPCM) -> Transcript | ProviderError:
        """A speculative final: its provider error is the turn's to report, if it is used."""
        try:
            return await self._stt.transcribe(audio)
        except ProviderError as exc:
            return exc

    def _schedule_partial(self) -> None:
        stt = self._config.stt
        det = self._detector
        if not stt.partials or not det.in_speech:
            return
        if self._partial is not None and not self._partial.done():
            return
        interval = stt.partial_interval_ms / 1000
        if self.urgent_partials:
            interval = min(interval, URGENT_PARTIAL_INTERVAL_S)
        if det.now - self._last_partial_at >= interval and det.speech_duration() >= 0.3:
            self._last_partial_at = det.now
            self._partial = self._tasks.spawn(self._run_partial(self._turn_id), "stt-partial")

    async def _run_partial(self, turn_id: str) -> None:
        audio = self._detector.utterance_audio()
        try:
            result = await self._stt.transcribe(audio, partial=True)
        except ProviderError as exc:
            self._hearing.stt_failed(turn_id, exc, final=False)
            return
        if result.text and turn_id == self._turn_id and self._detector.in_turn:
            self._hearing.partial_transcript(turn_id, result)

    async def _finish_turn(
        self,
        turn_id: str,
        audio: FloatPCM,
        spec: _Speculation | None,
        clock: TurnClock,
        previous: asyncio.Event | None,
        delivered: asyncio.Event,
        speech_end: float,
    ) -> None:
        """Transcribe an ended turn and deliver it, after the turn before it (always)."""
        counted = True
        try:
            failure: ProviderError | None = None
            result: Transcript | None = None
            try:
                if spec is not None:
                    outcome = await spec.task
                    if isinstance(outcome, ProviderError):
                        raise outcome
                    result = outcome
                    clock.speculative_hit = True
                else:
                    result = await self._stt.transcribe(audio)
            except ProviderError as exc:
                failure = exc
            except Exception as exc:  # an STT bug must not strand the turn (or held ones)
                log.error("listener: transcription raised %s", type(exc).__name__)
                failure = ProviderError("stt", f"transcription failed: {type(exc).__name__}")
            if previous is not None:
                await previous.wait()  # finals are delivered in the order the turns ended
            self._finals -= 1  # counted out before the session hears of it
            counted = False
            if failure is not None or result is None:
                assert failure is not None
                self._hearing.stt_failed(turn_id, failure, final=True)
                return
            clock.stt_final_s = result.processing_s
            clock.stt_ready = time.monotonic()
            usage = clock.usage
            usage.stt_provider, usage.stt_model = result.provider, result.model or None
            usage.stt_audio_s = round(result.audio_s, 3)
            self._hearing.user_turn(UserTurn(turn_id, result, clock, speech_end))
        finally:
            if counted:
                self._finals -= 1
            delivered.set()
