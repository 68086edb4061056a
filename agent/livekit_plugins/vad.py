"""Our VAD (Silero on onnxruntime, or any ``agent.vad.VAD``) as a livekit-agents VAD plugin.

Frames at any rate and channel count are mixed and resampled to 16 kHz mono
and run through the model in 512-sample windows (32 ms) on a worker thread;
each window is an ``INFERENCE_DONE`` event. Our ``SpeechGate`` (hysteresis)
says when speech starts; speech ends after ``min_silence_s`` of gated
silence (``END_OF_SPEECH`` carries the speech, from ``prefix_s`` before
its start, for a batch STT). The speech kept per turn is bounded at
``max_speech_s``; past it the oldest audio is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np
from livekit import rtc
from livekit.agents import vad

from agent.vad import VAD as ParleyVAD  # noqa: N811 (ours, beside LiveKit's)
from agent.vad import WINDOW_S, WINDOW_SAMPLES, Activity, GateSettings, SpeechGate
from media.frames import PIPELINE_RATE
from media.resample import StreamResampler


class VAD(vad.VAD):
    """Voice activity from ``model`` (shared: each stream has its own state)."""

    def __init__(
        self,
        model: ParleyVAD,
        *,
        gate: GateSettings | None = None,
        min_silence_s: float = 0.55,
        prefix_s: float = 0.3,
        max_speech_s: float = 30.0,
    ) -> None:
        if min_silence_s <= 0 or prefix_s < 0 or max_speech_s <= 0:
            raise ValueError("min_silence_s and max_speech_s must be positive, prefix_s >= 0")
        super().__init__(capabilities=vad.VADCapabilities(update_interval=WINDOW_S))
        self._model = model
        self.gate = gate or GateSettings()
        self.min_silence_s = min_silence_s
        self.prefix_s = prefix_s
        self.max_speech_s = max_speech_s

    @property
    def model(self) -> str:
        """The model's class (``SileroVAD``)."""
        return type(self._model).__name__

    @property
    def provider(self) -> str:
        """Always ``parley``: the models are ours."""
        return "parley"

    def stream(self) -> VADStream:
        """A stream with its own model state, for one audio input."""
        return VADStream(self)


class VADStream(vad.VADStream):
    """One input's VAD: windows in, speech events out (see the module docstring)."""

    def __init__(self, plugin: VAD) -> None:
        self._plugin = plugin
        self._probs = plugin._model.stream()
        super().__init__(plugin)

    async def _main_task(self) -> None:
        plugin = self._plugin
        gate = SpeechGate(plugin.gate)
        resampler: StreamResampler | None = None
        in_rate = 0
        pending = np.zeros(0, np.int16)
        window_frames = max(1, round(plugin.prefix_s / WINDOW_S))
        recent: deque[np.ndarray] = deque(maxlen=window_frames)
        speech: deque[np.ndarray] = deque(maxlen=max(1, round(plugin.max_speech_s / WINDOW_S)))
        samples_index = 0
        speaking = False
        speech_s = silence_s = 0.0
        async for item in self._input_ch:
            if not isinstance(item, rtc.AudioFrame):
                continue  # a flush: windows carry over, nothing to reset
            pcm = np.frombuffer(item.data, dtype=np.int16)
            if item.num_channels > 1:
                pcm = pcm.reshape(-1, item.num_channels).mean(axis=1).astype(np.int16)
            if item.sample_rate != PIPELINE_RATE:
                if resampler is None or in_rate != item.sample_rate:
                    resampler, in_rate = (
                        StreamResampler(item.sample_rate, PIPELINE_RATE),
                        item.sample_rate,
                    )
                pcm = resampler.process(pcm)
            pending = np.concatenate([pending, pcm])
            count = pending.size // WINDOW_SAMPLES
            if count == 0:
                continue
            windows = pending[: count * WINDOW_SAMPLES]
            pending = pending[count * WINDOW_SAMPLES :]
            started = time.perf_counter()
            probs = await asyncio.to_thread(
                self._probs.process, windows.astype(np.float32) / 32768.0
            )
            spent = (time.perf_counter() - started) / max(1, len(probs))
            for i, prob in enumerate(probs):
                window = windows[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
                samples_index += WINDOW_SAMPLES
                activity = gate.update(prob)
                if speaking:
                    speech.append(window)
                    speech_s += WINDOW_S
                    silence_s = silence_s + WINDOW_S if not gate.speaking else 0.0
                else:
                    recent.append(window)
                self._send(
                    vad.VADEventType.INFERENCE_DONE,
                    samples_index,
                    speech_s,
                    silence_s,
                    [_frame(window)],
                    probability=prob,
                    inference_s=spent,
                    speaking=speaking,
                )
                if activity is Activity.ONSET and not speaking:
                    speaking, speech_s, silence_s = True, 0.0, 0.0
                    speech.clear()
                    speech.extend(recent)
                    recent.clear()
                    self._send(
                        vad.VADEventType.START_OF_SPEECH,
                        samples_index,
                        speech_s,
                        silence_s,
                        [_frame(w) for w in speech],
                        speaking=True,
                    )
                elif speaking and silence_s >= plugin.min_silence_s:
                    speaking = False
                    audio = np.concatenate(list(speech)) if speech else np.zeros(0, np.int16)
                    speech.clear()
                    self._send(
                        vad.VADEventType.END_OF_SPEECH,
                        samples_index,
                        speech_s,
                        silence_s,
                        [_frame(audio)],
                        speaking=False,
                    )
                    speech_s = silence_s = 0.0

    def _send(
        self,
        kind: vad.VADEventType,
        samples_index: int,
        speech_s: float,
        silence_s: float,
        frames: list[rtc.AudioFrame],
        *,
        probability: float = 0.0,
        inference_s: float = 0.0,
        speaking: bool,
    ) -> None:
        self._event_ch.send_nowait(
            vad.VADEvent(
                type=kind,
                samples_index=samples_index,
                timestamp=time.time(),
                speech_duration=speech_s,
                silence_duration=silence_s,
                frames=frames,
                probability=probability,
                inference_duration=inference_s,
                speaking=speaking,
            )
        )


def _frame(pcm: np.ndarray) -> rtc.AudioFrame:
    return rtc.AudioFrame(pcm.astype(np.int16).tobytes(), PIPELINE_RATE, 1, pcm.size)
