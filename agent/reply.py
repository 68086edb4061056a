"""One reply of the agent: LLM -> sentence chunker -> TTS -> playout, with its metrics.

A ``Reply`` runs as the task of its ``SpeechHandle``: interrupting the handle
cancels it, and the playout buffer's per-segment accounting tells what the
caller heard. Two stages run in one ``TaskGroup``: text (LLM tokens or a
canned text, cut into chunks) and speech (TTS per chunk, resampled to the
playout rate off the event loop, pushed into the playout buffer); a watcher
reports when the first sample is played (it lives until the reply is played
out: a reply may have no audio at all, e.g. a tool call only).

Bounds: at most ``CHUNK_QUEUE`` text chunks wait between the LLM and the
TTS (the LLM waits when the TTS lags: text is never dropped); audio waits in
the playout buffer's own bound.

First sound: the near-silence a voice starts the reply's audio with (Piper:
20-50 ms under -60 dBFS) is dropped before it reaches the playout buffer
(``media.leadin``), so the caller hears the first word sooner; the pauses
between the reply's sentences are left alone.

TTS chunks carry their own sample rate, so the voice may change between
chunks (a fallback from a cloud voice to Piper mid-reply): each change of
rate gets a fresh resampler.

With a TTS that takes text as it is written (``StreamingTTS``: ElevenLabs'
input-streaming WebSocket), the LLM's text goes to one input stream as it
comes, without waiting for a clause, and each audio chunk becomes a playout
segment of the characters it speaks (the chunk's ``text``), so the heard
text stays exact. Interrupting the reply closes the stream at once.

Usage (``TurnClock.usage``): the LLM's ``UsageDelta`` (who served, tokens),
the characters sent to synthesis, and the provider and voice that spoke.

Tools: the LLM's side runs in ``agent.toolloop.ToolLoop`` (steps, tool
rounds, filler, clarification); the reply speaks what the loop says. The text
before a tool call is spoken while the round runs, and every text chunk
remembers its step and whether it was a filler, so an interrupted reply
commits to the history exactly what the caller heard of each step (fillers
left out). A reply that offers tools speaks chunk by chunk even with an
input-streaming TTS: that voice holds short text until more comes, and the
words before a tool call and the filler must be heard while the tool runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from agent.chunker import ChunkerSettings, SentenceChunker
from agent.events import AgentEvent, ReplyDeltaEvent
from agent.history import ChatHistory
from agent.llm import LLM, ChatMessage, GenerationSettings, ToolSpec
from agent.speech import SpeechHandle
from agent.toolloop import ToolLoop, ToolUse
from agent.tts import TTS, SpeechChunk, StreamingTTS, TTSInputStream
from agent.turnclock import TurnClock
from media.frames import PCM
from media.leadin import LeadInTrimmer
from media.playout import PlayoutBuffer, SegmentPlayback, heard_text
from media.resample import StreamResampler

CHUNK_QUEUE = 8
"""Text chunks waiting for synthesis (back-pressure on the LLM past it)."""


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """What to say: a canned text, or the LLM's answer to ``messages``.

    ``tools`` are the specs offered to the model (run through the reply's ``ToolUse``).
    """

    messages: Sequence[ChatMessage] = ()
    canned: str | None = None
    tools: Sequence[ToolSpec] = ()


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A piece of text to synthesize, with the step of the reply it belongs to."""

    text: str
    step: int = 0
    filler: bool = False
    """Said while a tool ran; spoken and heard, but not part of the conversation."""


class Reply:
    """Produces, speaks and accounts one utterance (run it as the handle's task)."""

    def __init__(
        self,
        handle: SpeechHandle,
        plan: ReplyPlan,
        clock: TurnClock,
        *,
        llm: LLM,
        tts: TTS,
        playout: PlayoutBuffer,
        generation: GenerationSettings,
        chunker: ChunkerSettings,
        emit: Callable[[AgentEvent], None],
        on_speaking: Callable[[SpeechHandle], None],
        tools: ToolUse | None = None,
        held: bool = False,
    ) -> None:
        """``held``: a preemptive reply (``agent.preemption``): its audio is queued as a
        held utterance, silent until the session releases it (at most the playout's
        ``max_held_ms`` of it: then synthesis waits for the release)."""
        self.handle = handle
        self.plan = plan
        self.clock = clock
        self._llm = llm
        self._tts = tts
        self._playout = playout
        self._generation = generation
        self._chunker = chunker
        self._emit = emit
        self._on_speaking = on_speaking
        self._tools = tools
        self._held = held
        self.loop: ToolLoop | None = None
        """The LLM's steps and tool rounds (None for a canned text, or before it starts)."""
        self._tags: list[TextChunk] = []
        """The chunk of each playout segment opened, in order."""
        self._lead_in = LeadInTrimmer(playout.sample_rate)
        """Drops the voice's quiet start of the reply's first audio (not between sentences)."""

    async def run(self) -> None:
        """Generate and speak the reply until it is played out.

        Raises what a stage raised (an ``AgentError`` for provider failures);
        the caller commits what was heard either way.
        """
        handle = self.handle
        chunks: asyncio.Queue[TextChunk | None] = asyncio.Queue(CHUNK_QUEUE)
        self._playout.open_utterance(handle.id, held=self._held)
        # The start watcher lives until the reply is played out: a reply may
        # produce no audio at all (empty text, a tool call only), so it cannot
        # be one of the generation tasks the TaskGroup waits for.
        watcher = asyncio.create_task(self._watch_start(), name="reply-start")
        try:
            plan = self.plan
            if isinstance(self._tts, StreamingTTS) and plan.canned is None and not plan.tools:
                # the LLM's text streams in; a canned text is whole already (and may be
                # in the phrase cache); tool replies speak by chunk (module doc)
                await self._run_streaming(self._tts)
            else:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._produce_text(chunks.put), name="reply-text")
                    group.create_task(self._synthesize(chunks), name="reply-speech")
            handle.generation_done = True
            self._playout.finish_utterance(handle.id)
            await self._playout.wait_done(handle.id)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _produce_text(
        self, put: Callable[[TextChunk | None], Awaitable[None]], *, chunked: bool = True
    ) -> None:
        """The reply's text to ``put``: clause chunks (``chunked``) or the LLM's pieces as
        they come; ``None`` at the end."""
        handle = self.handle
        if self.plan.canned is not None:
            handle.text = self.plan.canned
            chunker = SentenceChunker(self._chunker)
            pieces = chunker.feed(handle.text) + chunker.flush() if chunked else [handle.text]
            for piece in pieces:
                await put(TextChunk(piece))
            await put(None)
            return
        loop = ToolLoop(
            self._llm,
            self._generation,
            self.clock,
            tools=self._tools,
            offer=self.plan.tools,
            emit=self._emit,
        )
        self.loop = loop
        speaker = _ReplySpeaker(
            handle, self._emit, self._playout, self._chunker, put, chunked=chunked
        )
        try:
            await loop.run(self.plan.messages, speaker)
        finally:
            handle.tool_calls = list(loop.calls)
        await speaker.flush()
        await put(None)

    @property
    def acting(self) -> bool:
        """Whether a round of tools still runs (its results join the history later)."""
        return self.loop is not None and self.loop.acting

    def commit(self, history: ChatHistory, heard: str, *, interrupted: bool) -> None:
        """Write the reply into ``history`` as heard (``heard``: the whole utterance's)."""
        loop = self.loop
        if loop is None or not loop.used_tools:
            history.add_assistant(heard, interrupted=interrupted)
            return
        heard_by_step = self._heard_by_step() if interrupted else None
        loop.commit(history, heard_by_step, interrupted=interrupted)

    def _heard_by_step(self) -> dict[int, str]:
        """What the caller heard of each step's words (fillers left out)."""
        parts: dict[int, list[str]] = {}
        for segment, chunk in zip(self._playout.segments(self.handle.id), self._tags, strict=False):
            if chunk.filler:
                continue
            text = heard_text([segment])
            if text:
                parts.setdefault(chunk.step, []).append(text)
        return {step: " ".join(words) for step, words in parts.items()}

    async def _run_streaming(self, tts: StreamingTTS) -> None:
        """Text into one input stream as it is written, its audio out as it comes."""
        stream = tts.open_stream()
        usage = self.clock.usage

        async def put(chunk: TextChunk | None) -> None:
            if chunk is None:
                await stream.end()
                return
            text = chunk.text
            if self.clock.tts_first_chunk is None:
                self.clock.tts_first_chunk = time.monotonic()
            usage.tts_chars += len(text)
            await stream.push(text)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._produce_text(put, chunked=False), name="reply-text")
                group.create_task(self._speak_stream(stream), name="reply-speech")
        finally:
            await stream.aclose()

    async def _speak_stream(self, stream: TTSInputStream) -> None:
        handle, clock, playout = self.handle, self.clock, self._playout
        resampler: StreamResampler | None = None
        async for chunk in stream:
            if handle.interrupted:
                return
            if clock.tts_first_audio is None:
                clock.tts_first_audio = time.monotonic()
            self._spoken_by(chunk)
            # each chunk is a segment of the characters it speaks: the heard text stays exact
            segment = playout.open_segment(handle.id, chunk.text or "")
            if resampler is None or resampler.in_rate != chunk.sample_rate:
                resampler = StreamResampler(chunk.sample_rate, playout.sample_rate)
            await self._push(segment, await _resample(resampler, chunk))
            playout.close_segment(segment)
        if resampler is not None:
            tail = await _flush(resampler)
            if tail.size:
                segment = playout.open_segment(handle.id, "")
                await self._push(segment, tail)
                playout.close_segment(segment)

    def _spoken_by(self, chunk: SpeechChunk) -> None:
        self.handle.voice = chunk.voice
        usage = self.clock.usage
        usage.tts_provider, usage.tts_voice = chunk.provider, chunk.voice

    async def _synthesize(self, chunks: asyncio.Queue[TextChunk | None]) -> None:
        handle, clock, playout = self.handle, self.clock, self._playout
        while (chunk := await chunks.get()) is not None:
            if handle.interrupted:
                return  # clear() woke us before the cancellation arrived: stop here
            text = chunk.text
            segment = playout.open_segment(handle.id, text)
            self._tags.append(chunk)
            clock.usage.tts_chars += len(text)
            if clock.tts_first_chunk is None:
                clock.tts_first_chunk = time.monotonic()
            resampler: StreamResampler | None = None
            async with contextlib.aclosing(self._tts.stream(text)) as speech:
                async for audio in speech:
                    if handle.interrupted:
                        return
                    if clock.tts_first_audio is None:
                        clock.tts_first_audio = time.monotonic()
                    self._spoken_by(audio)
                    if resampler is None or resampler.in_rate != audio.sample_rate:
                        if resampler is not None:
                            await self._push(segment, await _flush(resampler))
                        resampler = StreamResampler(audio.sample_rate, playout.sample_rate)
                    await self._push(segment, await _resample(resampler, audio))
            if resampler is not None:
                await self._push(segment, await _flush(resampler))
            playout.close_segment(segment)

    async def _push(self, segment: SegmentPlayback, pcm: PCM) -> None:
        pcm = self._lead_in.process(pcm)
        if pcm.size:
            await self._playout.push(segment, pcm)

    async def _watch_start(self) -> None:
        await self._playout.wait_started(self.handle.id)
        if not self.handle.interrupted:
            self._on_speaking(self.handle)


