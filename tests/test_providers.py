"""Providers: the priority executor, the llama/whisper/piper adapters and the test fakes.

The executor is tested with plain blocking functions held on
``threading.Event``s, so every assertion is about ordering and structure,
never elapsed time. The llama tests run the real SmolLM2 model behind a gate
that holds the generation between tokens, which makes "a long generation is
running" a fact rather than a race.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from collections.abc import AsyncGenerator, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest

from agent.errors import InputTooLongError, ProviderError
from agent.llm import (
    LLM,
    ChatMessage,
    GenerationSettings,
    LLMDelta,
    TextDelta,
    ToolCall,
    ToolCallAssembler,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from agent.providers.executor import ExecutorClosedError, InferenceExecutor
from agent.providers.llama import LlamaLLM, LlamaSettings, render_messages
from agent.providers.piper import PiperTTS
from agent.providers.whisper import WhisperSTT
from agent.stt import STT, Transcript
from agent.tts import TTS, SpeechChunk
from agent.vad import VAD, WINDOW_SAMPLES, SpeechProbabilityStream
from media.frames import FloatPCM, int16_to_float
from tests.fakes import (
    EnergyVAD,
    FakeSTT,
    FakeTTS,
    ScriptedLLM,
    fake_models,
    silence,
    tokens,
    tone,
)

T = TypeVar("T")

SAFETY_S = 60.0
"""Upper bound on waits that must succeed long before it; only turns a hang into a failure."""


async def wait_set(event: threading.Event) -> None:
    """Wait for a thread-side event without blocking the loop."""
    assert await asyncio.to_thread(event.wait, SAFETY_S), "event never set"


# ------------------------------------------------------------------ executor


@pytest.fixture
def executor() -> Iterator[InferenceExecutor]:
    ex = InferenceExecutor("test-exec", workers=1)
    yield ex
    ex.shutdown(wait=True)


def blocker(started: threading.Event, release: threading.Event, order: list[str], name: str) -> str:
    started.set()
    release.wait(SAFETY_S)
    order.append(name)
    return name


async def test_executor_runs_lower_priority_first_fifo_within(
    executor: InferenceExecutor,
) -> None:
    order: list[str] = []
    started, release = threading.Event(), threading.Event()
    first = executor.submit(blocker, started, release, order, "running")
    await wait_set(started)
    jobs = [
        executor.submit(order.append, "partial-1", priority=10),
        executor.submit(order.append, "partial-2", priority=10),
        executor.submit(order.append, "final-1", priority=0),
        executor.submit(order.append, "partial-3", priority=10),
        executor.submit(order.append, "final-2", priority=0),
    ]
    assert executor.queued == 5
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *jobs), SAFETY_S)
    assert order == ["running", "final-1", "final-2", "partial-1", "partial-2", "partial-3"]


async def test_executor_cancelled_queued_job_leaves_at_once_and_never_runs(
    executor: InferenceExecutor,
) -> None:
    order: list[str] = []
    started, release = threading.Event(), threading.Event()
    first = executor.submit(blocker, started, release, order, "running")
    await wait_set(started)
    waiter = asyncio.create_task(executor.run(order.append, "cancelled"))
    await asyncio.sleep(0)  # the task submits its job
    assert executor.queued == 1
    waiter.cancel()
    assert executor.queued == 0  # dequeued by cancel() itself, not later
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The cancel completed while the running job is still held.
    assert executor.running == 1 and not first.done()
    release.set()
    await executor.run(order.append, "next")
    assert await first == "running"
    assert order == ["running", "next"]


async def test_executor_shutdown_does_not_wait_for_the_running_job(
    executor: InferenceExecutor,
) -> None:
    order: list[str] = []
    started, release = threading.Event(), threading.Event()
    first = executor.submit(blocker, started, release, order, "running")
    await wait_set(started)
    queued = executor.submit(order.append, "queued")
    finalizer_thread: list[str] = []

    def finalize() -> None:
        order.append("finalizer")
        finalizer_thread.append(threading.current_thread().name)

    executor.shutdown(finalizer=finalize)
    assert executor.running == 1  # shutdown returned while the job still runs
    with pytest.raises(ExecutorClosedError):
        await queued
    with pytest.raises(ExecutorClosedError):
        await executor.run(order.append, "late")
    release.set()
    assert await first == "running"
    assert await asyncio.to_thread(executor.join, SAFETY_S)
    assert order == ["running", "finalizer"]
    assert finalizer_thread == ["test-exec-0"]


async def test_executor_propagates_context_and_errors(executor: InferenceExecutor) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    assert await executor.run(var.get) == "caller"

    def boom() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await executor.run(boom)
    assert await executor.run(threading.current_thread) is not threading.current_thread()


# --------------------------------------------------------------------- llama


class GatedLlama:
    """Wraps a real ``llama_cpp.Llama``; after the first text token, tokens wait for ``release``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.calls = 0
        self.finished = threading.Event()
        self.events: list[str] = []

    def create_chat_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls += 1
        return self._gated(self.inner.create_chat_completion(**kwargs))

    def _gated(self, chunks: Any) -> Iterator[dict[str, Any]]:
        texts = 0
        try:
            for chunk in chunks:
                if chunk["choices"][0].get("delta", {}).get("content"):
                    if texts:
                        self.release.wait(SAFETY_S)
                    texts += 1
                yield chunk
        finally:
            chunks.close()
            self.events.append("generation ended")
            self.finished.set()

    def tokenize(self, text: bytes, add_bos: bool = True) -> list[int]:
        """The real tokenizer (the adapter counts prompts to fit its context)."""
        tokens: list[int] = self.inner.tokenize(text, add_bos=add_bos)
        return tokens

    def close(self) -> None:
        self.events.append("model freed")
        self.inner.close()


