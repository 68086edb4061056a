"""Fake providers for fast, deterministic tests without real models.

Each fake implements its provider protocol (``agent.llm.LLM``,
``agent.stt.STT``, ``agent.tts.TTS``, ``agent.vad.VAD``), records what it was
asked, and lets a test script its answers, slow it down, hold it on an
``asyncio.Event`` gate and inject failures, so failure paths and barge-in
races can be tested in milliseconds. Real-model tests stay for the real path.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agent.chunker import ChunkerSettings
from agent.errors import ProviderError
from agent.llm import ChatMessage, GenerationSettings, LLMDelta, TextDelta, ToolSpec
from agent.reply import Reply as SpokenReply
from agent.reply import ReplyPlan
from agent.runtime import AgentModels
from agent.session import VoiceSession
from agent.speech import SpeechHandle
from agent.stt import Transcript
from agent.tts import TTS, SpeechChunk
from agent.turnclock import TurnClock
from agent.vad import WINDOW_SAMPLES
from media.errors import AudioFormatError
from media.frames import PCM, PIPELINE_RATE, AudioFrame, FloatPCM
from media.playout import PlayoutBuffer

# ---------------------------------------------------------------- audio helpers


def tone(
    seconds: float, rate: int = PIPELINE_RATE, frequency: float = 200.0, amplitude: float = 0.3
) -> PCM:
    """A sine tone as mono int16 PCM (a stand-in for a burst of speech)."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def silence(seconds: float, rate: int = PIPELINE_RATE) -> PCM:
    """Digital silence as mono int16 PCM."""
    return np.zeros(round(seconds * rate), np.int16)


def _injected(provider: str) -> ProviderError:
    return ProviderError(provider, "injected failure", retryable=True)


FRAME = 320
"""20 ms at 16 kHz."""


async def feed(
    session: VoiceSession, pcm: PCM, *, transcripts: bool = True, reply: bool = True
) -> PCM:
    """Drive a session in lock-step: one 20 ms frame in, the pipeline settles, one out.

    Returns the agent's audio pulled meanwhile. ``transcripts=False`` does not
    wait for STT (a test holding the STT gate); ``reply=False`` does not wait
    for an active reply to have audio (a test holding the LLM gate).
    """
    out: list[PCM] = []
    for i in range(0, pcm.size, FRAME):
        session.push_audio(AudioFrame(pcm[i : i + FRAME], PIPELINE_RATE))
        await session.wait_settled(transcripts=transcripts, reply=reply)
        out.append(session.playout.pull()[0])
    return np.concatenate(out) if out else np.zeros(0, np.int16)


# ------------------------------------------------------------------------ LLM

Reply = str | Sequence[LLMDelta | str]
"""A scripted reply: a string (split into word tokens) or a list of deltas/strings."""

_TOKEN = re.compile(r"\s*\S+")