class _ReplySpeaker:
    """The loop's ``Speaker`` for a spoken reply: text into the handle, the reply's
    events and the chunk queue (clause chunks, one chunker per step)."""

    def __init__(
        self,
        handle: SpeechHandle,
        emit: Callable[[AgentEvent], None],
        playout: PlayoutBuffer,
        settings: ChunkerSettings,
        put: Callable[[TextChunk | None], Awaitable[None]],
        *,
        chunked: bool,
    ) -> None:
        self._handle = handle
        self._emit = emit
        self._playout = playout
        self._settings = settings
        self._put = put
        self._chunked = chunked
        self._step = 0
        self._chunker = SentenceChunker(settings)

    async def say(self, text: str, step: int, *, filler: bool = False) -> None:
        handle = self._handle
        if filler and handle.text and not handle.text[-1].isspace():
            text = " " + text
        handle.text += text
        self._emit(ReplyDeltaEvent(turn_id=handle.turn_id, text=text))
        if filler:
            await self.flush()
            await self._put(TextChunk(text.strip(), step, filler=True))
            return
        self._step = step
        for piece in self._chunker.feed(text) if self._chunked else [text]:
            await self._put(TextChunk(piece, step))

    async def end_step(self, step: int) -> None:
        await self.flush()
        self._chunker = SentenceChunker(self._settings)  # the next step starts afresh

    async def flush(self) -> None:
        """Speak what the chunker still holds."""
        for piece in self._chunker.flush() if self._chunked else []:
            await self._put(TextChunk(piece, self._step))

    def idle(self) -> bool:
        return self._playout.buffered_ms < self._playout.frame_ms


async def _resample(resampler: StreamResampler, chunk: SpeechChunk) -> PCM:
    """Resample a TTS chunk off the event loop (passthrough when the rates match)."""
    if resampler.in_rate == resampler.out_rate:
        return chunk.pcm
    return await asyncio.to_thread(resampler.process, chunk.pcm)


async def _flush(resampler: StreamResampler) -> PCM:
    if resampler.in_rate == resampler.out_rate:
        return resampler.flush()
    return await asyncio.to_thread(resampler.flush)
