"""VoiceSession: one call's conversation, its state, history and events.

The session knows nothing about transports. A transport pushes 16 kHz mono
frames with ``push_audio`` and pulls the agent's audio from ``playout``; the
session emits typed events to its sinks and its ``events()`` stream.

It owns its collaborators and wires them together:
- the ``Listener`` (audio loop, VAD, turn detector, partial / speculative /
  final STT) reports what the caller does through the ``Hearing`` methods
  below;
- the ``InterruptionController`` (a pure state machine) decides when the
  caller's speech pauses, cancels or resumes the active reply;
- each reply is a ``Reply`` run as the task of its ``SpeechHandle`` (LLM,
  chunker, TTS, playout, per-turn metrics), built by ``Replies``
  (``agent.replies``), which also settles tool rounds that outlive their
  reply;
- ``Preemption`` (``agent.preemption``, with ``turn.preemptive_reply``)
  holds the reply started on a pause's speculative transcript while the
  session stays LISTENING, and hands it over when the turn is confirmed
  with the same request (else it is dropped unheard; what it used of the
  providers is added to the usage of the next turn the session reports).

The session keeps what is left: the lifecycle, the state machine (one
transition table, one writer: ``_set_state``), the chat history and the
events. Turn ids are unique per session across calls and processes.

A user turn that is transcribed while the caller is already speaking again
(or while a later turn still waits for its transcript) does not start a
reply: its text is held and merged into the next turn, so the agent never
answers half a sentence over the caller. Speech while the agent is thinking
is barge-in like speech while it speaks.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from agent.config import AgentConfig
from agent.echo_guard import EchoGuard, HeardWords
from agent.endofturn import TextEndOfTurnModel
from agent.errors import AgentError, ProviderError, SessionClosedError
from agent.events import (
    AgentEvent,
    DtmfEvent,
    ErrorEvent,
    HoldEvent,
    InterruptionEvent,
    ReplyEvent,
    SessionState,
    StateEvent,
    TranscriptEvent,
    VadEvent,
)
from agent.fallback import AllProvidersFailedError
from agent.history import ChatHistory
from agent.interruption import BargeInAction, InterruptionController
from agent.keypad import KeypadTurns, check_digit
from agent.listener import EndOfTurnScorer, Listener, UserTurn
from agent.llm import ChatMessage
from agent.preemption import Preemption, PreemptiveReply
from agent.replies import Replies
from agent.reply import Reply, ReplyPlan
from agent.runtime import AgentModels
from agent.speech import SpeechHandle
from agent.stt import Transcript
from agent.tasks import TaskOwner, describe_failure
from agent.tools import ToolContext, ToolRegistry
from agent.turnclock import TurnClock
from media.errors import AudioFormatError
from media.frames import PIPELINE_RATE, AudioFrame, FloatPCM
from media.playout import PlayoutBuffer

log = logging.getLogger(__name__)

EventSink = Callable[[AgentEvent], None]
"""A synchronous, non-blocking receiver of session events (e.g. the store's writer)."""

TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.LISTENING: frozenset({SessionState.THINKING, SessionState.CLOSED}),
    SessionState.THINKING: frozenset(
        {SessionState.SPEAKING, SessionState.LISTENING, SessionState.CLOSED}
    ),
    SessionState.SPEAKING: frozenset(
        {SessionState.LISTENING, SessionState.THINKING, SessionState.CLOSED}
    ),
    SessionState.CLOSED: frozenset(),
}
"""Every allowed state change, in one place. A preemptive reply held while the turn
is pending leaves the session LISTENING; it enters THINKING when it is adopted."""

EVENT_QUEUE_SIZE = 512
"""Outbound event queue bound; the oldest event is dropped past it."""

BARGE_IN = "barge-in"
HOLD = "hold"
"""Why the agent's playout is paused (each holder releases only its own reason)."""

FATAL_TASKS = frozenset({"audio-loop"})
"""Tasks without which the call cannot go on: their failure closes the session."""


