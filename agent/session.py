"""VoiceSession: one call's conversation (VAD -> turns -> STT -> LLM -> TTS -> playout).

The session knows nothing about transports. A transport pushes 16 kHz mono
frames with ``push_audio`` and pulls the agent's audio from ``playout``; the
session emits typed events to its sinks and its ``events()`` stream.

Tasks: the audio loop, the reply of the moment, and short-lived STT tasks
(partial, speculative final, turn finalisation). All are created through
``_spawn``, tracked, and cancelled and awaited by ``close()``.

Barge-in: while a reply is active (THINKING or SPEAKING), caller speech held
for ``interruption.min_speech_ms`` pauses the playout at once. The
interruption is confirmed when the caller's speech yields
``interruption.min_words`` words (partial or final transcript): the reply is
cancelled, its queued audio dropped, and only the heard text enters the
history, flagged as interrupted. If the speech yields no words (a cough, a
door), the reply resumes from where it paused (false interruption).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.chunker import SentenceChunker
from agent.config import AgentConfig
from agent.errors import AgentError, ProviderError, SessionClosedError
from agent.events import (
    AgentEvent,
    ErrorEvent,
    InterruptionEvent,
    MetricsEvent,
    ReplyDeltaEvent,
    ReplyEvent,
    SessionState,
    StateEvent,
    TranscriptEvent,
    VadEvent,
)
from agent.history import ChatHistory
from agent.llm import ChatMessage
from agent.runtime import AgentModels
from agent.speech import SpeechHandle
from agent.stt import Transcript
from agent.turns import TurnDetector, TurnEvent, TurnEventKind
from agent.vad import WINDOW_SAMPLES
from media.errors import AudioFormatError
from media.frames import PIPELINE_RATE, AudioFrame, FloatPCM
from media.playout import PlayoutBuffer
from media.resample import StreamResampler

log = logging.getLogger(__name__)

EventSink = Callable[[AgentEvent], None]
"""A synchronous, non-blocking receiver of session events (e.g. the store's writer)."""

_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.LISTENING: frozenset({SessionState.THINKING, SessionState.CLOSED}),
    SessionState.THINKING: frozenset(
        {SessionState.SPEAKING, SessionState.LISTENING, SessionState.CLOSED}
    ),
    SessionState.SPEAKING: frozenset(
        {SessionState.LISTENING, SessionState.THINKING, SessionState.CLOSED}
    ),
    SessionState.CLOSED: frozenset(),
}
"""Every allowed state change, in one place."""

INPUT_QUEUE_FRAMES = 150
"""Inbound audio queue bound: 3 s of 20 ms frames; the oldest frame is dropped past it."""
EVENT_QUEUE_SIZE = 512
"""Outbound event queue bound; the oldest event is dropped past it."""


@dataclass(slots=True)
class _TurnClock:
    """Wall-clock marks of one turn, for its metrics (monotonic seconds)."""

    speech_end: float
    turn_end: float
    stt_final_s: float | None = None
    stt_ready: float | None = None
    speculative_hit: bool = False
    llm_start: float | None = None
    llm_first_token: float | None = None
    llm_tokens: int = 0
    tts_first_chunk: float | None = None
    tts_first_audio: float | None = None


@dataclass(slots=True)
class _BargeIn:
    """A caller's speech that started while a reply was active."""

    reply: SpeechHandle
    speech_start: float
    paused: bool = False
    confirmed: bool = False
    speech_end: float | None = None


@dataclass(slots=True)
class _Speculation:
    """A final transcription started while the end-of-turn silence timer runs."""

    speech_end: float
    task: asyncio.Task[Transcript]


@dataclass(slots=True)
class _Inbound:
    frame: AudioFrame
    arrival: float = field(default_factory=time.monotonic)


