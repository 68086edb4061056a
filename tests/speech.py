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

_tts: PiperTTS | None = None


def _voice() -> PiperTTS:
    global _tts
    if _tts is None:
        _tts = PiperTTS(PiperSettings())
    return _tts


def speak(text: str, rate: int = PIPELINE_RATE) -> PCM:
    """Piper speech of ``text`` as mono int16 at ``rate`` (cached)."""
    key = hashlib.sha1(f"{text}|{rate}".encode()).hexdigest()[:16]
    path = CACHE_DIR / f"{key}.npy"
    if path.exists():
        cached: PCM = np.load(path)
        return cached
    tts = _voice()
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
