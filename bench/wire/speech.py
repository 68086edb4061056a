"""The caller's side of the benchmark: spoken questions, paused questions, barge-ins, coughs.

Two voice families speak the questions: Piper (``tests.speech.speak``, the
``en_US-joe-medium`` voice, cached on disk) and espeak-ng (several English
voices, cached the same way). Every clip is trimmed to its speech, normalised
to the same peak and given known speech bounds, so a scenario knows exactly
when the caller's speech starts and ends inside the audio it sends.

Human speech (``HUMAN_VOICE``): the v2v and barge-in scenarios may take their
caller's lines from Debian's Asterisk prompts instead (``bench.human_speech``:
one human speaker, 8 kHz telephone audio, upsampled to the 16 kHz the caller
sends, then trimmed and normalised like the synthetic clips). The prompts are
not questions, but the agent answers anything. ``CallerVoice`` says who speaks
a scenario's lines: ``synthetic`` (the scripted texts in the synthetic voices)
or ``human`` (a fixed selection of prompts, ``human_lines``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.human_speech import load_clips, normalize, usable_transcript
from media.frames import PCM, PIPELINE_RATE
from media.resample import resample
from media.wav import read_wav
from tests.speech import CACHE_DIR, speak

PIPER_VOICE = "piper:joe"
ESPEAK_VOICES = ("espeak:en-us", "espeak:en-gb-x-rp", "espeak:en-us+f3")
SPEECH_THRESHOLD_DBFS = -45.0
"""A 10 ms window louder than this is speech when trimming and bounding clips."""
PEAK_DBFS = -6.0
"""Every clip is scaled to this peak, whatever voice made it."""
HUMAN_VOICE = "human:asterisk"
"""The voice of human speech: Debian's Asterisk prompts (one speaker, 8 kHz recordings)."""
HUMAN_SPEECH_S = (1.5, 5.0)
"""Shortest and longest speech of a human line, in seconds (after trimming)."""
HUMAN_MIN_WORDS = 3
HUMAN_QUESTIONS = 20
"""Human lines the voice-to-voice scenario asks (as many as ``QUESTIONS``)."""
HUMAN_INTERRUPTIONS = 10
"""The next human lines: what the caller says over the agent (as many as ``INTERRUPTIONS``)."""
CALLER_VOICES = ("synthetic", "human")
"""Who may speak the caller's lines (``CallerVoice.kind``)."""

QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "Can you recommend a good book?",
    "What is the weather usually like in summer?",
    "How do I boil an egg?",
    "Who wrote Romeo and Juliet?",
    "What is two plus two?",
    "Tell me something about the moon.",
    "What should I cook for dinner tonight?",
    "How far away is the sun?",
    "What is your name?",
    "Why do cats purr?",
    "How tall is Mount Everest?",
    "What time is it in Tokyo right now?",
    "Which planet is the largest?",
    "How do bees make honey?",
    "What is a good name for a dog?",
    "Where do penguins live?",
    "How many days are there in a leap year?",
)
"""Twenty different questions; the voice-to-voice scenario asks each once."""

SPLIT_QUESTIONS = (
    ("What is the capital", "of France?"),
    ("How many legs", "does a spider have?"),
    ("Can you tell me", "who wrote Romeo and Juliet?"),
    ("I would like to know", "how far away the sun is."),
    ("What should I cook", "for dinner tonight?"),
    ("Which planet", "is the largest one?"),
    ("Could you recommend", "a good book for the summer?"),
    ("How do I", "boil an egg properly?"),
    ("Where do penguins", "usually live?"),
    ("How tall is", "Mount Everest?"),
    ("Why do cats", "purr when they are happy?"),
    ("What is a good name", "for a little dog?"),
)
"""Questions cut in two by a mid-sentence pause (turn-taking scenario)."""

INTERRUPTIONS = (
    "Wait, stop, I have a question.",
    "Sorry, can I ask something else?",
    "Hold on, what about parking?",
    "Excuse me, where is the music room?",
    "Stop please, I need the opening hours.",
    "One moment, can I renew a book?",
    "Hang on, do you have study rooms?",
    "Sorry to cut in, how much is the fee?",
    "Wait a second, are you open on Sunday?",
    "Just a moment, I have a different question.",
)
"""What the caller says over the agent (barge-in scenario)."""