def new_turn_id() -> str:
    """A turn id unique across calls and processes, ordered by creation time (ms)."""
    return f"turn_{time.time_ns() // 1_000_000:011x}{secrets.token_hex(4)}"


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
        tools: ToolRegistry | None = None,
        user_id: str | None = None,
        preferences: Mapping[str, Any] | None = None,
    ) -> None:
        self.id = session_id or "ses_" + secrets.token_urlsafe(12)
        self.config = config
        self._models = models
        self._sinks = list(sinks)
        self.playout = PlayoutBuffer(output_rate)
        self.history = ChatHistory(
            config.system_prompt,
            config.llm.max_history_turns,
            trim_turns=config.llm.history_trim_turns,
        )
        self.history.restore(list(history))
        self._echo_guard = EchoGuard(
            config.interruption.filler_words, enabled=config.interruption.echo_guard == "on"
        )
        self._barge = InterruptionController(config.interruption.to_settings())
        self._hold_ms = self._barge.hold_ms  # the onset hold last logged
        self._tasks = TaskOwner(f"session {self.id}", self._task_failed)
        vad = models.vad.stream()

        async def run_vad(windows: FloatPCM) -> Sequence[float]:
            probs: Sequence[float] = await models.vad_executor.run(vad.process, windows)
            return probs

        self._listener = Listener(
            config,
            models.stt,
            run_vad,
            self,
            new_turn_id,
            on_failure=self._task_failed,
            end_of_turn=self._end_of_turn_scorer(models),
        )
        self._state = SessionState.LISTENING
        self._events: asyncio.Queue[AgentEvent] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._reply: SpeechHandle | None = None
        self.user_id = user_id
        """Whose accounts the tools act on (None: an anonymous caller)."""
        self.preferences: Mapping[str, Any] = dict(preferences or {})
        """The user's choices the tools follow (``{"platform": "spotify"}``)."""
        self._replies = Replies(
            config,
            models,
            self.playout,
            self.history,
            owner=f"session {self.id}",
            tools=tools,
            tool_context=self._tool_context,
            on_speaking=self._on_speaking,
        )
        self._preemption = Preemption(
            self.playout, self._launch_held, enabled=config.turn.preemptive_reply
        )
        self._held: list[UserTurn] = []
        self._closing: asyncio.Task[None] | None = None
        self._shutting_down = False
        self._on_hold = False
        self._keypad = KeypadTurns(config.dtmf, self._tasks.spawn, self._keypad_turn)
        self.dropped_events = 0
        self.failure: str | None = None
        """Why the session closed itself (a fatal task failure), if it did."""
        self._started = False

    def _end_of_turn_scorer(self, models: AgentModels) -> EndOfTurnScorer | None:
        """How the listener asks the end-of-turn model, on its inference thread (a text
        model reads the caller's words after what the agent last said)."""
        model, executor = models.end_of_turn, models.end_of_turn_executor
        if model is None or executor is None:
            return None
        if isinstance(model, TextEndOfTurnModel):
            text_model = model

            async def read(audio: FloatPCM, words: str) -> float:
                return await executor.run(text_model.score_text, words, self.history.last_said())

            return EndOfTurnScorer(read, reads_text=True)
        audio_model = model

        async def hear(audio: FloatPCM, words: str) -> float:
            return await executor.run(audio_model.score, audio)

        return EndOfTurnScorer(hear)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> VoiceSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def identify(self, user_id: str, preferences: Mapping[str, Any]) -> None:
        """The caller is now known as ``user_id`` (they linked an account during the call):
        the tools of the next reply act on that user's accounts and follow ``preferences``."""
        self.user_id = user_id
        self.preferences = dict(preferences)

    async def start(self) -> None:
        """Start listening (and speak the greeting, if configured)."""
        if self._started:
            return
        self._started = True
        self._listener.start()
        if self.config.greeting:
            greeting = ReplyPlan(canned=self.config.greeting)
            self._start_reply(new_turn_id(), TurnClock.now(), greeting)

    async def close(self) -> None:
        """End the call: cancel all work, commit what was heard, emit CLOSED (idempotent)."""
        if self._state is SessionState.CLOSED:
            return
        closing = self._closing
        if closing is not None and closing is not asyncio.current_task():
            await asyncio.shield(closing)  # a fatal failure is closing it already
            return
        self._shutting_down = True  # input is refused from here on
        self._preemption.drop()
        reply = self._reply
        if reply is not None and not reply.done:
            reply.interrupt()
            self._commit_reply(reply)
        self._replies.abort()
        await self._listener.aclose()
        await self._tasks.aclose()
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
    def accepting_input(self) -> bool:
        """False from the moment ``close()`` starts."""
        return not self._shutting_down and not self.closed

    @property
    def active_tasks(self) -> int:
        """Tasks the session and its listener still own (0 after ``close()``)."""
        return self._tasks.active + self._listener.active_tasks

    @property
    def dropped_frames(self) -> int:
        """Inbound frames dropped because the pipeline fell 3 s behind."""
        return self._listener.dropped_frames

    @property
    def reply(self) -> SpeechHandle | None:
        """The active reply, if any."""
        return self._reply

    # ---------------------------------------------------------------- input

    def push_audio(self, frame: AudioFrame) -> None:
        """Queue an inbound frame (16 kHz mono int16); never blocks.

        Raises ``AudioFormatError`` for any other format: the call bridge
        normalises at its edge (``media.resample.FrameNormalizer``).
        """
        if not self.accepting_input:
            raise SessionClosedError("session is closed")
        if frame.sample_rate != PIPELINE_RATE or frame.channels != 1:
            raise AudioFormatError(
                f"session expects {PIPELINE_RATE} Hz mono audio, "
                f"got {frame.sample_rate} Hz with {frame.channels} channels"
            )
        self._listener.push(frame)

    async def send_text(self, text: str) -> None:
        """Typed input from the caller: a complete user turn (it supersedes a reply)."""
        if not self.accepting_input:
            raise SessionClosedError("session is closed")
        text = text.strip()
        if not text:
            return
        self._typed_turn(text)

    def _typed_turn(self, text: str) -> None:
        turn_id = new_turn_id()
        self._interrupt_reply()
        self._emit(TranscriptEvent(turn_id=turn_id, text=text, final=True, confidence=1.0))
        self._hold(UserTurn(turn_id, Transcript(text, 1.0, 0.0, 0.0), TurnClock.now()))
        self._start_held()

    # ------------------------------------------------------------ phone keypad and hold

    def dtmf(self, digit: str, duration_ms: int = 0) -> None:
        """A keypad digit from a phone caller: an event and, with ``dtmf.to_llm``, a user turn.

        Digits pressed within ``dtmf.collect_ms`` of each other form one turn;
        "#" ends it at once (``agent.keypad``).
        """
        if not self.accepting_input:
            raise SessionClosedError("session is closed")
        check_digit(digit)
        self._emit(DtmfEvent(digit=digit, duration_ms=duration_ms))
        self._keypad.press(digit)

    def _keypad_turn(self, text: str) -> None:
        if self.accepting_input:
            self._typed_turn(text)

    @property
    def on_hold(self) -> bool:
        """Whether the caller has put the call on hold."""
        return self._on_hold

    def set_echo_risk(self, possible: bool) -> None:
        """Tell the session whether the caller's line may play the agent's voice back.

        The call bridge sets it from the transport (a phone may be on a
        speakerphone; a browser cancels its own echo). With the agent
        config's ``interruption.echo_guard: auto`` it switches the echo guard
        (``agent.echo_guard``); ``on`` and ``off`` ignore it.
        """
        if self.config.interruption.echo_guard == "auto":
            self._echo_guard.enabled = possible

    def set_hold(self, on_hold: bool) -> None:
        """The caller put the call on hold (or took it back).

        On hold the agent's audio pauses where it is and the caller's audio
        (music on hold) is not listened to: the listener hears silence, so a
        turn under way ends or is discarded as usual. Taken back, the agent
        goes on where it paused.
        """
        if on_hold == self._on_hold or not self.accepting_input:
            return
        self._on_hold = on_hold
        self._listener.muted = on_hold
        self._emit(HoldEvent(on_hold=on_hold))
        if on_hold:
            self.playout.pause(HOLD)
        else:
            self.playout.resume(HOLD)

    async def events(self) -> AsyncIterator[AgentEvent]:
        """Events as they happen, until the session closes."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, StateEvent) and event.state is SessionState.CLOSED:
                return

    async def wait_settled(
        self, poll_s: float = 0.002, *, transcripts: bool = True, reply: bool = True
    ) -> None:
        """Wait until no pipeline work is pending that would change the output.

        For offline, faster-than-real-time drivers (``python -m agent call
        --fast``) and tests: queued input is processed, STT tasks are done
        (unless ``transcripts`` is False), and an active reply either has
        audio ready to play or has nothing more to generate (unless
        ``reply`` is False).
        """
        while not self.closed:
            if self._settled(transcripts, reply):
                return
            await asyncio.sleep(poll_s)

    def _settled(self, transcripts: bool, wait_reply: bool) -> bool:
        if not self._listener.settled(transcripts=transcripts):
            return False
        reply = self._reply
        if not wait_reply or reply is None or reply.done:
            return True
        has_audio = self.playout.buffered_ms >= self.playout.frame_ms
        return has_audio or reply.generation_done or self.playout.paused

    # ------------------------------------------------------------ what the listener hears

    def speech_started(self, turn_id: str, speech_start: float, now: float) -> None:
        """See ``agent.listener.Hearing``."""
        self._preemption.drop()  # a new turn: a held reply answered an earlier one
        self._emit(VadEvent(speaking=True, stream_time=speech_start))
        self._apply(self._barge.speech_started(speech_start, now))

    def speech_paused(self, turn_id: str, speech_end: float) -> None:
        """See ``agent.listener.Hearing``."""
        self._emit(VadEvent(speaking=False, stream_time=speech_end))
        self._barge.speech_paused(speech_end)

    def speech_resumed(self, turn_id: str, now: float) -> None:
        """See ``agent.listener.Hearing``."""
        self._preemption.drop()  # the caller goes on: the held reply answered too little
        self._emit(VadEvent(speaking=True, stream_time=now))
        self._apply(self._barge.speech_resumed(now))

    def speech_discarded(self, turn_id: str, now: float) -> None:
        """See ``agent.listener.Hearing``."""
        self._preemption.drop()
        self._apply(self._barge.speech_ended())
        self._start_held()

    def stream_advanced(self, now: float) -> None:
        """See ``agent.listener.Hearing``."""
        self._apply(self._barge.advance(now))

    def partial_transcript(self, turn_id: str, transcript: Transcript) -> None:
        """See ``agent.listener.Hearing``."""
        self._emit(
            TranscriptEvent(
                turn_id=turn_id, text=transcript.text, final=False, confidence=transcript.confidence
            )
        )
        heard = self._heard_words(transcript.text)
        if heard.only_echo:
            self._apply(self._barge.echo_heard())
        else:
            self._apply(self._barge.words_heard(heard.own))

    def speculative_transcript(
        self, turn_id: str, speech_end: float, transcript: Transcript
    ) -> None:
        """See ``agent.listener.Hearing``: with ``turn.preemptive_reply``, start the
        reply to the pause's words now, held until the turn is confirmed."""
        self._preemption.drop()  # an earlier pause's reply (normally dropped already)
        if self._preemption.enabled and self._idle and self._heard_words(transcript.text).own:
            messages = self.history.context_with_user(transcript.text)
            plan = ReplyPlan(messages=messages, tools=self._replies.specs())
            self._preemption.prepare(turn_id, speech_end, plan)

    @property
    def _idle(self) -> bool:
        """Only a caller talking to an idle agent gets a preemptive reply: over an active
        reply (a barge-in) the turn commits that reply first, so the request would differ."""
        return (
            self.accepting_input
            and not self._on_hold
            and self._reply is None
            and not self._held
            and not self._replies.unsettled
            and not self._listener.finals_pending
        )

    def _launch_held(self, held: PreemptiveReply) -> Reply:
        """Build and start a held reply (``Preemption``'s launcher; the session owns its task)."""
        handle = SpeechHandle(turn_id=held.turn_id, playout=self.playout)
        reply = self._replies.build(
            handle, held.plan, TurnClock.now(), emit=held.emit, confirmed=held.confirmed
        )
        handle.task = self._tasks.spawn(self._run_reply(reply), "reply-preemptive")
        return reply

    def user_turn(self, turn: UserTurn) -> None:
        """See ``agent.listener.Hearing``: a turn with its final transcript."""
        words = self._heard_words(turn.transcript.text).own
        # A turn with words supersedes the active reply: it is committed (as heard,
        # with its events) before the caller's new words enter the history and the
        # store, so both keep the order in which things were said.
        self._apply(self._barge.turn_transcribed(words))
        if words:
            self._emit(
                TranscriptEvent(
                    turn_id=turn.turn_id,
                    text=turn.transcript.text,
                    final=True,
                    confidence=turn.transcript.confidence,
                )
            )
            self._hold(turn)
        self._start_held()
        self._preemption.drop(turn.turn_id)  # not adopted: the turn had no words to answer

    def stt_failed(self, turn_id: str, error: ProviderError, final: bool) -> None:
        """See ``agent.listener.Hearing``: with every STT provider down, the caller
        hears the apology rather than silence."""
        self._emit_error("stt", error)
        if final:
            self._preemption.drop()
            self._apply(self._barge.turn_transcribed(0))
            if isinstance(error, AllProvidersFailedError) and self._reply is None:
                self._apologize()
                return
            self._start_held()

    # ------------------------------------------------------------ user turns

    def _hold(self, turn: UserTurn) -> None:
        self.history.add_user(turn.transcript.text)
        self._held.append(turn)

    def _start_held(self) -> None:
        """Answer the held user turn(s), unless the caller is still talking."""
        if not self._held or not self.accepting_input:
            return
        if self._listener.in_turn or self._listener.finals_pending:
            return  # more is coming: the next turn's text joins these
        last = self._held[-1]
        self._held.clear()
        plan = ReplyPlan(messages=self.history.context(), tools=self._replies.specs())
        held = self._preemption.claim(last.turn_id, last.speech_end, plan)
        if held is not None:
            self._adopt(held, last.clock)
        else:
            self._start_reply(last.turn_id, last.clock, plan)

    def _heard_words(self, text: str) -> HeardWords:
        """A transcript's content words (no fillers), split into the caller's own and
        echoes of what the agent is saying or just said."""
        speaking: list[str] = []
        handle = self._reply
        if handle is not None:
            speaking = [s.text for s in self.playout.segments(handle.id) if s.played_samples]
        return self._echo_guard.split(text, speaking, time.monotonic())

    # ------------------------------------------------------------ barge-in

    def _apply(self, actions: list[BargeInAction]) -> None:
        for action in actions:
            reply = self._reply
            if action is BargeInAction.PAUSE:
                self.playout.pause(BARGE_IN)
                self._replies.hold_tools()  # none starts while the caller may be stopping it
                self._listener.urgent_partials = True
                if reply is not None:
                    self._emit(InterruptionEvent(turn_id=reply.turn_id, phase=action.value))
            elif action is BargeInAction.RESUME:
                self.playout.resume(BARGE_IN)
                self._replies.allow_tools()
                self._listener.urgent_partials = False
                if reply is not None and not reply.done:
                    self._emit(InterruptionEvent(turn_id=reply.turn_id, phase=action.value))
            else:
                self._listener.urgent_partials = False
                self._interrupt_reply()
        if self._barge.hold_ms != self._hold_ms:  # a false pause raised it, or it relaxed
            self._log_hold()

    def _log_hold(self) -> None:
        """Say when the barge-in onset hold adapts to the line (``agent.interruption``)."""
        self._hold_ms = self._barge.hold_ms
        log.info(
            "session %s: barge-in hold %d ms (false pauses so far: %d)",
            self.id,
            self._hold_ms,
            self._barge.false_pauses,
        )

    def _interrupt_reply(self) -> None:
        """Stop the active reply for good (the caller spoke or typed over it)."""
        reply = self._reply
        if reply is None or reply.done:
            return
        reply.interrupt()
        self._emit(InterruptionEvent(turn_id=reply.turn_id, phase=BargeInAction.CONFIRM.value))
        self._commit_reply(reply)

    # ------------------------------------------------------------ replies

    def _start_reply(
        self, turn_id: str, clock: TurnClock, plan: ReplyPlan, *, local_voice: bool = False
    ) -> None:
        self._preemption.drop()
        self._interrupt_reply()
        handle = SpeechHandle(turn_id=turn_id, playout=self.playout)
        reply = self._replies.build(handle, plan, clock, emit=self._emit, local_voice=local_voice)
        self._replies.track(reply)
        self._reply = handle
        self._set_state(SessionState.THINKING)
        handle.task = self._tasks.spawn(self._run_reply(reply), "reply")
        self._apply(self._barge.reply_started(self._listener.now))

    def _adopt(self, held: PreemptiveReply, clock: TurnClock) -> None:
        """The turn a held reply answers is confirmed: it becomes the turn's reply."""
        reply = held.reply
        assert reply is not None  # a claimed reply was launched
        self._replies.track(reply)
        self._reply = reply.handle
        self._set_state(SessionState.THINKING)
        self._preemption.adopt(held, clock, self._emit)  # its kept events go out in order
        self._apply(self._barge.reply_started(self._listener.now))

    async def _run_reply(self, reply: Reply) -> None:
        handle = reply.handle
        apologize = False
        try:
            failure = await self._replies.run(reply)
            if failure is not None and self._preemption.holds(reply):
                # unseen: the confirmation asks afresh, and that reply reports its failure
                log.debug("session %s: a held reply failed: %s", self.id, failure)
                self.playout.clear(handle.id)
                return
            if failure is not None:
                self._emit_error("reply", failure)
                handle.interrupted = True  # commit only what was heard before the failure
                # every provider of a stage failed before the caller heard a word:
                # a turn never goes silent (a reply cut mid-way just ends)
                apologize = isinstance(failure, AllProvidersFailedError) and not (
                    handle.heard_text or reply.plan.canned is not None
                )
                self.playout.clear(handle.id)
        finally:
            self._commit_reply(handle)
            self._replies.ended(handle.id)
        if apologize and self._reply is None and self.accepting_input:
            self._apologize()

    def _tool_context(self, turn_id: str) -> ToolContext:
        """What a turn's tools act on: this call, and the caller as known now."""
        return ToolContext(
            session_id=self.id, user_id=self.user_id, turn_id=turn_id, preferences=self.preferences
        )

    def _apologize(self) -> None:
        """Say the configured apology in the local voice, as a turn of its own (heard, so
        it joins the history after the failed reply)."""
        plan = ReplyPlan(canned=self.config.fallback.apology)
        self._start_reply(new_turn_id(), TurnClock.now(), plan, local_voice=True)

    def _on_speaking(self, handle: SpeechHandle) -> None:
        if self._reply is not handle:
            return
        self._barge.reply_audible()  # its echo may come back from now (the onset hold adapts)
        if self._state is SessionState.THINKING:
            self._set_state(SessionState.SPEAKING)

    def _commit_reply(self, handle: SpeechHandle) -> None:
        """Record the reply as heard, emit its events, return to LISTENING (once)."""
        reply = self._replies.take(handle.id)
        if reply is None:
            return  # already committed (or a held reply, never adopted)
        heard = handle.heard_text if handle.interrupted else handle.text.strip()
        self._echo_guard.reply_ended(heard, time.monotonic())
        self._replies.commit(reply, heard)  # a round still running gets its history slot
        self._emit(
            ReplyEvent(
                turn_id=handle.turn_id,
                text=handle.text.strip(),
                heard_text=heard,
                interrupted=handle.interrupted,
            )
        )
        first_audio = self.playout.first_audio_at(handle.id)
        # held replies dropped since the last reported turn were served all the same
        reply.clock.usage.add_dropped(self._preemption.take_dropped())
        self._emit(reply.clock.metrics(handle.turn_id, first_audio, handle.interrupted))
        self.playout.forget(handle.id)
        if self._reply is handle:
            self._reply = None
            self._barge.reply_ended()
            self._listener.urgent_partials = False
            self.playout.resume(BARGE_IN)
            self._replies.allow_tools()
            if self._state in (SessionState.THINKING, SessionState.SPEAKING):
                self._set_state(SessionState.LISTENING)

    # ------------------------------------------------------------ plumbing

    def _set_state(self, state: SessionState) -> None:
        previous = self._state
        if state is previous:
            return
        if state not in TRANSITIONS[previous]:
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

    def _task_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        name = task.get_name()
        log.error("session %s: task %s failed: %s", self.id, name, describe_failure(exc))
        if self.closed:
            return
        self._emit(ErrorEvent(stage=name, message=type(exc).__name__, retryable=False))
        if name in FATAL_TASKS and self._closing is None:
            # Without its audio loop the call is deaf: end it rather than leave it open.
            # The closing task is kept here; a concurrent close() by the call's
            # owner waits for it (see close()).
            self.failure = f"{name} failed: {type(exc).__name__}"
            self._closing = asyncio.get_running_loop().create_task(
                self.close(), name=f"session-close-{self.id}"
            )
