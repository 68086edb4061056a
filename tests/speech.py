"""Synthesized speech for tests and benchmarks (Piper, cached on disk).

Audio is generated once per text and voice setting and cached under a temp
directory, so the test suite never ships audio files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from agent.providers.piper import PiperSettings, PiperTTS
from media.frames import PCM, PIPELINE_RATE
from media.resample import resample

CACHE_DIR = Path(os.environ.get("PARLEY_TEST_AUDIO", Path(tempfile.gettempdir()) / "parley-speech"))

_voices: dict[float | None, PiperTTS] = {}


def _voice(length_scale: float | None = None) -> PiperTTS:
    voice = _voices.get(length_scale)
    if voice is None:
        voice = _voices[length_scale] = PiperTTS(PiperSettings(length_scale=length_scale))
    return voice


def speak(text: str, rate: int = PIPELINE_RATE, *, length_scale: float | None = None) -> PCM:
    """Piper speech of ``text`` as mono int16 at ``rate`` (cached).

    ``length_scale`` (>1 slower) gives a second "speaker" whose pace differs from the
    agent's own voice: a caller who talks over the agent does not share its rhythm.
    """
    setting = "" if length_scale is None else f"|{length_scale}"
    key = hashlib.sha1(f"{text}|{rate}{setting}".encode()).hexdigest()[:16]
    path = CACHE_DIR / f"{key}.npy"
    if path.exists():
        cached: PCM = np.load(path)
        return cached
    tts = _voice(length_scale)
    pcm = np.concatenate(tts.synthesize(text))
    out = resample(pcm, tts.sample_rate, rate)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


def silence(seconds: float, rate: int = PIPELINE_RATE) -> PCM:
    """Digital silence of the given length."""
    return np.zeros(int(seconds * rate), np.int16)


def compose(*parts: str | float, rate: int = PIPELINE_RATE) -> PCM:
    """Concatenate speech (str) and silences (float seconds) into one signal."""
    return np.concatenate(
        [speak(p, rate) if isinstance(p, str) else silence(p, rate) for p in parts]
    )