BACKCHANNELS = ("Hmm.", "Uh-huh.", "Mm-hmm.")
"""Voiced sounds without words that a caller makes while listening (barge-in scenario)."""

SHORT_QUESTIONS = (
    "Hello, how are you?",
    "What is your name?",
    "Who are you?",
    "Good morning!",
    "Can you hear me?",
)
"""Short openers for the soak scenario."""

GREETING = (
    "Welcome to the demo line of the city library. Our opening hours are nine to five on "
    "weekdays, and ten to two on Saturdays. You can borrow up to twelve books at a time, "
    "and renew them online or by phone. We also have a music room, a quiet study hall, "
    "and a small cafe on the ground floor. Children's story time is every Wednesday "
    "morning at ten, and the reading club meets on the first Monday of each month. "
    "Parking is free for the first two hours, and the bus stops right in front of the "
    "main entrance. If you need help finding a book, please ask at the front desk, "
    "where our staff will be happy to help you."
)
"""The barge-in server's canned greeting: a long reply with natural pauses to talk over."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """A clip the caller sends, with the sample offsets (16 kHz) of its speech."""

    text: str
    voice: str
    pcm: PCM
    speech_start: int
    """First sample of speech."""
    speech_end: int
    """One past the last sample of speech."""
    marks: tuple[int, ...] = ()
    """Extra sample offsets a scenario cares about (e.g. where a pause ends)."""

    @property
    def duration_s(self) -> float:
        """Length of the whole clip in seconds."""
        return self.pcm.size / PIPELINE_RATE

    @property
    def speech_s(self) -> float:
        """Length of the speech in seconds."""
        return (self.speech_end - self.speech_start) / PIPELINE_RATE


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` binary is on the PATH."""
    return shutil.which("espeak-ng") is not None


def voices() -> list[str]:
    """The voices to cycle through: Piper, then the espeak-ng ones when installed."""
    return [PIPER_VOICE, *(ESPEAK_VOICES if espeak_available() else ())]


def _espeak(text: str, voice: str) -> PCM:
    """espeak-ng speech of ``text`` at 16 kHz (cached under the test audio cache)."""
    key = hashlib.sha1(f"espeak|{voice}|{text}".encode()).hexdigest()[:16]
    path = CACHE_DIR / f"espeak-{key}.npy"
    if path.exists():
        cached: PCM = np.load(path)
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "165", "-w", str(wav), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        frame = read_wav(wav).to_mono()
    pcm = resample(frame.samples, frame.sample_rate, PIPELINE_RATE)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(f".{os.getpid()}.npy")
    np.save(tmp_path, pcm)
    tmp_path.replace(path)
    return pcm


def speech_bounds(pcm: PCM, threshold_dbfs: float = SPEECH_THRESHOLD_DBFS) -> tuple[int, int]:
    """Sample offsets of the first and one-past-last 10 ms window louder than the threshold."""
    win = PIPELINE_RATE // 100
    n = pcm.size // win
    if n == 0:
        return 0, 0
    frames = pcm[: n * win].astype(np.float64).reshape(n, win)
    rms = np.sqrt(np.mean(np.square(frames), axis=1))
    loud = np.nonzero(rms > 32768.0 * 10 ** (threshold_dbfs / 20))[0]
    if loud.size == 0:
        return 0, 0
    return int(loud[0]) * win, (int(loud[-1]) + 1) * win


def _normalise(pcm: PCM) -> PCM:
    peak = float(np.max(np.abs(pcm.astype(np.float64)))) if pcm.size else 0.0
    if peak <= 0:
        return pcm
    gain = 32767.0 * 10 ** (PEAK_DBFS / 20) / peak
    return np.clip(np.round(pcm.astype(np.float64) * gain), -32768, 32767).astype(np.int16)