STORY = [ChatMessage("user", "Tell me a long story about a brave dragon and a knight.")]
LONG = GenerationSettings(max_tokens=48, temperature=0.0, seed=1)


def _llama() -> LlamaLLM:
    return LlamaLLM(LlamaSettings())


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaLLM]:
    llm = _llama()
    yield llm
    llm.close()


async def drain(stream: AsyncGenerator[T, None], into: list[T]) -> None:
    """Append every item of ``stream`` to ``into`` (which keeps them if it raises)."""
    async for item in stream:
        into.append(item)


async def collect(stream: AsyncGenerator[LLMDelta, None]) -> str:
    return "".join([d.text async for d in stream if isinstance(d, TextDelta)])


@pytest.mark.slow
async def test_llama_cancelled_queued_request_leaves_while_another_generates(
    llama: LlamaLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(llama, LLM)
    gated = GatedLlama(llama._llama)
    monkeypatch.setattr(llama, "_llama", gated)
    first = llama.stream(STORY, LONG)
    head = await asyncio.wait_for(anext(first), SAFETY_S)
    assert isinstance(head, TextDelta) and head.text
    # The first generation is now running, held before its second token.
    second = asyncio.create_task(collect(llama.stream(STORY, LONG)))
    await asyncio.sleep(0)
    assert llama._executor.queued == 1
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(second, SAFETY_S)
    assert gated.calls == 1, "the cancelled request must never reach the model"
    assert not gated.finished.is_set(), "the cancel must not wait for the running generation"
    assert llama._executor.queued == 0
    gated.release.set()
    rest = await asyncio.wait_for(collect(first), SAFETY_S)
    assert (head.text + rest).strip()
    # The worker is free for the next request, and the cancelled one never ran.
    assert (await asyncio.wait_for(collect(llama.stream(STORY, LONG)), SAFETY_S)).strip()
    assert gated.calls == 2


@pytest.mark.slow
async def test_llama_consumer_cancel_does_not_wait_for_the_generation(
    llama: LlamaLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = GatedLlama(llama._llama)
    monkeypatch.setattr(llama, "_llama", gated)

    got_token = asyncio.Event()

    async def consume_one() -> None:
        async for _ in llama.stream(STORY, LONG):
            got_token.set()
            await asyncio.Event().wait()  # a consumer that is busy when cancelled

    task = asyncio.create_task(consume_one())
    await asyncio.wait_for(got_token.wait(), SAFETY_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, SAFETY_S)
    assert not gated.finished.is_set()  # cancelled while the worker was still held
    gated.release.set()
    # The stop flag ends the held generation early; the model serves the next one.
    await wait_set(gated.finished)
    assert (await asyncio.wait_for(collect(llama.stream(STORY, LONG)), SAFETY_S)).strip()


@pytest.mark.slow
async def test_llama_aclose_during_a_generation_returns_without_waiting() -> None:
    llm = _llama()
    gated = GatedLlama(llm._llama)
    setattr(llm, "_llama", gated)  # noqa: B010 - a test seam around the real model
    first = llm.stream(STORY, LONG)
    await asyncio.wait_for(anext(first), SAFETY_S)
    queued = asyncio.create_task(collect(llm.stream(STORY, LONG)))
    await asyncio.sleep(0)
    await llm.aclose()
    assert not gated.finished.is_set(), "aclose() must not wait for the generation"
    with pytest.raises(ProviderError):
        await asyncio.wait_for(queued, SAFETY_S)
    with pytest.raises(ProviderError):
        await collect(llm.stream(STORY, LONG))
    gated.release.set()
    with pytest.raises(ExecutorClosedError):  # cut short by close(): not a whole reply
        await asyncio.wait_for(collect(first), SAFETY_S)
    assert await asyncio.to_thread(llm._executor.join, SAFETY_S)
    assert gated.events == ["generation ended", "model freed"]
    assert gated.calls == 1


def test_render_messages_turns_tool_traffic_into_template_text() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    rendered = render_messages(
        [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Weather in Paris?"),
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "sunny, 21 C", tool_call_id="call_1"),
            ChatMessage("user", "And tomorrow?"),
        ]
    )
    assert rendered == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": 'Calling get_weather({"city": "Paris"}).'},
        {"role": "user", "content": "Result of get_weather: sunny, 21 C\nAnd tomorrow?"},
    ]


