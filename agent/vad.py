"""Voice activity detection: Silero VAD (ONNX, no torch), streamed in 512-sample windows.

``SileroVAD`` is the model, loaded once per process. Each call gets its own
``VADStream`` carrying the LSTM state and the 64-sample context across windows,
and a ``SpeechGate`` that turns probabilities into onset/offset decisions with
hysteresis. ``VAD`` and ``SpeechProbabilityStream`` are the protocols they
implement, so sessions can run on another detector (tests use an energy VAD).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime

from agent.errors import ModelLoadError
from media.errors import AudioFormatError
from media.frames import PIPELINE_RATE, FloatPCM

WINDOW_SAMPLES = 512
"""Silero's window at 16 kHz (32 ms)."""
WINDOW_S = WINDOW_SAMPLES / PIPELINE_RATE
_CONTEXT_SAMPLES = 64


@runtime_checkable
class SpeechProbabilityStream(Protocol):
    """Per-call VAD state: feed 16 kHz float32 audio, get one speech probability per window.

    Windows are ``WINDOW_SAMPLES`` (512) samples long; audio that does not
    fill a window waits for the next call. ``process`` is blocking (it may
    run a model): callers run it on an inference thread.
    """

    def process(self, audio: FloatPCM) -> list[float]:
        """Probabilities in 0..1 of each window completed by ``audio``."""
        ...

    def reset(self) -> None:
        """Forget the state (e.g. after a long gap in the input)."""
        ...


@runtime_checkable
class VAD(Protocol):
    """A voice activity detector shared by every call of the process."""

    def stream(self) -> SpeechProbabilityStream:
        """A fresh stream with its own state, for one call."""
        ...


def default_vad_path() -> Path:
    """The Silero VAD v6 ONNX file shipped inside faster-whisper's assets."""
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


class SileroVAD:
    """The Silero VAD ONNX model, shared by every stream of the process.

    ``onnxruntime.InferenceSession.run`` is thread-safe, so streams of
    different calls may run windows concurrently; the recurrent state lives in
    each ``VADStream``.
    """

    def __init__(self, model_path: Path | None = None) -> None:
        path = model_path or default_vad_path()
        if not path.is_file():
            raise ModelLoadError("silero-vad", f"model file missing at {path}")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError("silero-vad", f"cannot load {path.name}: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "h", "c"}:
            raise ModelLoadError("silero-vad", f"unexpected model inputs {sorted(names)}")

    def stream(self) -> VADStream:
        """A fresh stream with zeroed state, for one call."""
        return VADStream(self)

    def _run(self, x: FloatPCM, h: FloatPCM, c: FloatPCM) -> tuple[FloatPCM, FloatPCM, FloatPCM]:
        probs, hn, cn = self._session.run(None, {"input": x, "h": h, "c": c})
        return probs, hn, cn


class VADStream:
    """Per-call VAD state: feed 16 kHz float audio, get one probability per window."""

    def __init__(self, model: SileroVAD) -> None:
        self._model = model
        self._pending = np.zeros(0, np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state (e.g. after a long gap in the input)."""
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, np.float32)
        self._pending = np.zeros(0, np.float32)

    def process(self, audio: FloatPCM) -> list[float]:
        """Feed audio of any length; returns probabilities of each completed window.

        Blocking (runs the ONNX model): call it from an inference thread.
        """
        if audio.dtype != np.float32 or audio.ndim != 1:
            raise AudioFormatError("VAD expects flat float32 audio at 16 kHz")
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        n = buf.size // WINDOW_SAMPLES
        self._pending = buf[n * WINDOW_SAMPLES :].copy()
        if n == 0:
            return []
        windows = buf[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES)
        contexts = np.empty((n, _CONTEXT_SAMPLES), np.float32)
        contexts[0] = self._context
        if n > 1:
            contexts[1:] = windows[:-1, -_CONTEXT_SAMPLES:]
        self._context = windows[-1, -_CONTEXT_SAMPLES:].copy()
        x = np.concatenate([contexts, windows], axis=1)
        probs, self._h, self._c = self._model._run(x, self._h, self._c)
        return [float(p) for p in np.asarray(probs).reshape(-1)]


class Activity(enum.Enum):
    """Output of the speech gate for one window."""

    SILENCE = "silence"
    ONSET = "onset"
    SPEECH = "speech"
    OFFSET = "offset"


@dataclass(frozen=True, slots=True)
class GateSettings:
    """Thresholds of the speech gate."""

    onset_threshold: float = 0.5
    """Probability at or above which a window counts as speech."""
    offset_threshold: float = 0.35
    """Probability below which a window counts as silence once speaking (hysteresis)."""
    onset_windows: int = 2
    """Consecutive speech windows needed to declare an onset (64 ms)."""
    offset_windows: int = 3
    """Consecutive silence windows needed to declare an offset (96 ms)."""

    def __post_init__(self) -> None:
        if not 0 < self.offset_threshold <= self.onset_threshold < 1:
            raise ValueError("need 0 < offset_threshold <= onset_threshold < 1")
        if self.onset_windows < 1 or self.offset_windows < 1:
            raise ValueError("onset_windows and offset_windows must be >= 1")


class SpeechGate:
    """Hysteresis over window probabilities: SILENCE -> ONSET -> SPEECH -> OFFSET.

    ``ONSET``/``OFFSET`` are reported once, on the window that confirms them;
    their time is back-dated to the first window of the run that confirmed it.
    """

    def __init__(self, settings: GateSettings) -> None:
        self.settings = settings
        self.speaking = False
        self._run = 0

    def update(self, prob: float) -> Activity:
        """Advance by one window."""
        s = self.settings
        if not self.speaking:
            self._run = self._run + 1 if prob >= s.onset_threshold else 0
            if self._run >= s.onset_windows:
                self.speaking, self._run = True, 0
                return Activity.ONSET
            return Activity.SILENCE
        self._run = self._run + 1 if prob < s.offset_threshold else 0
        if self._run >= s.offset_windows:
            self.speaking, self._run = False, 0
            return Activity.OFFSET
        return Activity.SPEECH

    def confirm_lag_windows(self, activity: Activity) -> int:
        """How many windows before the current one the confirmed event began."""
        if activity is Activity.ONSET:
            return self.settings.onset_windows - 1
        if activity is Activity.OFFSET:
            return self.settings.offset_windows - 1
        return 0

    def reset(self) -> None:
        """Back to silence."""
        self.speaking = False
        self._run = 0