class VoiceSession:
    """The conversation of one call.

    Use as ``async with VoiceSession(...) as session`` or call ``start()`` and
    ``close()``. All methods must be called from the event loop that started it.
    """

    def __init__(
        self,
        config: AgentConfig,
        models: AgentModels,
        *,
        output_rate: int = PIPELINE_RATE,
        sinks: Sequence[EventSink] = (),
        session_id: str | None = None,
        history: Sequence[ChatMessage] = (),
    ) -> None:
        self.id = session_id or "ses_" + secrets.token_urlsafe(12)
        self.config = config
        self._models = models
        self._sinks = list(sinks)
        self.playout = PlayoutBuffer(output_rate)
        self.history = ChatHistory(config.system_prompt, config.llm.max_history_turns)
        self.history.restore(list(history))
        self._detector = TurnDetector(config.turn.to_settings(), config.vad.to_settings())
        self._vad = models.vad.stream()
        self._generation = config.llm.generation()
        self._fillers = frozenset(config.interruption.filler_words)
        self._state = SessionState.LISTENING
        self._inbound: asyncio.Queue[_Inbound] = asyncio.Queue(INPUT_QUEUE_FRAMES)
        self._events: asyncio.Queue[AgentEvent] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._pending = np.zeros(0, np.float32)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reply: SpeechHandle | None = None
        self._clocks: dict[str, _TurnClock] = {}
        self._barge: _BargeIn | None = None
        self._speculation: _Speculation | None = None
        self._partial: asyncio.Task[None] | None = None
        self._last_partial_at = 0.0
        self._turn_seq = 0
        self._turn_id = ""
        self._arrival = 0.0
        self.dropped_frames = 0
        self.dropped_events = 0
        self._started = False

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> VoiceSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the audio loop (and speak the greeting, if configured)."""
        if self._started:
            return
        self._started = True
        self._spawn(self._audio_loop(), "audio-loop")
        if self.config.greeting:
            self._start_reply(self._new_turn_id(), None, canned=self.config.greeting)

    async def close(self) -> None:
        """End the call: cancel all work, commit what was heard, emit CLOSED."""
        if self._state is SessionState.CLOSED:
            return
        if self._reply is not None and not self._reply.done:
            self._reply.interrupt()
            self._commit_reply(self._reply)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._set_state(SessionState.CLOSED)

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has run."""
        return self._state is SessionState.CLOSED

    @property
    def active_tasks(self) -> int:
        """Tasks the session still owns (0 after ``close()``)."""
        return sum(1 for t in self._tasks if not t.done())

    # ---------------------------------------------------------------- input

    def push_audio(self, frame: AudioFrame) -> None:
        """Queue an inbound frame (16 kHz mono int16); never blocks.

        Raises ``AudioFormatError`` for any other format: transports resample
        at their edge (``media.resample.FrameNormalizer``). Past the queue
        bound the oldest frame is dropped and counted in ``dropped_frames``.
        """
        if self.closed:
            raise SessionClosedError("session is closed")
        if frame.sample_rate != PIPELINE_RATE or frame.channels != 1:
            raise AudioFormatError(
                f"session expects {PIPELINE_RATE} Hz mono audio, "
                f"got {frame.sample_rate} Hz with {frame.channels} channels"
            )
        if self._inbound.full():
            self._inbound.get_nowait()
            self.dropped_frames += 1
        self._inbound.put_nowait(_Inbound(frame))

    async def send_text(self, text: str) -> None:
        """Typed input from the caller: a complete user turn."""
        if self.closed:
            raise SessionClosedError("session is closed")
        text = text.strip()
        if not text:
            return
        turn_id = self._new_turn_id()
        self._emit(TranscriptEvent(turn_id=turn_id, text=text, final=True, confidence=1.0))
        self._confirm_interruption()
        now = time.monotonic()
        self._start_reply(turn_id, _TurnClock(speech_end=now, turn_end=now), user_text=text)

    async def events(self) -> AsyncIterator[AgentEvent]:
        """Events as they happen, until the session closes."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, StateEvent) and event.state is SessionState.CLOSED:
                return

    async def wait_settled(self, poll_s: float = 0.002) -> None:
        """Wait until no pipeline work is pending that would change the output.

        For offline, faster-than-real-time drivers (``python -m agent call
        --fast``): queued input is processed, STT tasks are done, and an
        active reply either has audio ready to play or has nothing more to
        generate.
        """
        while not self.closed:
            if self._settled():
                return
            await asyncio.sleep(poll_s)

    def _settled(self) -> bool:
        if not self._inbound.empty():
            return False
        reply = self._reply
        reply_task = reply.task if reply is not None else None
        for task in self._tasks:
            if task.get_name() != "audio-loop" and task is not reply_task and not task.done():
                return False
        if reply is None or reply.done:
            return True
        has_audio = self.playout.buffered_ms >= self.playout.frame_ms
        return has_audio or reply.generation_done or self.playout.paused

    # ------------------------------------------------------------ the audio loop

    async def _audio_loop(self) -> None:
        while True:
            item = await self._inbound.get()
            parts = [item.frame.to_float()]
            while not self._inbound.empty():
                item = self._inbound.get_nowait()
                parts.append(item.frame.to_float())
            self._arrival = item.arrival
            audio = np.concatenate([self._pending, *parts])
            n = audio.size // WINDOW_SAMPLES
            self._pending = audio[n * WINDOW_SAMPLES :]
            if n == 0:
                continue
            windows = audio[: n * WINDOW_SAMPLES]
            probs = await self._models.vad_executor.run(self._vad.process, windows)
            for i, prob in enumerate(probs):
                window = windows[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
                for event in self._detector.process(window, prob):
                    self._on_turn_event(event)
                self._after_window()

    def _wall(self, stream_time: float) -> float:
        """Monotonic time at which input stream position ``stream_time`` arrived."""
        return self._arrival - (self._detector.now - stream_time)

    def _after_window(self) -> None:
        det = self._detector
        barge = self._barge
        if barge is not None and not barge.confirmed:
            if (
                not barge.paused
                and det.in_speech
                and det.speech_duration() * 1000 >= self.config.interruption.min_speech_ms
            ):
                self._pause_for_barge_in(barge)
            elif (
                barge.paused
                and barge.speech_end is not None
                and not det.in_speech
                and det.now - barge.speech_end
                >= self.config.interruption.false_interruption_timeout_ms / 1000
            ):
                self._resume_after_false_interruption()
        stt = self.config.stt
        if stt.partials and det.in_speech and (self._partial is None or self._partial.done()):
            interval = stt.partial_interval_ms / 1000
            if barge is not None and barge.paused:
                interval = min(interval, 0.3)
            if det.now - self._last_partial_at >= interval and det.speech_duration() >= 0.3:
                self._last_partial_at = det.now
                self._partial = self._spawn(self._run_partial(self._turn_id), "stt-partial")

    def _on_turn_event(self, event: TurnEvent) -> None:
        kind = event.kind
        if kind is TurnEventKind.SPEECH_STARTED:
            self._turn_id = self._new_turn_id()
            self._last_partial_at = self._detector.now
            self._emit(VadEvent(speaking=True, stream_time=event.speech_start))
            reply = self._reply
            if reply is not None and not reply.done and self.config.interruption.enabled:
                self._barge = _BargeIn(reply, event.speech_start)
        elif kind is TurnEventKind.SPEECH_PAUSED:
            self._emit(VadEvent(speaking=False, stream_time=event.speech_end or event.time))
            if self._barge is not None:
                self._barge.speech_end = event.speech_end
            if self.config.turn.speculative_stt and event.speech_end is not None:
                audio = self._detector.utterance_audio(until_speech_end=True)
                task = self._spawn(self._models.stt.transcribe(audio), "stt-speculative")
                self._speculation = _Speculation(event.speech_end, task)
        elif kind is TurnEventKind.SPEECH_RESUMED:
            self._emit(VadEvent(speaking=True, stream_time=event.time))
            self._drop_speculation()
            if self._barge is not None:
                self._barge.speech_end = None
        elif kind is TurnEventKind.SPEECH_DISCARDED:
            self._drop_speculation()
            if self._barge is not None and self._barge.paused and not self._barge.confirmed:
                self._resume_after_false_interruption()
            self._barge = None
        elif kind is TurnEventKind.TURN_ENDED:
            speech_end = event.speech_end if event.speech_end is not None else event.time
            clock = _TurnClock(speech_end=self._wall(speech_end), turn_end=time.monotonic())
            audio = self._detector.utterance_audio(until_speech_end=True)
            spec = self._speculation
            self._speculation = None
            if spec is not None and spec.speech_end != speech_end:
                spec.task.cancel()
                spec = None
            self._spawn(self._finish_turn(self._turn_id, audio, spec, clock), "turn-finish")

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.task.cancel()
            self._speculation = None

    # ------------------------------------------------------------ STT stages

    async def _run_partial(self, turn_id: str) -> None:
        audio = self._detector.utterance_audio()
        try:
            result = await self._models.stt.transcribe(audio, partial=True)
        except ProviderError as exc:
            self._emit_error("stt", exc)
            return
        if not result.text or turn_id != self._turn_id or not self._detector.in_turn:
            return
        self._emit(
            TranscriptEvent(
                turn_id=turn_id, text=result.text, final=False, confidence=result.confidence
            )
        )
        self._check_barge_words(self._content_words(result.text))

    async def _finish_turn(
        self, turn_id: str, audio: FloatPCM, spec: _Speculation | None, clock: _TurnClock
    ) -> None:
        try:
            if spec is not None:
                result = await spec.task
                clock.speculative_hit = True
            else:
                result = await self._models.stt.transcribe(audio)
        except ProviderError as exc:
            self._emit_error("stt", exc)
            self._resume_if_barge_pending()
            return
        clock.stt_final_s = result.processing_s
        clock.stt_ready = time.monotonic()
        if self._content_words(result.text) == 0:
            self._resume_if_barge_pending()
            self._barge = None
            return
        self._emit(
            TranscriptEvent(
                turn_id=turn_id, text=result.text, final=True, confidence=result.confidence
            )
        )
        self._confirm_interruption()
        self._start_reply(turn_id, clock, user_text=result.text)

    # ------------------------------------------------------------ barge-in

    def _content_words(self, text: str) -> int:
        """Words of a transcript that are not fillers or backchannels."""
        words = (w.strip(".,!?;:\"'") for w in text.lower().split())
        return sum(1 for w in words if w and w not in self._fillers)

    def _pause_for_barge_in(self, barge: _BargeIn) -> None:
        if barge.reply.done:
            self._barge = None
            return
        barge.paused = True
        self.playout.pause()
        self._emit(InterruptionEvent(turn_id=barge.reply.turn_id, phase="paused"))
        if self.config.interruption.min_words == 0:
            self._confirm_interruption()

    def _check_barge_words(self, words: int) -> None:
        barge = self._barge
        if (
            barge is not None
            and barge.paused
            and not barge.confirmed
            and words >= self.config.interruption.min_words
        ):
            self._confirm_interruption()

    def _confirm_interruption(self) -> None:
        """Stop the active reply for good (the caller spoke or typed over it)."""
        reply = self._reply
        barge = self._barge
        self._barge = None
        if reply is None or reply.done:
            return
        if barge is not None:
            barge.confirmed = True
        reply.interrupt()
        self._emit(InterruptionEvent(turn_id=reply.turn_id, phase="confirmed"))
        self._commit_reply(reply)

    def _resume_if_barge_pending(self) -> None:
        if self._barge is not None and self._barge.paused and not self._barge.confirmed:
            self._resume_after_false_interruption()

    def _resume_after_false_interruption(self) -> None:
        barge = self._barge
        self._barge = None
        self.playout.resume()
        if barge is not None and not barge.reply.done:
            self._emit(InterruptionEvent(turn_id=barge.reply.turn_id, phase="resumed"))

    # ------------------------------------------------------------ the reply

    def _start_reply(
        self,
        turn_id: str,
        clock: _TurnClock | None,
        *,
        user_text: str | None = None,
        canned: str | None = None,
    ) -> None:
        if user_text is not None:
            self.history.add_user(user_text)
        handle = SpeechHandle(turn_id=turn_id, playout=self.playout)
        now = time.monotonic()
        self._clocks[handle.id] = clock or _TurnClock(speech_end=now, turn_end=now)
        self.playout.open_utterance(handle.id)
        self._reply = handle
        self._set_state(SessionState.THINKING)
        handle.task = self._spawn(self._run_reply(handle, canned), "reply")

    async def _run_reply(self, handle: SpeechHandle, canned: str | None) -> None:
        clock = self._clocks[handle.id]
        chunks: asyncio.Queue[str | None] = asyncio.Queue(maxsize=8)
        failure: AgentError | None = None
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._produce_text(handle, clock, chunks, canned))
                    group.create_task(self._synthesize(handle, clock, chunks))
                    group.create_task(self._mark_speaking(handle))
            except* AgentError as eg:
                failure = eg.exceptions[0]  # type: ignore[assignment]
            except* Exception as eg:
                log.error("session %s: reply failed", self.id, exc_info=eg.exceptions[0])
                failure = AgentError(f"internal error: {type(eg.exceptions[0]).__name__}")
            if failure is not None:
                self._emit_error("reply", failure)
                handle.interrupted = True  # commit only what was heard before the failure
                self.playout.clear(handle.id)
            else:
                handle.generation_done = True
                self.playout.finish_utterance(handle.id)
                await self.playout.wait_done(handle.id)
        finally:
            # Interrupted replies were committed by _confirm_interruption already.
            self._commit_reply(handle)

    async def _produce_text(
        self,
        handle: SpeechHandle,
        clock: _TurnClock,
        chunks: asyncio.Queue[str | None],
        canned: str | None,
    ) -> None:
        chunker = SentenceChunker(self.config.chunker.to_settings())
        if canned is not None:
            handle.text = canned
            for chunk in chunker.feed(canned) + chunker.flush():
                await chunks.put(chunk)
            await chunks.put(None)
            return
        clock.llm_start = time.monotonic()
        stream = self._models.llm.stream(self.history.context(), self._generation)
        async with contextlib.aclosing(stream) as pieces:
            async for piece in pieces:
                if clock.llm_first_token is None:
                    clock.llm_first_token = time.monotonic()
                clock.llm_tokens += 1
                handle.text += piece
                self._emit(ReplyDeltaEvent(turn_id=handle.turn_id, text=piece))
                for chunk in chunker.feed(piece):
                    await chunks.put(chunk)
        for chunk in chunker.flush():
            await chunks.put(chunk)
        await chunks.put(None)

    async def _synthesize(
        self, handle: SpeechHandle, clock: _TurnClock, chunks: asyncio.Queue[str | None]
    ) -> None:
        tts = self._models.tts
        while (text := await chunks.get()) is not None:
            if handle.interrupted:
                return  # clear() woke us before the cancellation arrived: stop here
            segment = self.playout.open_segment(handle.id, text)
            resampler = StreamResampler(tts.sample_rate, self.playout.sample_rate)
            if clock.tts_first_chunk is None:
                clock.tts_first_chunk = time.monotonic()
            stream = tts.stream(text)
            async with contextlib.aclosing(stream) as pcm_chunks:
                async for pcm in pcm_chunks:
                    if handle.interrupted:
                        return
                    if clock.tts_first_audio is None:
                        clock.tts_first_audio = time.monotonic()
                    await self.playout.push(segment, resampler.process(pcm))
            await self.playout.push(segment, resampler.flush())
            self.playout.close_segment(segment)

    async def _mark_speaking(self, handle: SpeechHandle) -> None:
        await self.playout.wait_started(handle.id)
        if self._reply is handle and self._state is SessionState.THINKING:
            self._set_state(SessionState.SPEAKING)

    def _commit_reply(self, handle: SpeechHandle) -> None:
        """Record the reply as heard, emit its events, return to LISTENING (once)."""
        clock = self._clocks.pop(handle.id, None)
        if clock is None:
            return  # already committed
        heard = handle.heard_text if handle.interrupted else handle.text.strip()
        self.history.add_assistant(heard, interrupted=handle.interrupted)
        self._emit(
            ReplyEvent(
                turn_id=handle.turn_id,
                text=handle.text.strip(),
                heard_text=heard,
                interrupted=handle.interrupted,
            )
        )
        self._emit(self._metrics(handle, clock))
        self.playout.forget(handle.id)
        if self._reply is handle:
            self._reply = None
            if self._state in (SessionState.THINKING, SessionState.SPEAKING):
                self._set_state(SessionState.LISTENING)

    def _metrics(self, handle: SpeechHandle, clock: _TurnClock) -> MetricsEvent:
        first_audio = self.playout.first_audio_at(handle.id)

        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        return MetricsEvent(
            turn_id=handle.turn_id,
            voice_to_voice_ms=ms(clock.speech_end, first_audio),
            end_of_turn_ms=ms(clock.speech_end, clock.turn_end),
            stt_final_ms=None if clock.stt_final_s is None else round(clock.stt_final_s * 1000, 1),
            stt_wait_ms=ms(clock.turn_end, clock.stt_ready),
            llm_first_token_ms=ms(clock.llm_start, clock.llm_first_token),
            tts_first_audio_ms=ms(clock.tts_first_chunk, clock.tts_first_audio),
            reply_first_audio_ms=ms(clock.turn_end, first_audio),
            llm_tokens=clock.llm_tokens,
            speculative_hit=clock.speculative_hit,
            interrupted=handle.interrupted,
        )

    # ------------------------------------------------------------ plumbing

    def _new_turn_id(self) -> str:
        self._turn_seq += 1
        return f"turn_{self._turn_seq}"

    def _set_state(self, state: SessionState) -> None:
        previous = self._state
        if state is previous:
            return
        if state not in _TRANSITIONS[previous]:
            raise AgentError(f"invalid session transition {previous.value} -> {state.value}")
        self._state = state
        self._emit(StateEvent(state=state, previous=previous))

    def _emit(self, event: AgentEvent) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                log.exception("event sink failed on a %s event", event.type)
        if self._events.full():
            self._events.get_nowait()
            self.dropped_events += 1
        self._events.put_nowait(event)

    def _emit_error(self, stage: str, exc: AgentError) -> None:
        retryable = isinstance(exc, ProviderError) and exc.retryable
        log.warning("session %s: %s stage failed: %s", self.id, stage, exc)
        self._emit(ErrorEvent(stage=stage, message=str(exc), retryable=retryable))

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._reaped)
        return task

    def _reaped(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=exc)
            if self._state is not SessionState.CLOSED:
                self._emit(
                    ErrorEvent(stage=task.get_name(), message=type(exc).__name__, retryable=False)
                )