@pytest.mark.slow
async def test_llama_answers_a_history_with_tool_calls(llama: LlamaLLM) -> None:
    call = ToolCall("call_1", "get_time", "{}")
    history = [
        ChatMessage("system", "You are a helpful assistant."),
        ChatMessage("user", "What time is it?"),
        ChatMessage("assistant", "Let me check.", tool_calls=(call,)),
        ChatMessage("tool", "10:30", tool_call_id="call_1", name="get_time"),
    ]
    spec = ToolSpec("get_time", "The current time.")
    assert llama.supports_tools is True
    deltas = [
        d
        async for d in llama.stream(
            history, GenerationSettings(max_tokens=24, temperature=0.0), [spec]
        )
    ]
    # words or a call of the offered tool (a grammar constrains it), then one usage report
    *answer, usage = deltas
    assert answer
    calls = [d for d in answer if isinstance(d, ToolCallDelta)]
    if calls:
        assert len(answer) == 1 and calls[0].name == "get_time"
        assert json.loads(calls[0].arguments) == {}
    else:
        assert all(isinstance(d, TextDelta) for d in answer)
    assert isinstance(usage, UsageDelta) and usage.provider == "local"
    assert usage.model == llama.model and usage.completion_tokens >= len(answer)
    assert llama.model.startswith("SmolLM2")


# ------------------------------------------------------------------- whisper


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperSTT]:
    stt = WhisperSTT()
    yield stt
    stt.close()


@pytest.mark.slow
async def test_whisper_final_overtakes_queued_partials(
    whisper: WhisperSTT, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(whisper, STT)
    order: list[str] = []
    started, release = threading.Event(), threading.Event()

    def recorded(audio: FloatPCM, *, partial: bool = False) -> Transcript:
        label = f"{'partial' if partial else 'final'}-{audio.size // 1600}"
        if not order:
            started.set()
            release.wait(SAFETY_S)
        order.append(label)
        return Transcript(label, 1.0, audio.size / 16000, 0.0)

    monkeypatch.setattr(whisper, "transcribe_blocking", recorded)

    def clip(tenths: int) -> FloatPCM:
        return int16_to_float(tone(tenths / 10))

    running = asyncio.create_task(whisper.transcribe(clip(3), partial=True))
    await wait_set(started)
    partials = [asyncio.create_task(whisper.transcribe(clip(n), partial=True)) for n in (4, 5, 6)]
    await asyncio.sleep(0)
    final = asyncio.create_task(whisper.transcribe(clip(7)))
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(running, *partials, final), SAFETY_S)
    assert [r.text for r in results][-1] == "final-7"
    assert order == ["partial-3", "final-7", "partial-4", "partial-5", "partial-6"]


