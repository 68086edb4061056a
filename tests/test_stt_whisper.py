"""Whisper tiny.en (CTranslate2) on synthesized speech, through both encoder paths."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ModelLoadError
from agent.providers.whisper import (
    WhisperSettings,
    WhisperSTT,
    clean_text,
    compression_ratio,
    trim_repeats,
)
from agent.stt import STT
from media.errors import AudioFormatError
from media.frames import int16_to_float
from tests.speech import compose, speak
from tests.textnorm import contains_phrase, word_error_rate

pytestmark = pytest.mark.slow

SENTENCES = [
    "What time does the pharmacy open tomorrow morning?",
    "Can you tell me the weather forecast for this weekend?",
    "I would like to book a table for two people tonight.",
]

# Transcripts are compared after tests.textnorm's English normalization, so
# "Where's" for "Where is" or "2" for "two" is no error. SENTENCE_WER allows one
# misheard word in five (two in the ten-word sentences), LOOSE_WER one in four.
SENTENCE_WER = 0.2
LOOSE_WER = 0.25


@pytest.fixture(scope="module")
def short_stt() -> Iterator[WhisperSTT]:
    stt = WhisperSTT(WhisperSettings(encoder="short"))
    yield stt
    stt.close()


@pytest.fixture(scope="module")
def padded_stt() -> Iterator[WhisperSTT]:
    stt = WhisperSTT(WhisperSettings(encoder="padded"))
    yield stt
    stt.close()


@pytest.mark.parametrize("text", SENTENCES)
async def test_short_encoder_transcribes_sentences(short_stt: WhisperSTT, text: str) -> None:
    audio = int16_to_float(compose(0.3, text, 0.5))
    result = await short_stt.transcribe(audio)
    assert word_error_rate(text, result.text) <= SENTENCE_WER, result.text
    assert 0.0 < result.confidence <= 1.0
    assert result.audio_s == pytest.approx(audio.size / 16000)
    assert result.processing_s > 0


@pytest.mark.parametrize("text", SENTENCES[:2])
async def test_padded_encoder_transcribes_sentences(padded_stt: WhisperSTT, text: str) -> None:
    result = await padded_stt.transcribe(int16_to_float(speak(text)))
    assert word_error_rate(text, result.text) <= SENTENCE_WER, result.text
    assert 0.0 < result.confidence <= 1.0


async def test_tightly_cut_speech(short_stt: WhisperSTT) -> None:
    """No silence around the words at all (a tight VAD cut) still ends properly."""
    pcm = speak("Cancel my appointment on Friday afternoon.")
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 0.02 * np.abs(pcm).max())
    result = await short_stt.transcribe(int16_to_float(pcm[loud[0] : loud[-1] + 1]))
    assert contains_phrase(result.text, "appointment")
    assert contains_phrase(result.text, "friday")
    assert len(result.words) <= 8  # no decoder loop


async def test_partial_transcript(short_stt: WhisperSTT) -> None:
    pcm = speak("I would like to book a table for two people tonight.")
    head = pcm[: int(pcm.size * 0.6)]  # the caller is still speaking
    result = await short_stt.transcribe(int16_to_float(head), partial=True)
    assert contains_phrase(result.text, "book")
    assert 0.0 <= result.confidence <= 1.0


async def test_empty_and_silent_audio_skip_the_model(short_stt: WhisperSTT) -> None:
    before = short_stt.stats.skipped
    for audio in (
        np.zeros(0, np.float32),
        np.zeros(800, np.float32),  # 50 ms
        np.zeros(16000, np.float32),  # 1 s of digital silence
        np.full(16000, 1e-5, np.float32),  # -100 dBFS
    ):
        result = await short_stt.transcribe(audio)
        assert result.text == ""
        assert result.words == []
        assert result.confidence == 0.0
    assert short_stt.stats.skipped == before + 4


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(16000, np.int16),
        np.zeros(16000, np.float64),
        np.zeros((16000, 1), np.float32),
        np.zeros((2, 8000), np.float32),
        np.full(16000, np.nan, np.float32),
        np.full(16000, 1000.0, np.float32),
        [0.0] * 16000,
    ],
    ids=["int16", "float64", "column", "stereo", "nan", "unscaled", "list"],
)
async def test_bad_input_is_a_typed_error(short_stt: WhisperSTT, audio: object) -> None:
    with pytest.raises(AudioFormatError) as info:
        await short_stt.transcribe(audio)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


async def test_concurrent_callers(short_stt: WhisperSTT) -> None:
    texts = ["Where is the nearest train station?", "Hello, is anybody there?", *SENTENCES[:2]]
    audios = [int16_to_float(speak(t)) for t in texts]
    results = await asyncio.gather(*(short_stt.transcribe(a) for a in audios))
    for text, result in zip(texts, results, strict=True):
        assert word_error_rate(text, result.text) <= LOOSE_WER, result.text


async def test_failed_check_falls_back_to_padded() -> None:
    """A short-path result that fails the quality check is redone on the 30 s window."""
    stt = WhisperSTT(WhisperSettings(encoder="short", logprob_threshold=0.0))
    try:
        text = SENTENCES[1]
        result = await stt.transcribe(int16_to_float(speak(text)))
        assert word_error_rate(text, result.text) <= SENTENCE_WER, result.text
        assert stt.stats.fallbacks == {"logprob": 1}
        assert stt.stats.padded == 1
        # Partials do not fall back by default: they keep the quick result.
        await stt.transcribe(int16_to_float(speak(text)), partial=True)
        assert stt.stats.short == 1
    finally:
        stt.close()


async def test_longer_than_one_window(short_stt: WhisperSTT) -> None:
    audio = int16_to_float(compose("Where is the nearest train station?", 29.0, "Thank you."))
    assert audio.size / 16000 > 30
    result = await short_stt.transcribe(audio)
    assert contains_phrase(result.text, "train station")
    assert contains_phrase(result.text, "thank you")
    assert short_stt.stats.long_form >= 1


def test_implements_protocol(short_stt: WhisperSTT) -> None:
    assert isinstance(short_stt, STT)
    assert short_stt.sample_rate == 16000


def test_missing_model_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        WhisperSTT(WhisperSettings(model_path=tmp_path))


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="encoder"):
        WhisperSettings(encoder="tiny")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beam"):
        WhisperSettings(beam_size=0)


def test_trim_repeats() -> None:
    loop = "The number I have is. The number I have is. The number I have is. The number"
    assert trim_repeats(loop) == ("The number I have is.", True)
    assert trim_repeats("air air air air air") == ("air", True)
    assert trim_repeats("Bye bye.") == ("Bye bye.", False)
    assert trim_repeats("Please call me back tomorrow.") == ("Please call me back tomorrow.", False)
    assert trim_repeats("") == ("", False)


def test_clean_text_and_compression_ratio() -> None:
    assert clean_text(" [BLANK_AUDIO] ") == ""
    assert clean_text("(music) Hello there. ♪") == "Hello there."
    assert clean_text("...") == ""
    assert compression_ratio("word " * 40) > 2.4
    assert compression_ratio("Please turn the music down a little bit.") < 2.4
