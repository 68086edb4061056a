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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from agent.chunker import ChunkerSettings, SentenceChunker
from agent.events import AgentEvent, ReplyDeltaEvent
from agent.llm import (
    LLM,
    ChatMessage,
    GenerationSettings,
    ToolCallAssembler,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from agent.speech import SpeechHandle
from agent.tts import TTS, SpeechChunk, StreamingTTS, TTSInputStream
from agent.turnclock import TurnClock
from media.frames import PCM
from media.playout import PlayoutBuffer, SegmentPlayback
from media.resample import StreamResampler

CHUNK_QUEUE = 8
"""Text chunks waiting for synthesis (back-pressure on the LLM past it)."""


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """What to say: a canned text, or the LLM's answer to ``messages``."""

    messages: Sequence[ChatMessage] = ()
    canned: str | None = None
    tools: Sequence[ToolSpec] = ()


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
    ) -> None:
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

    async def run(self) -> None:
        """Generate and speak the reply until it is played out.

        Raises what a stage raised (an ``AgentError`` for provider failures);
        the caller commits what was heard either way.
        """
        handle = self.handle
        chunks: asyncio.Queue[str | None] = asyncio.Queue(CHUNK_QUEUE)
        self._playout.open_utterance(handle.id)
        # The start watcher lives until the reply is played out: a reply may
        # produce no audio at all (empty text, a tool call only), so it cannot
        # be one of the generation tasks the TaskGroup waits for.
        watcher = asyncio.create_task(self._watch_start(), name="reply-start")
        try:
            if isinstance(self._tts, StreamingTTS) and self.plan.canned is None:
                # the LLM's text streams in; a canned text is whole already (and may be
                # in the phrase cache)
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
        self, put: Callable[[str | None], Awaitable[None]], *, chunked: bool = True
    ) -> None:
        """The reply's text to ``put``: clause chunks (``chunked``) or the LLM's pieces as
        they come; ``None`` at the end."""
        handle, clock = self.handle, self.clock
        chunker = SentenceChunker(self._chunker)
        if self.plan.canned is not None:
            handle.text = self.plan.canned
            pieces = chunker.feed(self.plan.canned) + chunker.flush() if chunked else [handle.text]
            for piece in pieces:
                await put(piece)
            await put(None)
            return
        clock.llm_start = time.monotonic()
        calls = ToolCallAssembler()
        stream = self._llm.stream(self.plan.messages, self._generation, self.plan.tools)
        async with contextlib.aclosing(stream) as deltas:
            async for delta in deltas:
                if isinstance(delta, UsageDelta):
                    usage = clock.usage
                    usage.llm_provider, usage.llm_model = delta.provider, delta.model
                    usage.prompt_tokens += delta.prompt_tokens
                    usage.completion_tokens += delta.completion_tokens
                    continue
                if clock.llm_first_token is None:
                    clock.llm_first_token = time.monotonic()
                clock.llm_tokens += 1
                if isinstance(delta, ToolCallDelta):
                    calls.feed(delta)
                    continue
                if not delta.text:
                    continue
                handle.text += delta.text
                self._emit(ReplyDeltaEvent(turn_id=handle.turn_id, text=delta.text))
                for piece in chunker.feed(delta.text) if chunked else [delta.text]:
                    await put(piece)
        if calls:
            handle.tool_calls = calls.calls()
        for piece in chunker.flush() if chunked else []:
            await put(piece)
        await put(None)

    async def _run_streaming(self, tts: StreamingTTS) -> None:
        """Text into one input stream as it is written, its audio out as it comes."""
        stream = tts.open_stream()
        usage = self.clock.usage

        async def put(text: str | None) -> None:
            if text is None:
                await stream.end()
                return
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

    async def _synthesize(self, chunks: asyncio.Queue[str | None]) -> None:
        handle, clock, playout = self.handle, self.clock, self._playout
        while (text := await chunks.get()) is not None:
            if handle.interrupted:
                return  # clear() woke us before the cancellation arrived: stop here
            segment = playout.open_segment(handle.id, text)
            clock.usage.tts_chars += len(text)
            if clock.tts_first_chunk is None:
                clock.tts_first_chunk = time.monotonic()
            resampler: StreamResampler | None = None
            async with contextlib.aclosing(self._tts.stream(text)) as speech:
                async for chunk in speech:
                    if handle.interrupted:
                        return
                    if clock.tts_first_audio is None:
                        clock.tts_first_audio = time.monotonic()
                    self._spoken_by(chunk)
                    if resampler is None or resampler.in_rate != chunk.sample_rate:
                        if resampler is not None:
                            await self._push(segment, await _flush(resampler))
                        resampler = StreamResampler(chunk.sample_rate, playout.sample_rate)
                    await self._push(segment, await _resample(resampler, chunk))
            if resampler is not None:
                await self._push(segment, await _flush(resampler))
            playout.close_segment(segment)

    async def _push(self, segment: SegmentPlayback, pcm: PCM) -> None:
        if pcm.size:
            await self._playout.push(segment, pcm)

    async def _watch_start(self) -> None:
        await self._playout.wait_started(self.handle.id)
        if not self.handle.interrupted:
            self._on_speaking(self.handle)


async def _resample(resampler: StreamResampler, chunk: SpeechChunk) -> PCM:
    """Resample a TTS chunk off the event loop (passthrough when the rates match)."""
    if resampler.in_rate == resampler.out_rate:
        return chunk.pcm
    return await asyncio.to_thread(resampler.process, chunk.pcm)


async def _flush(resampler: StreamResampler) -> PCM:
    if resampler.in_rate == resampler.out_rate:
        return resampler.flush()
    return await asyncio.to_thread(resampler.flush)
