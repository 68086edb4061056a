"""Whisper log-mel features on numpy, as Smart Turn v3 expects them.

The end-of-turn model (``agent.endofturn``) is a Whisper-style encoder fed
80 mel bins x 800 frames: the last 8 s of 16 kHz audio (zero-padded at the
start when shorter), the waveform normalised to zero mean and unit variance
over that whole window, a centred 400-point STFT with a periodic Hann window
and a 160-sample hop, a Slaney mel filterbank, ``log10`` clamped 8 decades
below the maximum and scaled by ``(x + 4) / 4``, the last frame dropped.
That is what ``transformers.WhisperFeatureExtractor(chunk_length=8,
do_normalize=True)`` computes; ``tests/test_endofturn.py`` checks these
numbers against the reference copy shipped with ``pipecat-ai``.

faster-whisper's ``FeatureExtractor`` is not used: it pads 160 samples at the
end and does not normalise the waveform, so its frames differ from the ones
the model was trained on.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from media.errors import AudioFormatError
from media.frames import PIPELINE_RATE, FloatPCM

WINDOW_S = 8
"""Seconds of audio the model sees (the most recent ones)."""
WINDOW_SAMPLES = WINDOW_S * PIPELINE_RATE
N_FFT = 400
HOP = 160
N_MELS = 80
N_FRAMES = WINDOW_SAMPLES // HOP
"""Frames per window (800): the centred STFT yields one more, which is dropped."""

_MEL_FLOOR = 1e-10
_VARIANCE_EPS = 1e-7
_DYNAMIC_RANGE = 8.0
"""Decades of log-mel kept below the window's loudest bin."""

Float64 = npt.NDArray[np.float64]


def _hz_to_mel(hz: Float64) -> Float64:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    linear = 3.0 * hz / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: Float64) -> Float64:
    hz = 200.0 * mel / 3.0
    log_region = mel >= 15.0
    return np.where(log_region, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), hz)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = PIPELINE_RATE) -> Float64:
    """Slaney-normalised triangular filters, shape ``(n_mels, n_fft // 2 + 1)``."""
    fft_hz = np.linspace(0.0, rate // 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([rate / 2]))[0], n_mels + 2)
    )
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (upper - lower))  # equal area per filter


_FILTERS = mel_filterbank()
_HANN = np.hanning(N_FFT + 1)[:-1]  # periodic Hann (torch.hann_window)


def last_window(audio: FloatPCM) -> FloatPCM:
    """The last ``WINDOW_S`` seconds of ``audio``, zero-padded at the start when shorter."""
    if audio.size >= WINDOW_SAMPLES:
        return audio[-WINDOW_SAMPLES:]
    out = np.zeros(WINDOW_SAMPLES, np.float32)
    if audio.size:
        out[-audio.size :] = audio
    return out


def log_mel(audio: FloatPCM) -> npt.NDArray[np.float32]:
    """Features of the last 8 s of 16 kHz float audio in -1..1: shape ``(80, 800)``."""
    if audio.ndim != 1:
        raise AudioFormatError("log-mel features expect flat mono audio")
    x = last_window(np.asarray(audio, np.float32))
    # normalised in float32 over the whole (padded) window, as the model was trained
    x = (x - x.mean()) / np.sqrt(x.var() + np.float32(_VARIANCE_EPS))
    half = N_FFT // 2
    padded = np.pad(x.astype(np.float64), (half, half), mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP]  # (801, 400), no copy
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(_MEL_FLOOR, power @ _FILTERS.T)).T[:, :N_FRAMES]  # (80, 800)
    mel = np.maximum(mel, mel.max() - _DYNAMIC_RANGE)
    out: npt.NDArray[np.float32] = ((mel + 4.0) / 4.0).astype(np.float32)
    return out
