"""Our STT (faster-whisper locally, or any ``agent.stt.STT``) as a livekit-agents STT plugin.

Batch recognition (``recognize``): livekit-agents wraps a non-streaming STT
with a VAD (``stt.StreamAdapter``) in an ``AgentSession``. The buffer is
mixed to mono and resampled to the provider's 16 kHz.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, stt, utils
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from agent.errors import ProviderError
from agent.livekit_plugins.errors import to_api_error
from agent.stt import STT as ParleySTT  # noqa: N811 (ours, beside LiveKit's)
from media.frames import PIPELINE_RATE
from media.resample import resample


class STT(stt.STT[Any]):
    """Transcribes with ``provider`` (shared by every session; thread-safe)."""

    def __init__(self, provider: ParleySTT, *, language: str = "en") -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._provider = provider
        self._language = language

    @property
    def model(self) -> str:
        """The provider's class (``WhisperSTT``, ``GroqSTT``...)."""
        return type(self._provider).__name__

    @property
    def provider(self) -> str:
        """Always ``parley``: the models are ours."""
        return "parley"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        pcm = np.frombuffer(frame.data, dtype=np.int16)
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        if frame.sample_rate != PIPELINE_RATE:
            pcm = resample(pcm, frame.sample_rate, PIPELINE_RATE)
        try:
            transcript = await self._provider.transcribe(pcm.astype(np.float32) / 32768.0)
        except ProviderError as exc:
            raise to_api_error(exc) from exc
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id="stt_" + secrets.token_hex(6),
            alternatives=[
                stt.SpeechData(
                    language=language if isinstance(language, str) else self._language,
                    text=transcript.text,
                    confidence=transcript.confidence,
                    end_time=transcript.audio_s,
                )
            ],
        )
