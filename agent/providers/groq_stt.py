"""Cloud speech-to-text with Whisper on Groq (``whisper-large-v3-turbo``), on the ``groq`` SDK.

Each final transcription uploads the turn's audio as a 16 kHz 16-bit mono
WAV file (encoded in memory, off the event loop) to
``/openai/v1/audio/transcriptions`` with temperature 0 and, by default,
``verbose_json``, whose segments carry Whisper's mean log probability:

* the confidence is ``exp`` of the mean token log probability over the
  segments (1.0 when the vendor gives no segments and the text is not empty,
  0.0 for an empty transcript);
* a segment Whisper itself rates as non-speech (no-speech probability above
  ``no_speech_threshold`` with a mean log probability below -1, the rule the
  local model applies too) is dropped: on silence and noise the large models
  otherwise answer "Thank you." and the like;
* non-speech annotations (``[BLANK_AUDIO]``, ``(music)``) are removed as
  for the local model.

Audio that is too short or silent is answered empty without a request (Groq
bills every request as at least 10 s of audio).

Partial transcripts: a request per partial would cost a request (and its
10 s minimum) every few hundred milliseconds of speech, so by default this
provider serves finals only and ``transcribe(partial=True)`` raises a
non-retryable ``ProviderError``. Partials are meant to come from the local
model, routed by the fallback wrapper that pairs the two;
``serve_partials=True`` sends them to Groq like finals for setups without a
local model.

Errors map as for the cloud LLMs (``agent.providers.cloud_errors``); no
message carries the key, the prompt or the transcript.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.errors import ProviderError
from agent.providers.cloud_errors import groq_errors, provider_error
from agent.providers.groq_llm import GROQ_BASE_URL
from agent.providers.openai_llm import check_endpoint, client_options
from agent.providers.whisper import check_audio, clean_text
from agent.stt import Transcript
from media.frames import PIPELINE_RATE, AudioFrame, FloatPCM, float_to_int16, rms_dbfs
from media.wav import wav_bytes

PROVIDER = "groq"

NOISE_LOGPROB = -1.0
"""Whisper's rule: a segment is non-speech when its mean log probability is
below this and its no-speech probability above the threshold."""


@dataclass(frozen=True, slots=True)
class GroqSTTSettings:
    """Groq's Whisper transcription endpoint."""

    api_key: str = field(repr=False)
    """``gsk_...`` key (never logged)."""
    model: str = "whisper-large-v3-turbo"
    base_url: str = GROQ_BASE_URL
    timeout_s: float = 10.0
    """See ``agent.providers.openai_llm.client_options``."""
    language: str | None = "en"
    """ISO-639-1 code of the spoken language; ``None`` lets Whisper detect it."""
    prompt: str | None = None
    """Text that guides spelling and style (names, domain words); at most 224 tokens."""
    response_format: Literal["verbose_json", "json"] = "verbose_json"
    """``verbose_json`` carries the segments behind the confidence and the noise filter."""
    serve_partials: bool = False
    """Send ``partial=True`` requests too (see the module doc); off: they raise."""
    no_speech_threshold: float | None = 0.6
    """Drop segments Whisper rates as non-speech (see the module doc); ``None``: keep all."""
    min_audio_s: float = 0.1
    """Shorter audio returns an empty transcript without a request."""
    silence_dbfs: float = -60.0
    """Audio whose RMS level is below this returns an empty transcript without a request."""

    def __post_init__(self) -> None:
        check_endpoint(self)
        if self.response_format not in ("verbose_json", "json"):
            raise ValueError("response_format must be 'verbose_json' or 'json'")


