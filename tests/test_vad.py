"""Silero VAD through onnxruntime on real (synthesized) speech."""

from __future__ import annotations

import numpy as np
import pytest

from agent.turns import TurnDetector, TurnEventKind, TurnSettings
from agent.vad import WINDOW_SAMPLES, GateSettings, SileroVAD
from media.errors import AudioFormatError
from media.frames import int16_to_float
from tests.speech import compose, speak


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


def true_bounds(pcm: np.ndarray, offset_s: float) -> tuple[float, float]:
    """Where the speech is: first and last sample above 2% of the peak."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 0.02 * np.abs(pcm).max())
    return offset_s + loud[0] / 16000, offset_s + loud[-1] / 16000


@pytest.mark.parametrize(
    "text",
    [
        "What time does the pharmacy open tomorrow morning?",
        "Please turn the music down a little bit.",
        "I would like to book a table for two people tonight.",
    ],
)
def test_vad_boundaries_within_100ms(vad: SileroVAD, text: str) -> None:
    speech = speak(text)
    pcm = np.concatenate([np.zeros(16000, np.int16), speech, np.zeros(24000, np.int16)])
    onset, offset = true_bounds(speech, 1.0)
    stream = vad.stream()
    det = TurnDetector(TurnSettings(), GateSettings())
    audio = int16_to_float(pcm)
    starts: list[float] = []
    ends: list[float] = []
    for i in range(0, audio.size - 320, 320):  # 20 ms frames, like a transport
        chunk = audio[i : i + 320]
        for j, prob in enumerate(stream.process(chunk)):
            del j
            for ev in det.process(np.zeros(WINDOW_SAMPLES, np.float32), prob):
                if ev.kind is TurnEventKind.SPEECH_STARTED:
                    starts.append(ev.speech_start)
                if ev.kind is TurnEventKind.TURN_ENDED:
                    assert ev.speech_end is not None
                    ends.append(ev.speech_end)
    assert len(starts) == 1 and len(ends) == 1
    assert abs(starts[0] - onset) <= 0.1, (starts[0], onset)
    assert abs(ends[0] - offset) <= 0.1, (ends[0], offset)


def test_vad_silence_and_noise_are_not_speech(vad: SileroVAD) -> None:
    stream = vad.stream()
    rng = np.random.default_rng(1)
    noise = (rng.normal(0, 0.01, 16000 * 2)).astype(np.float32)
    probs = stream.process(np.zeros(16000, np.float32)) + stream.process(noise)
    assert max(probs) < 0.5


def test_vad_state_is_per_stream_and_chunking_invariant(vad: SileroVAD) -> None:
    audio = int16_to_float(compose(0.3, "Hello there, how are you?", 0.3))
    whole = vad.stream().process(audio)
    s = vad.stream()
    pieces: list[float] = []
    for i in range(0, audio.size, 333):
        pieces += s.process(audio[i : i + 333])
    assert len(pieces) == len(whole) == audio.size // WINDOW_SAMPLES
    assert np.allclose(pieces, whole, atol=1e-4)
    assert max(whole) > 0.9


def test_vad_rejects_wrong_input(vad: SileroVAD) -> None:
    with pytest.raises(AudioFormatError):
        vad.stream().process(np.zeros(512, np.int16))