# --------------------------------------------------------------------- piper


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperTTS]:
    tts = PiperTTS()
    yield tts
    tts.close()


@pytest.mark.slow
async def test_piper_streams_speech_chunks_phonemized_off_the_loop(
    piper: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(piper, TTS)
    threads: list[str] = []
    real = piper._voice.phonemize

    def phonemize(text: str) -> Any:
        threads.append(threading.current_thread().name)
        return real(text)

    monkeypatch.setattr(piper._voice, "phonemize", phonemize)
    chunks = [c async for c in piper.stream("Hello there. How are you today?")]
    assert len(chunks) == 2
    for chunk in chunks:
        assert isinstance(chunk, SpeechChunk)
        assert (chunk.sample_rate, chunk.voice) == (piper.sample_rate, piper.voice)
        assert chunk.duration > 0.2
    assert threads and threading.current_thread().name not in threads


@pytest.mark.slow
async def test_piper_phonemizer_failure_is_a_provider_error(
    piper: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str) -> Any:
        raise RuntimeError("espeak exploded")

    monkeypatch.setattr(piper._voice, "phonemize", broken)
    with pytest.raises(ProviderError, match="phonemization failed"):
        _ = [c async for c in piper.stream("Hello.")]


# --------------------------------------------------------------------- fakes


def test_tokens_join_back_to_the_text() -> None:
    text = "Hello there,  how are you? "
    assert "".join(tokens(text)) == text
    assert tokens("Hi you") == ["Hi", " you"]


async def test_scripted_llm_streams_records_and_fails_on_cue() -> None:
    call = ToolCallDelta(0, id="c1", name="get_time", arguments="{}")
    llm = ScriptedLLM(["Hello there friend.", ["Checking.", call]])
    assert isinstance(llm, LLM)
    spec = ToolSpec("get_time", "The time.")
    msgs = [ChatMessage("user", "hi")]
    assert await collect(llm.stream(msgs, GenerationSettings())) == "Hello there friend."
    deltas = [d async for d in llm.stream(msgs, GenerationSettings(), [spec])]
    assembler = ToolCallAssembler()
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            assembler.feed(d)
    assert assembler.calls() == [ToolCall("c1", "get_time", "{}")]
    assert [r.tools for r in llm.requests] == [(), (spec,)]
    assert llm.requests[0].messages == tuple(msgs)

    llm.fail_next(at_token=2)
    got: list[LLMDelta] = []
    with pytest.raises(ProviderError, match="injected"):
        await drain(llm.stream(msgs, GenerationSettings()), got)
    assert len(got) == 2  # the script repeats its last reply; it failed before token 2
    assert (llm.completed, llm.failed, llm.cancelled) == (2, 1, 0)


async def test_scripted_llm_gate_holds_and_counts_cancellation() -> None:
    llm = ScriptedLLM(["one two three"])
    llm.gate.clear()
    received: list[str] = []

    async def consume() -> None:
        async for d in llm.stream([], GenerationSettings()):
            assert isinstance(d, TextDelta)
            received.append(d.text)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    assert llm.active == 1 and received == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (llm.cancelled, llm.active, llm.tokens_sent) == (1, 0, 0)
    stream = llm.stream([], GenerationSettings())
    llm.gate.set()
    assert await anext(stream) == TextDelta("one")
    await stream.aclose()
    assert llm.cancelled == 2
    await llm.aclose()
    with pytest.raises(ProviderError):
        await anext(llm.stream([], GenerationSettings()))


async def test_fake_stt_script_partials_and_failures() -> None:
    stt = FakeSTT(["first turn", "second turn"])
    assert isinstance(stt, STT)
    audio = int16_to_float(tone(0.5))
    assert (await stt.transcribe(audio, partial=True)).text == "first turn"
    assert (await stt.transcribe(audio)).text == "first turn"
    assert (await stt.transcribe(audio, partial=True)).text == "second turn"
    stt.fail_next()
    with pytest.raises(ProviderError):
        await stt.transcribe(audio)
    assert (await stt.transcribe(audio)).text == "second turn"
    assert (stt.partial_calls, stt.final_calls) == (2, 3)
    assert stt.calls[0].audio_s == pytest.approx(0.5)

    by_length = FakeSTT(lambda a, partial: f"{a.size} samples{' ...' if partial else ''}")
    assert (await by_length.transcribe(audio, partial=True)).text == "8000 samples ..."


async def test_fake_tts_audio_is_proportional_and_chunked() -> None:
    tts = FakeTTS(sample_rate=24000, voice="cloud", seconds_per_char=0.01, chunks=3)
    assert isinstance(tts, TTS)
    chunks = [c async for c in tts.stream("x" * 100)]
    assert len(chunks) == 3
    assert {(c.sample_rate, c.voice) for c in chunks} == {(24000, "cloud")}
    assert sum(c.pcm.size for c in chunks) == 24000  # 100 chars x 10 ms
    assert np.array_equal(np.concatenate([c.pcm for c in chunks]), tts.audio_for("x" * 100))

    tts.fail_next(at_chunk=1)
    got: list[SpeechChunk] = []
    with pytest.raises(ProviderError):
        await drain(tts.stream("hello"), got)
    assert len(got) == 1
    assert tts.texts == ["x" * 100, "hello"]


def test_energy_vad_reads_tone_as_speech_and_silence_as_silence() -> None:
    vad = EnergyVAD()
    assert isinstance(vad, VAD)
    stream = vad.stream()
    assert isinstance(stream, SpeechProbabilityStream)
    audio = int16_to_float(np.concatenate([silence(0.512), tone(0.512), silence(0.512)]))
    whole = stream.process(audio)
    assert len(whole) == audio.size // WINDOW_SAMPLES == 48
    assert whole[:16] == [0.02] * 16 and whole[16:32] == [0.95] * 16 and whole[32:] == [0.02] * 16
    pieces: list[float] = []
    chunked = vad.stream()
    for i in range(0, audio.size, 320):  # 20 ms frames
        pieces += chunked.process(audio[i : i + 320])
    assert pieces == whole


async def test_fake_models_close_every_provider() -> None:
    models = fake_models(llm=ScriptedLLM(["hi"]))
    assert isinstance(models.llm, ScriptedLLM)
    await models.aclose()
    for provider in (models.llm, models.stt, models.tts):
        assert getattr(provider, "closed", False)
    assert models.vad_executor.closed


async def test_llama_drops_the_oldest_turns_to_fit_its_context(llama: LlamaLLM) -> None:
    """A history longer than the context is answered from its latest turns; a message that
    alone does not fit is refused with a typed error, never a generic provider failure."""
    long_turn = "tell me about the weather in the mountains and the sea " * 40  # ~480 tokens
    history = [ChatMessage("system", "You are brief.")]
    for n in range(8):  # ~8 x 2 x 480 tokens: four times the 2,048 of the context
        history += [ChatMessage("user", f"{n} {long_turn}"), ChatMessage("assistant", long_turn)]
    history.append(ChatMessage("user", "Say hello."))
    settings = GenerationSettings(max_tokens=8, temperature=0.0)
    deltas = [d async for d in llama.stream(history, settings)]
    assert any(isinstance(d, TextDelta) and d.text.strip() for d in deltas)

    too_long = [ChatMessage("system", "You are brief."), ChatMessage("user", long_turn * 6)]
    with pytest.raises(InputTooLongError) as refused:
        await drain(llama.stream(too_long, settings), [])
    assert refused.value.retryable is False and "context" in str(refused.value)