class GroqWhisperSTT:
    """Implements ``agent.stt.STT`` with Groq's hosted Whisper; finals only by default.

    Safe to call concurrently (one pooled HTTP client); no SDK retries (see
    ``agent.providers.openai_llm.client_options``).
    """

    sample_rate: int = PIPELINE_RATE

    def __init__(self, settings: GroqSTTSettings) -> None:
        from groq import AsyncGroq

        self.settings = settings
        self.model: str = settings.model
        self._client = AsyncGroq(**client_options(settings))
        self._errors = groq_errors()
        self._closed = False

    async def transcribe(self, audio: FloatPCM, *, partial: bool = False) -> Transcript:
        """Transcribe 16 kHz mono float32 ``audio`` with one request.

        Raises ``AudioFormatError`` (a ``ValueError``) for audio that is not a
        flat float32 array of finite samples, ``ProviderError`` for a partial
        request while ``serve_partials`` is off, a closed provider, or a
        failed request (see ``agent.providers.cloud_errors``).
        """
        if partial and not self.settings.serve_partials:
            raise ProviderError(
                PROVIDER, "partial transcripts are not served (route them to a local STT)"
            )
        if self._closed:
            raise ProviderError(PROVIDER, "the client is closed")
        started = time.perf_counter()
        wav = await asyncio.to_thread(self._encode, audio)
        audio_s = audio.size / self.sample_rate
        if wav is None:
            return self._transcript("", 0.0, audio_s, started)
        s = self.settings
        options: dict[str, Any] = {}
        if s.language:
            options["language"] = s.language
        if s.prompt:
            options["prompt"] = s.prompt
        try:
            result = await self._client.audio.transcriptions.create(
                file=("turn.wav", wav),
                model=s.model,
                response_format=s.response_format,
                temperature=0.0,
                **options,
            )
        except self._errors.catchable as exc:
            raise provider_error(PROVIDER, exc, self._errors) from None
        text, confidence = read_transcription(
            result.text, getattr(result, "segments", None), s.no_speech_threshold
        )
        return self._transcript(text, confidence, audio_s, started)

    def _encode(self, audio: FloatPCM) -> bytes | None:
        """The WAV upload, or ``None`` for audio too short or too quiet to send (worker thread)."""
        check_audio(audio)
        pcm = float_to_int16(audio)
        too_short = audio.size < self.settings.min_audio_s * self.sample_rate
        if too_short or rms_dbfs(pcm) < self.settings.silence_dbfs:
            return None
        return wav_bytes(AudioFrame(pcm, self.sample_rate))

    def _transcript(
        self, text: str, confidence: float, audio_s: float, started: float
    ) -> Transcript:
        return Transcript(
            text, confidence, audio_s, time.perf_counter() - started, PROVIDER, self.model
        )

    async def aclose(self) -> None:
        """Close the HTTP client; later requests fail. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._client.close()


def read_transcription(
    text: str, segments: object, no_speech_threshold: float | None
) -> tuple[str, float]:
    """Text and confidence of a transcription answer (see the module doc).

    ``segments`` is ``verbose_json``'s list of segment objects, or ``None``.
    """
    kept: list[str] = []
    logprobs: list[float] = []
    weights: list[float] = []
    dropped = False
    for segment in segments if isinstance(segments, list) else ():
        if not isinstance(segment, Mapping):
            continue
        avg_logprob = _number(segment.get("avg_logprob"))
        no_speech = _number(segment.get("no_speech_prob"))
        if (
            no_speech_threshold is not None
            and avg_logprob is not None
            and no_speech is not None
            and no_speech > no_speech_threshold
            and avg_logprob < NOISE_LOGPROB
        ):
            dropped = True
            continue
        kept.append(str(segment.get("text") or ""))
        if avg_logprob is not None:
            tokens = segment.get("tokens")
            logprobs.append(avg_logprob)
            weights.append(float(len(tokens)) if isinstance(tokens, list) and tokens else 1.0)
    text = clean_text("".join(kept) if dropped else text)
    if not text:
        return "", 0.0
    if not logprobs:
        return text, 1.0
    mean = sum(lp * w for lp, w in zip(logprobs, weights, strict=True)) / sum(weights)
    return text, min(max(math.exp(mean), 0.0), 1.0)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