def speech(text: str, voice: str) -> PCM:
    """Speech of ``text`` in ``voice``, trimmed to its speech bounds and peak-normalised.

    ``HUMAN_VOICE`` says only the texts of ``human_lines()``: the recording of that text.
    """
    if voice == HUMAN_VOICE:
        for line in human_lines():
            if line.text == text:
                return line.pcm
        raise ValueError(f"no selected human line says {text!r}")
    if voice == PIPER_VOICE:
        raw = speak(text)
    elif voice.startswith("espeak:"):
        raw = _espeak(text, voice.removeprefix("espeak:"))
    else:
        raise ValueError(f"unknown voice {voice!r}")
    start, end = speech_bounds(raw)
    return _normalise(raw[start:end])


def silence(seconds: float) -> PCM:
    """Digital silence."""
    return np.zeros(round(seconds * PIPELINE_RATE), np.int16)


def utterance(text: str, voice: str, lead_s: float = 0.3, tail_s: float = 0.0) -> Utterance:
    """``text`` spoken in ``voice`` with silence before and after."""
    body = speech(text, voice)
    lead = silence(lead_s)
    pcm = np.concatenate([lead, body, silence(tail_s)])
    return Utterance(text, voice, pcm, lead.size, lead.size + body.size)


def paused_utterance(
    first: str, second: str, voice: str, pause_s: float, lead_s: float = 0.3
) -> Utterance:
    """Two parts of one question with ``pause_s`` of silence between their speech.

    ``marks`` holds the end of the first part and the start of the second.
    """
    a, b = speech(first, voice), speech(second, voice)
    lead = silence(lead_s)
    pcm = np.concatenate([lead, a, silence(pause_s), b])
    end_a = lead.size + a.size
    start_b = end_a + round(pause_s * PIPELINE_RATE)
    return Utterance(f"{first} ... {second}", voice, pcm, lead.size, pcm.size, (end_a, start_b))


def cough(duration_s: float, seed: int, peak_dbfs: float = -8.0) -> Utterance:
    """A cough-like noise burst: band-limited noise under a fast-attack, decaying envelope.

    The noise is shaped to roughly 300-3000 Hz (where a cough has its
    energy) by a windowed-sinc band-pass; the envelope rises in 15 ms and
    decays exponentially to the end of the burst.
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * PIPELINE_RATE)
    noise = rng.standard_normal(n + 400)
    taps = np.arange(-200, 201)
    window = np.hamming(taps.size)

    def lowpass(cut_hz: float) -> npt.NDArray[np.float64]:
        fc = cut_hz / PIPELINE_RATE
        return np.asarray(2 * fc * np.sinc(2 * fc * taps) * window, dtype=np.float64)

    band = lowpass(3000.0) - lowpass(300.0)
    shaped = np.convolve(noise, band, mode="same")[200 : 200 + n]
    t = np.arange(n) / PIPELINE_RATE
    attack = np.minimum(1.0, t / 0.015)
    decay = np.exp(-t / max(duration_s / 3.0, 1e-3))
    burst = shaped * attack * decay
    burst *= 32767.0 * 10 ** (peak_dbfs / 20) / max(float(np.max(np.abs(burst))), 1e-9)
    body: PCM = burst.astype(np.int16)
    return Utterance(f"<cough {int(duration_s * 1000)} ms>", "noise", body, 0, body.size)


@dataclass(frozen=True, slots=True)
class HumanLine:
    """An Asterisk prompt as a caller's line: 16 kHz, trimmed to its speech, peak-normalised."""

    name: str
    """The prompt's file name (without ``.wav``)."""
    text: str
    """Its reference transcript."""
    pcm: PCM

    @property
    def speech_s(self) -> float:
        """Length of the speech in seconds."""
        return self.pcm.size / PIPELINE_RATE


_SENTENCE_END = re.compile(r"[.?!]")


def one_sentence(text: str) -> bool:
    """Whether ``text`` is one whole sentence: a capital first, one . ? or ! at the end."""
    text = text.strip()
    return (
        len(text) > 1
        and text[0].isupper()
        and text[-1] in ".?!"
        and not _SENTENCE_END.search(text[:-1])
    )


def fit_for_caller(text: str) -> bool:
    """A prompt transcript a caller may say: plain spoken English (no digits, keypad
    symbols or markup), at least ``HUMAN_MIN_WORDS`` words, one whole sentence."""
    return usable_transcript(text, HUMAN_MIN_WORDS) and one_sentence(text)


