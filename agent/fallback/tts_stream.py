"""``FallbackInputStream``: a ``TTSInputStream`` that survives its primary failing before audio.

States (transitions in ``TRANSITIONS``)::

    PRIMARY  --first audio------------------------------------>  SPEAKING
    PRIMARY  --failure / no audio in time / circuit open------>  CHUNKED
    PRIMARY, SPEAKING, CHUNKED  --all audio delivered--------->  DONE
    SPEAKING, CHUNKED  --failure------------------------------>  FAILED
    any  --aclose() (or the audio consumer stopped)----------->  CLOSED

PRIMARY: text goes to the primary's input stream and is also recorded, cut
into sentence chunks by a ``SentenceChunker``. The first-audio limit starts
when the first chunk is complete (or at ``end()``): that is when a
non-streaming TTS would already be speaking, while an input-streaming one
may rightly wait for more text before then.

CHUNKED: the primary was given up before the caller heard anything; the
recorded chunks, then every chunk of text pushed later, are synthesized one
after the other by the rest of the chain (``speak``), each as one
``SpeechChunk`` whose ``text`` is the chunk (so played-text accounting stays
exact). Text is never dropped; the chunks wait in a deque bounded by the
utterance's own text (the LLM's ``max_tokens``).

SPEAKING: audio flows from the primary; a failure, or ``idle_s`` without
audio once ``end()`` was called, ends the utterance with a ``ProviderError``
from the iterator and from ``push``/``end``; nothing is repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import cast

import numpy as np

from agent.chunker import ChunkerSettings, SentenceChunker
from agent.errors import ProviderError, ProviderTimeoutError
from agent.fallback.chain import Attempt, ChainEntry, ProviderChain
from agent.fallback.policy import Limits
from agent.tts import TTS, SpeechChunk, StreamingTTS, TTSInputStream

log = logging.getLogger("agent.fallback")

Speak = Callable[[str], AsyncGenerator[SpeechChunk, None]]
"""Synthesizes one text chunk with the fallback providers."""


class InputState(StrEnum):
    """Where a ``FallbackInputStream`` gets its audio from."""

    PRIMARY = "primary"
    SPEAKING = "speaking"
    CHUNKED = "chunked"
    DONE = "done"
    FAILED = "failed"
    CLOSED = "closed"


TRANSITIONS: dict[InputState, frozenset[InputState]] = {
    InputState.PRIMARY: frozenset(
        {InputState.SPEAKING, InputState.CHUNKED, InputState.DONE, InputState.CLOSED}
    ),
    InputState.SPEAKING: frozenset({InputState.DONE, InputState.FAILED, InputState.CLOSED}),
    InputState.CHUNKED: frozenset({InputState.DONE, InputState.FAILED, InputState.CLOSED}),
    InputState.DONE: frozenset({InputState.CLOSED}),
    InputState.FAILED: frozenset({InputState.CLOSED}),
    InputState.CLOSED: frozenset(),
}


class FallbackInputStream:
    """One utterance of a ``StreamingFallbackTTS``; see the module docstring.

    Like any ``TTSInputStream``: one task calls ``push``/``end``, another
    iterates the audio (once); ``aclose()`` abandons it at once, and text
    pushed after that is dropped.
    """

    def __init__(
        self,
        engine: ProviderChain[TTS],
        primary: ChainEntry[TTS],
        *,
        speak: Speak,
        limits: Limits,
        chunker: ChunkerSettings,
    ) -> None:
        self._engine = engine
        self._name = primary.name
        self._speak_chunk = speak
        self._limits = limits
        self._chunker = SentenceChunker(chunker)
        self._chunks: deque[str] = deque()
        self._changed = asyncio.Event()
        self._ended = False
        self._deadline: float | None = None
        self._timer: asyncio.Timeout | None = None
        self._synth: asyncio.Task[list[SpeechChunk]] | None = None
        self._iterated = False
        self._failure: ProviderError | None = None
        self._inner: TTSInputStream | None = None
        self._state = InputState.PRIMARY
        self._attempt: Attempt[TTS] | None = engine.begin(primary)
        if self._attempt is None:
            engine.skipped(primary)
            engine.stats.reroutes[(engine.service, self._name)] += 1
            self._move(InputState.CHUNKED)
            return
        try:
            self._inner = cast(StreamingTTS, primary.provider).open_stream()
        except Exception as exc:
            self._give_up_primary(exc)

    @property
    def state(self) -> InputState:
        """Where the audio comes from now."""
        return self._state

    # -------------------------------------------------------------- text side

    async def push(self, text: str) -> None:
        """Add text as the LLM writes it."""
        if self._usable_for_text():
            if self._ended:
                raise RuntimeError("push() after end()")
            if self._state is not InputState.SPEAKING:
                self._record(self._chunker.feed(text))
            if self._inner is not None and self._state in _ON_PRIMARY:
                await self._forward(self._inner.push(text))

    async def end(self) -> None:
        """No more text: speak what is pending, then end the audio."""
        if not self._usable_for_text() or self._ended:
            return
        self._ended = True
        self._changed.set()
        if self._state is InputState.SPEAKING:
            self._arm(self._limits.idle_s)
        else:
            self._record(self._chunker.flush())
            if self._state is InputState.PRIMARY:
                self._arm(self._limits.tts_first_audio_s)
        if self._inner is not None and self._state in _ON_PRIMARY:
            await self._forward(self._inner.end())

    def _usable_for_text(self) -> bool:
        if self._state is InputState.FAILED and self._failure is not None:
            raise self._failure
        return self._state is not InputState.CLOSED

    def _record(self, chunks: list[str]) -> None:
        if chunks:
            self._chunks.extend(chunks)
            self._changed.set()
            if self._state is InputState.PRIMARY:
                self._arm(self._limits.tts_first_audio_s)

    async def _forward(self, call: Awaitable[None]) -> None:
        """Await a call into the primary; its failure reroutes or ends the utterance."""
        try:
            await call
        except Exception as exc:
            if self._state is InputState.PRIMARY:
                self._give_up_primary(exc)
                await self._close_inner()
            elif self._state is InputState.SPEAKING:
                error = self._fail(exc)
                await self._close_inner()
                raise error from None
            # otherwise the primary was already given up (or closed): nothing to add

    # ------------------------------------------------------------- audio side

    def __aiter__(self) -> AsyncIterator[SpeechChunk]:
        """The audio, as it is synthesized (iterate once)."""
        if self._iterated:
            raise RuntimeError("the audio of an input stream can be iterated once")
        self._iterated = True
        return self._audio()

    async def _audio(self) -> AsyncGenerator[SpeechChunk, None]:
        try:
            if self._inner is not None:
                chunks = aiter(self._inner)
                while self._state in _ON_PRIMARY:
                    chunk = await self._next_primary(chunks)
                    if chunk is not None:
                        yield chunk
            while self._state is InputState.CHUNKED:
                text = await self._next_text()
                if text is not None:
                    for speech in await self._speak(text):
                        yield speech
            if self._state is InputState.FAILED and self._failure is not None:
                raise self._failure
        finally:
            await self.aclose()

    async def _next_primary(self, chunks: AsyncIterator[SpeechChunk]) -> SpeechChunk | None:
        """The primary's next audio, or None when its part changed state."""
        try:
            async with asyncio.timeout_at(self._deadline) as timer:
                self._timer = timer
                chunk = await anext(chunks)
        except StopAsyncIteration:
            self._primary_ended()
            return None
        except Exception as exc:
            error: BaseException = exc
            if timer.expired():
                limit = (
                    self._limits.tts_first_audio_s
                    if self._state is InputState.PRIMARY
                    else self._limits.idle_s
                )
                error = ProviderTimeoutError(self._name, f"no audio within {limit:g} s")
            if self._state is InputState.PRIMARY:
                self._give_up_primary(error)
            elif self._state is InputState.SPEAKING:
                self._fail(error)
            await self._close_inner()
            return None
        finally:
            self._timer = None
        if self._state is InputState.PRIMARY and chunk.pcm.size:
            self._move(InputState.SPEAKING)
            self._chunks.clear()
        elif self._state not in _ON_PRIMARY:
            return None  # given up or closed meanwhile: its late audio is not played
        if self._state is InputState.SPEAKING:
            self._deadline = None
            if self._ended:
                self._arm(self._limits.idle_s)
        return chunk

    def _primary_ended(self) -> None:
        if self._state not in _ON_PRIMARY:
            return  # given up or closed: closing it ended its iterator
        silent = self._state is InputState.PRIMARY and bool(self._chunks)
        if not self._ended or silent:
            what = "without speaking its text" if self._ended else "before the text did"
            exc = ProviderError(self._name, f"audio ended {what}", retryable=True)
            if self._state is InputState.PRIMARY:
                self._give_up_primary(exc)
            else:
                self._fail(exc)
            return
        if self._attempt is not None:
            self._attempt.succeed()
        self._move(InputState.DONE)

    async def _next_text(self) -> str | None:
        """The next chunk to synthesize; None when the state changed (ended, closed)."""
        while self._state is InputState.CHUNKED:
            if self._chunks:
                return self._chunks.popleft()
            if self._ended:
                self._move(InputState.DONE)
                return None
            self._changed.clear()
            await self._changed.wait()
        return None

    async def _speak(self, text: str) -> list[SpeechChunk]:
        """Synthesize one chunk in a task ``aclose()`` can cancel at once."""
        task = asyncio.get_running_loop().create_task(
            self._collect(text), name="tts-fallback-chunk"
        )
        self._synth = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if (
                self._state is InputState.CLOSED
                and current is not None
                and not current.cancelling()
            ):
                return []  # aclose() cancelled the synthesis, not our consumer
            raise
        except ProviderError as exc:
            if self._state is InputState.CLOSED:
                return []
            raise self._fail(exc) from None
        finally:
            self._synth = None
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved here or raised above

    async def _collect(self, text: str) -> list[SpeechChunk]:
        pieces: list[SpeechChunk] = []
        async with contextlib.aclosing(self._speak_chunk(text)) as speech:
            async for piece in speech:
                pieces.append(piece)
        return _join(pieces, text)

    # ------------------------------------------------------------- transitions

    def _give_up_primary(self, exc: BaseException) -> None:
        """PRIMARY -> CHUNKED: the primary failed before the caller heard anything."""
        if self._attempt is not None:
            self._attempt.fail(exc, then="speaking sentence by sentence with the fallback")
        self._engine.stats.reroutes[(self._engine.service, self._name)] += 1
        self._deadline = None
        self._move(InputState.CHUNKED)

    def _fail(self, exc: BaseException) -> ProviderError:
        """SPEAKING/CHUNKED -> FAILED: the utterance ends, nothing is repeated."""
        if self._state is InputState.SPEAKING and self._attempt is not None:
            self._attempt.fail(exc, then="utterance cut short after audio, not repeated")
        if isinstance(exc, ProviderError):
            self._failure = exc
        else:
            self._failure = ProviderError(self._name, f"stream failed: {type(exc).__name__}")
        self._move(InputState.FAILED)
        return self._failure

    def _arm(self, limit_s: float) -> None:
        """Start the current time limit, unless it already runs."""
        if self._deadline is not None:
            return
        self._deadline = asyncio.get_running_loop().time() + limit_s
        if self._timer is not None:
            self._timer.reschedule(self._deadline)

    def _move(self, state: InputState) -> None:
        if state not in TRANSITIONS[self._state]:
            raise RuntimeError(f"input stream: invalid transition {self._state} -> {state}")
        self._state = state
        self._changed.set()

    async def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is None:
            return
        try:
            await inner.aclose()
        except Exception as exc:
            log.debug(
                "tts: closing the input stream of %s failed (%s)", self._name, type(exc).__name__
            )

    async def aclose(self) -> None:
        """Abandon the utterance now: pending audio is dropped and the iterator ends."""
        if self._state is InputState.CLOSED:
            return
        if self._attempt is not None:
            self._attempt.settle(served=self._state is not InputState.PRIMARY)
        self._move(InputState.CLOSED)
        if self._synth is not None:
            self._synth.cancel()
        await self._close_inner()


_ON_PRIMARY = frozenset({InputState.PRIMARY, InputState.SPEAKING})


def _join(pieces: list[SpeechChunk], text: str) -> list[SpeechChunk]:
    """One chunk per run of same-format pieces; the text rides on the first."""
    out: list[SpeechChunk] = []
    for (rate, voice, provider), run in itertools.groupby(
        pieces, key=lambda c: (c.sample_rate, c.voice, c.provider)
    ):
        pcm = np.concatenate([c.pcm for c in run])
        out.append(SpeechChunk(pcm, rate, voice, provider, text="" if out else text))
    return out
