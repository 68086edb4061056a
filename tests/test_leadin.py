"""A reply's quiet lead-in (``media.leadin``): trimmed on real Piper audio, only at the start."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncGenerator, Iterator

import numpy as np
import pytest

from agent.providers.piper import PiperTTS
from agent.tts import SpeechChunk
from media.frames import PCM, float_to_int16, rms_dbfs
from media.leadin import LeadInSettings, LeadInTrimmer, fade_in
from media.playout import PlayoutBuffer, SegmentPlayback
from tests.fakes import canned_reply

TEXTS = (
    "Paris is the capital of France.",
    "A spider has eight legs.",
    "Water boils at one hundred degrees.",
    "Hello! How can I help you today?",
    "Let me check that for you.",
)
LEVEL = int(32768 * 10 ** (LeadInSettings().threshold_dbfs / 20))
"""The largest sample magnitude the trimmer may drop."""


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperTTS]:
    voice = PiperTTS()
    yield voice
    voice.close()


async def first_chunk(voice: PiperTTS, text: str) -> PCM:
    chunks = [chunk async for chunk in voice.stream(text)]
    return chunks[0].pcm


def first_loud_frame(pcm: PCM, rate: int, dbfs: float = -45.0) -> int:
    """Index of the first 20 ms frame louder than ``dbfs`` (the wire benchmark's test)."""
    n = rate // 50
    return next(i for i in range(pcm.size // n) if rms_dbfs(pcm[i * n : (i + 1) * n]) > dbfs)


@pytest.mark.slow
async def test_piper_speech_starts_sooner_and_nothing_audible_is_dropped(
    piper: PiperTTS,
) -> None:
    rate = piper.sample_rate
    keep = round(rate * LeadInSettings().keep_ms / 1000)
    trimmed_ms = []
    for text in TEXTS:
        pcm = await first_chunk(piper, text)
        trimmer = LeadInTrimmer(rate)
        out = trimmer.process(pcm)
        cut = trimmer.trimmed
        assert cut == pcm.size - out.size >= 0 and trimmer.done
        # what went is quiet; from the onset on the audio is untouched; it starts at zero
        assert cut == 0 or int(np.abs(pcm[:cut].astype(np.int32)).max()) <= LEVEL
        assert np.array_equal(out[keep:], pcm[cut + keep :])
        assert cut == 0 or out[0] == 0
        # the first loud frame comes sooner by what was trimmed (to the frame)
        before, after = first_loud_frame(pcm, rate), first_loud_frame(out, rate)
        assert after <= before
        assert abs((before - after) * 20 - cut * 1000 / rate) <= 20
        trimmed_ms.append(cut * 1000 / rate)
    # Piper starts each sentence with 20-60 ms under -60 dBFS
    assert statistics.median(trimmed_ms) >= 10


@pytest.mark.slow
async def test_chunked_audio_is_trimmed_as_the_whole(piper: PiperTTS) -> None:
    pcm = await first_chunk(piper, "Water boils at one hundred degrees.")
    whole = LeadInTrimmer(piper.sample_rate).process(pcm)
    rng = np.random.default_rng(3)
    for _ in range(5):
        trimmer = LeadInTrimmer(piper.sample_rate)
        cuts = np.sort(rng.integers(0, 3000, 12))  # small pieces across the lead-in
        pieces = np.split(pcm, cuts)
        assert np.array_equal(np.concatenate([trimmer.process(p) for p in pieces]), whole)


def test_only_the_start_is_trimmed_and_loud_starts_are_untouched() -> None:
    rate = 16_000
    t = np.arange(rate // 10) / rate
    tone = float_to_int16(0.5 * np.sin(2 * np.pi * 300 * t + 1.0))  # loud from sample 0
    trimmer = LeadInTrimmer(rate)
    assert np.array_equal(trimmer.process(tone), tone) and trimmer.trimmed == 0
    gap = np.concatenate([np.zeros(800, np.int16), tone])  # a later sentence's pause
    assert np.array_equal(trimmer.process(gap), gap)


def test_at_most_max_trim_is_dropped() -> None:
    rate = 16_000
    settings = LeadInSettings(max_trim_ms=100)
    silence = np.ones(rate, np.int16)  # a second under the threshold
    trimmer = LeadInTrimmer(rate, settings)
    out = trimmer.process(silence[:800]).size + trimmer.process(silence[800:]).size
    assert trimmer.done and trimmer.trimmed == rate - out <= rate // 10
    assert trimmer.trimmed == rate // 10 - rate * 5 // 1000  # the budget, less what is kept


def test_fade_in_starts_at_zero_and_rises() -> None:
    ramp = fade_in(np.full(80, 1000, np.int16))
    assert ramp[0] == 0 and np.all(np.diff(ramp) >= 0) and ramp[-1] > 990


class RecordingVoice:
    """The real Piper voice, keeping each chunk it synthesized."""

    def __init__(self, voice: PiperTTS) -> None:
        self._voice = voice
        self.sample_rate = voice.sample_rate
        self.voice = voice.voice
        self.chunks: list[PCM] = []

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        async for chunk in self._voice.stream(text):
            self.chunks.append(chunk.pcm)
            yield chunk

    async def aclose(self) -> None:
        return None


@pytest.mark.slow
async def test_a_reply_trims_its_first_audio_only(piper: PiperTTS) -> None:
    voice = RecordingVoice(piper)
    playout = PlayoutBuffer(piper.sample_rate)  # the voice's rate: no resampling
    pushed: list[PCM] = []
    push = playout.push

    async def recording_push(segment: SegmentPlayback, pcm: PCM) -> None:
        pushed.append(pcm)
        await push(segment, pcm)

    playout.push = recording_push  # type: ignore[method-assign]
    text = "Water boils at one hundred degrees. Ice melts at zero."
    reply = canned_reply(playout, voice, text, "turn_lead_in")
    task = asyncio.create_task(reply.run())
    reply.handle.task = task
    while not task.done():  # play it out as fast as it comes
        playout.pull()
        await asyncio.sleep(0)
    await task
    assert len(voice.chunks) == 2 == len(pushed)
    first = LeadInTrimmer(piper.sample_rate)
    assert np.array_equal(pushed[0], first.process(voice.chunks[0])) and first.trimmed > 0
    assert np.array_equal(pushed[1], voice.chunks[1])  # the second sentence keeps its pause