@functools.cache
def human_lines(n: int = HUMAN_QUESTIONS + HUMAN_INTERRUPTIONS) -> tuple[HumanLine, ...]:
    """The first ``n`` Asterisk prompts fit to be a caller's line, in a fixed order.

    Fit: ``fit_for_caller`` and ``HUMAN_SPEECH_S`` of speech once trimmed; of two
    recordings of the same words the first is kept. The order is
    ``bench.human_speech``'s (a hash of the prompt's name, spread over the prompt
    families), so the selection is the same on every machine with the same
    package. Raises ``bench.human_speech.HumanSpeechMissingError`` when the
    prompts are not installed (``scripts/install_test_audio.sh``).
    """
    shortest, longest = HUMAN_SPEECH_S
    lines: list[HumanLine] = []
    said: set[str] = set()
    for clip in load_clips(accept=fit_for_caller, max_seconds=longest + 2.0):
        start, end = speech_bounds(clip.pcm)
        words = normalize(clip.text)
        if not shortest <= (end - start) / PIPELINE_RATE <= longest or words in said:
            continue
        said.add(words)
        lines.append(HumanLine(clip.name, clip.text, _normalise(clip.pcm[start:end])))
        if len(lines) >= n:
            break
    return tuple(lines)


@dataclass(frozen=True, slots=True)
class CallerVoice:
    """Who speaks the caller's lines in the v2v and barge-in scenarios.

    The ``n``-th question (or interruption) is line ``n`` of its list, spoken
    in voice ``n`` of ``voices``, both cycling.
    """

    kind: str
    """One of ``CALLER_VOICES``."""
    voices: tuple[str, ...]
    questions: tuple[str, ...]
    interruptions: tuple[str, ...]
    sources: tuple[str, ...] = ()
    """Human speech: the prompts the questions, then the interruptions, come from."""

    @classmethod
    def synthetic(cls, voice_names: Sequence[str]) -> CallerVoice:
        """The scripted questions and interruptions in the synthetic voices."""
        return cls("synthetic", tuple(voice_names), QUESTIONS, INTERRUPTIONS)

    @classmethod
    def human(cls) -> CallerVoice:
        """The first ``HUMAN_QUESTIONS`` of ``human_lines()`` as questions, the next
        ``HUMAN_INTERRUPTIONS`` as interruptions (raises ``HumanSpeechMissingError``
        when the prompts are not installed; ``ValueError`` when too few fit)."""
        lines = human_lines()
        if len(lines) < HUMAN_QUESTIONS + HUMAN_INTERRUPTIONS:
            raise ValueError(
                f"only {len(lines)} Asterisk prompts fit as caller lines, "
                f"{HUMAN_QUESTIONS + HUMAN_INTERRUPTIONS} needed"
            )
        texts = tuple(line.text for line in lines)
        return cls(
            "human",
            (HUMAN_VOICE,),
            texts[:HUMAN_QUESTIONS],
            texts[HUMAN_QUESTIONS:],
            tuple(line.name for line in lines),
        )

    @classmethod
    def of(cls, kind: str, voice_names: Sequence[str]) -> CallerVoice:
        """The caller voice named ``kind`` (``voice_names``: the synthetic voices)."""
        if kind == "synthetic":
            return cls.synthetic(voice_names)
        if kind == "human":
            return cls.human()
        raise ValueError(f"unknown caller voice {kind!r} (one of {', '.join(CALLER_VOICES)})")

    def question(self, n: int) -> tuple[str, str]:
        """The ``n``-th question: its text and the voice that says it."""
        return self.questions[n % len(self.questions)], self.voices[n % len(self.voices)]

    def interruption(self, n: int) -> tuple[str, str]:
        """The ``n``-th interruption: its text and the voice that says it."""
        return self.interruptions[n % len(self.interruptions)], self.voices[n % len(self.voices)]


def scenario_key(name: str, kind: str) -> str:
    """The results key of scenario ``name`` with caller voice ``kind``: the synthetic
    voices keep the plain name (``v2v``), the others get a suffix (``v2v-human``)."""
    return name if kind == "synthetic" else f"{name}-{kind}"