def tokens(text: str) -> list[str]:
    """``text`` split into word-sized tokens that join back to it (leading spaces kept)."""
    pieces = _TOKEN.findall(text)
    tail = text[sum(map(len, pieces)) :]
    if tail and pieces:
        pieces[-1] += tail
    return pieces


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """What one ``ScriptedLLM.stream`` call was asked."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...]
    settings: GenerationSettings


class ScriptedLLM:
    """An ``LLM`` that streams scripted replies, one per request, in order.

    After the script runs out the last reply repeats. ``gate`` is set by
    default; clear it to hold every stream before its next token.
    ``first_token_delay`` sleeps before each reply's first token (a model's
    time to first token), ``token_delay`` before every token. Failures:
    ``fail_at_token`` raises ``error`` before that token of every reply;
    ``fail_next()`` does it for the next request only.
    """

    supports_tools = True

    def __init__(
        self,
        replies: Sequence[Reply] = ("Okay.",),
        *,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        fail_at_token: int | None = None,
        error: Exception | None = None,
        model: str = "scripted-llm",
    ) -> None:
        if not replies:
            raise ValueError("a ScriptedLLM needs at least one reply")
        self.model = model
        self.replies = list(replies)
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self.fail_at_token = fail_at_token
        self.error = error
        self.gate = asyncio.Event()
        self.gate.set()
        self.requests: list[LLMRequest] = []
        self.tokens_sent = 0
        self.completed = 0
        """Streams that yielded their whole reply."""
        self.cancelled = 0
        """Streams cancelled or closed by their consumer before the end."""
        self.failed = 0
        """Streams that raised an (injected) error."""
        self.active = 0
        """Streams open now."""
        self.closed = False
        self._one_shot: tuple[int, Exception | None] | None = None

    def fail_next(self, at_token: int = 0, error: Exception | None = None) -> None:
        """Make the next request raise ``error`` (default: a retryable ``ProviderError``)."""
        self._one_shot = (at_token, error)

    def _script(self, index: int) -> list[LLMDelta]:
        reply = self.replies[min(index, len(self.replies) - 1)]
        items: Sequence[LLMDelta | str] = [reply] if isinstance(reply, str) else reply
        out: list[LLMDelta] = []
        for item in items:
            if isinstance(item, str):
                out += [TextDelta(t) for t in tokens(item)]
            else:
                out.append(item)
        return out

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncGenerator[LLMDelta, None]:
        """Yield the next scripted reply, token by token."""
        if self.closed:
            raise ProviderError(self.model, "closed")
        index = len(self.requests)
        self.requests.append(LLMRequest(tuple(messages), tuple(tools), settings))
        fail_at, error = self.fail_at_token, self.error
        if self._one_shot is not None:
            (fail_at, error), self._one_shot = self._one_shot, None
        self.active += 1
        finished = False
        try:
            for i, delta in enumerate(self._script(index)):
                if fail_at is not None and i >= fail_at:
                    break
                await self.gate.wait()
                if i == 0 and self.first_token_delay:
                    await asyncio.sleep(self.first_token_delay)
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                self.tokens_sent += 1
                yield delta
            if fail_at is not None:
                self.failed += 1
                finished = True
                raise error or _injected(self.model)
            finished = True
            self.completed += 1
        finally:
            self.active -= 1
            if not finished:
                self.cancelled += 1

    async def aclose(self) -> None:
        """Refuse further requests; idempotent."""
        self.closed = True

    def close(self) -> None:
        """Synchronous ``aclose()``."""
        self.closed = True


# ------------------------------------------------------------------------ STT


@dataclass(frozen=True, slots=True)
class STTCall:
    """One ``FakeSTT.transcribe`` call."""

    partial: bool
    audio_s: float


class FakeSTT:
    """An ``STT`` answering from a script or a function of the audio.

    With a list, each final transcription takes the next text (the last one
    repeats); a partial returns the text the next final will return. With a
    function, ``fn(audio, partial)`` gives the text. ``gate`` (set by
    default) holds every call; ``fail_next()`` makes the next call raise.
    """

    sample_rate: int = PIPELINE_RATE

    def __init__(
        self,
        transcripts: Sequence[str] | Callable[[FloatPCM, bool], str] = ("hello",),
        *,
        delay: float = 0.0,
        partial_delay: float | None = None,
        confidence: float = 0.9,
        error: Exception | None = None,
    ) -> None:
        self.transcripts = transcripts
        self.delay = delay
        self.partial_delay = delay if partial_delay is None else partial_delay
        self.confidence = confidence
        self.error = error
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[STTCall] = []
        self.cancelled = 0
        self.closed = False
        self._finals = 0
        self._fail_next: Exception | None = None

    @property
    def partial_calls(self) -> int:
        """How many partial transcriptions were asked for."""
        return sum(c.partial for c in self.calls)

    @property
    def final_calls(self) -> int:
        """How many final transcriptions were asked for."""
        return sum(not c.partial for c in self.calls)

    def fail_next(self, error: Exception | None = None) -> None:
        """Make the next call raise ``error`` (default: a retryable ``ProviderError``)."""
        self._fail_next = error or _injected("fake-stt")

    def _text(self, audio: FloatPCM, partial: bool) -> str:
        if callable(self.transcripts):
            return self.transcripts(audio, partial)
        if not self.transcripts:
            return ""
        text = self.transcripts[min(self._finals, len(self.transcripts) - 1)]
        if not partial:
            self._finals += 1
        return text

    async def transcribe(self, audio: FloatPCM, *, partial: bool = False) -> Transcript:
        """Return the scripted transcript after the configured delay."""
        if self.closed:
            raise ProviderError("fake-stt", "closed")
        if audio.dtype != np.float32 or audio.ndim != 1:
            raise AudioFormatError("FakeSTT expects flat float32 audio")
        self.calls.append(STTCall(partial, audio.size / self.sample_rate))
        failure, self._fail_next = self._fail_next, None
        try:
            await self.gate.wait()
            delay = self.partial_delay if partial else self.delay
            if delay:
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if failure is not None:
            raise failure
        if self.error is not None:
            raise self.error
        text = self._text(audio, partial)
        return Transcript(
            text, self.confidence if text else 0.0, audio.size / self.sample_rate, delay
        )

    async def aclose(self) -> None:
        """Refuse further calls; idempotent."""
        self.closed = True

    def close(self) -> None:
        """Synchronous ``aclose()``."""
        self.closed = True


# ------------------------------------------------------------------------ TTS


class FakeTTS:
    """A ``TTS`` speaking a tone whose length is proportional to the text.

    ``seconds_per_char`` of audio per character, split into ``chunks`` equal
    ``SpeechChunk``s at ``sample_rate``, spoken by ``voice``. ``gate`` (set by
    default) holds every chunk; ``chunk_delay`` sleeps before each;
    ``fail_at_chunk`` raises ``error`` before that chunk of every text and
    ``fail_next()`` does it for the next text only.
    """

    def __init__(
        self,
        sample_rate: int = 22050,
        voice: str = "fake-voice",
        *,
        seconds_per_char: float = 0.05,
        chunks: int = 1,
        chunk_delay: float = 0.0,
        frequency: float = 440.0,
        fail_at_chunk: int | None = None,
        error: Exception | None = None,
    ) -> None:
        if chunks < 1:
            raise ValueError("chunks must be >= 1")
        self.sample_rate = sample_rate
        self.voice = voice
        self.seconds_per_char = seconds_per_char
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.frequency = frequency
        self.fail_at_chunk = fail_at_chunk
        self.error = error
        self.gate = asyncio.Event()
        self.gate.set()
        self.texts: list[str] = []
        self.chunks_sent = 0
        self.cancelled = 0
        self.closed = False
        self._one_shot: tuple[int, Exception | None] | None = None

    def fail_next(self, at_chunk: int = 0, error: Exception | None = None) -> None:
        """Make the next text raise ``error`` before chunk ``at_chunk``."""
        self._one_shot = (at_chunk, error)

    def audio_for(self, text: str) -> PCM:
        """The whole audio this TTS speaks for ``text``."""
        return tone(len(text) * self.seconds_per_char, self.sample_rate, self.frequency)

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        """Yield the tone of ``text`` in ``chunks`` pieces."""
        if self.closed:
            raise ProviderError(self.voice, "closed")
        self.texts.append(text)
        fail_at, error = self.fail_at_chunk, self.error
        if self._one_shot is not None:
            (fail_at, error), self._one_shot = self._one_shot, None
        pcm = self.audio_for(text)
        if not pcm.size:
            return
        parts = [p for p in np.array_split(pcm, min(self.chunks, pcm.size)) if p.size]
        finished = False
        try:
            for i, part in enumerate(parts):
                if fail_at is not None and i >= fail_at:
                    finished = True
                    raise error or _injected(self.voice)
                await self.gate.wait()
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                self.chunks_sent += 1
                yield SpeechChunk(part.copy(), self.sample_rate, self.voice)
            finished = True
        finally:
            if not finished:
                self.cancelled += 1

    async def aclose(self) -> None:
        """Refuse further requests; idempotent."""
        self.closed = True

    def close(self) -> None:
        """Synchronous ``aclose()``."""
        self.closed = True


# ------------------------------------------------------------------------ VAD


class EnergyVADStream:
    """Per-call state of ``EnergyVAD``: carries the samples of an unfinished window."""

    def __init__(self, vad: EnergyVAD) -> None:
        self._vad = vad
        self._pending = np.zeros(0, np.float32)

    def process(self, audio: FloatPCM) -> list[float]:
        """One probability per completed 512-sample window."""
        if audio.dtype != np.float32 or audio.ndim != 1:
            raise AudioFormatError("VAD expects flat float32 audio at 16 kHz")
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        n = buf.size // WINDOW_SAMPLES
        self._pending = buf[n * WINDOW_SAMPLES :].copy()
        windows = buf[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES).astype(np.float64)
        rms = np.sqrt(np.mean(np.square(windows), axis=1)) if n else np.zeros(0)
        v = self._vad
        return [v.speech_prob if r > v.threshold_rms else v.silence_prob for r in rms]

    def reset(self) -> None:
        """Drop the unfinished window."""
        self._pending = np.zeros(0, np.float32)


class EnergyVAD:
    """A ``VAD`` that calls a window speech when its RMS level exceeds a threshold.

    Probability ``speech_prob`` (0.95) for loud windows and ``silence_prob``
    (0.02) otherwise, so a 200 Hz ``tone()`` reads as speech and ``silence()``
    as silence, deterministically.
    """

    def __init__(
        self, threshold_dbfs: float = -40.0, speech_prob: float = 0.95, silence_prob: float = 0.02
    ) -> None:
        self.threshold_rms = 10 ** (threshold_dbfs / 20)
        self.speech_prob = speech_prob
        self.silence_prob = silence_prob

    def stream(self) -> EnergyVADStream:
        """A fresh stream for one call."""
        return EnergyVADStream(self)


# --------------------------------------------------------------------- models


def fake_models(
    *,
    llm: ScriptedLLM | None = None,
    stt: FakeSTT | None = None,
    tts: FakeTTS | None = None,
    vad: EnergyVAD | None = None,
) -> AgentModels:
    """``AgentModels`` built from fakes (defaults for the ones not given)."""
    return AgentModels(
        vad=vad or EnergyVAD(),
        stt=stt or FakeSTT(),
        llm=llm or ScriptedLLM(),
        tts=tts or FakeTTS(),
    )


def canned_reply(
    playout: PlayoutBuffer, tts: TTS, text: str, turn_id: str, *, held: bool = False
) -> SpokenReply:
    """A ``Reply`` that speaks ``text`` with ``tts`` into ``playout`` (no LLM, no events);
    the caller runs it (``reply.run()``) as its handle's task."""
    return SpokenReply(
        SpeechHandle(turn_id=turn_id, playout=playout),
        ReplyPlan(canned=text),
        TurnClock.now(),
        llm=ScriptedLLM(),
        tts=tts,
        playout=playout,
        generation=GenerationSettings(),
        chunker=ChunkerSettings(),
        emit=lambda event: None,
        on_speaking=lambda handle: None,
        held=held,
    )
