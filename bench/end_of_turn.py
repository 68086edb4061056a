"""Semantic end of turn: tune an end-of-turn model's thresholds, report on held-out speech.

::

    .venv/bin/python -m bench.end_of_turn [--model smart_turn|text] [--after-ms 200]
        [--incomplete-silence-ms 1200] [--json bench/results/end_of_turn.json]

Models: ``smart_turn`` hears the audio (Smart Turn v3.2, ``agent.endofturn``);
``text`` reads the pause's transcript (``agent.textturn``: the project's
Whisper transcribes the utterance up to the pause, as the listener's
speculative final does, and the chat model scores the words).

Speech: Debian's Asterisk prompts (one human speaker, 8 kHz telephone audio;
``scripts/install_test_audio.sh``) whose transcript ends a sentence (``.``,
``?`` or ``!``). A pause inside a clip counts as "inside a sentence" when the
word before it does not end a sentence of the transcript: Whisper's word
timestamps, aligned to the transcript's words, say which word that is. The
clips are split in two by a hash of their name: thresholds are tuned on one
half and reported on the other. Piper's voice speaking the wire benchmark's questions, whole and
cut in two by a 300-600 ms pause, is a second held-out set. Conversational
turns (``bench.turn_phrases``: requests, and answers to what the agent
asked, cut where people pause to think), spoken by Piper whole and with a
300-600 ms pause, make two more sets, a tuning half and a held-out half (and
the same lines with a 0.8-1 s thinking pause, which the 700 ms timer alone
always cuts, two more: ``long_pause_*``, tuned with the first half): the
Asterisk prompts are menu announcements, whose internal pauses mostly fall
after complete phrases ("press 1 for sales,"), which no reader of words can
tell from an end.

Thresholds are tuned on the human tuning half for ``smart_turn`` and on the
conversational tuning half for ``text`` (``--tune-on`` chooses).

Every figure comes from the project's own parts: Silero VAD windows, the
real ``TurnDetector`` and the real ``SmartTurn`` model. Each clip (with 0.3 s
of silence before and 2 s after) runs through the detector; when it asks the
model, the score is computed on the detector's utterance audio (or its
transcript) and handed back after the measured inference time (rounded up
to VAD windows; for ``text``, plus what is left of the transcription when
the check comes), as the listener does in a live call. Printed:

* AUC of the model's score: "not done" = the check inside a VAD pause of
  300-600 ms, "done" = the check after the clip's last word;
* per set, with and without the model: early cut-offs (a turn ended before
  the clip's last word) and the end-of-turn delay (VAD end of the last
  word -> turn ended; median, p90, mean);
* the per-inference cost (features + ONNX, one thread);
* for comparison, the AUC of cuts at arbitrary points of speech (40-70 % into
  each held-out clip, mid-word as often as not, with ``after_ms`` of silence)
  against the clips' true ends: what the model separates when the "not done"
  side is not a natural pause.

Thresholds are chosen on the tuning set: fewest early cut-offs first, then
the lowest mean delay.
"""

from __future__ import annotations

import abc
import argparse
import difflib
import hashlib
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import AgentConfig
from agent.endofturn import SmartTurn
from agent.textturn import TextEndOfTurn
from agent.turns import EndOfTurnCheck, TurnDetector, TurnEvent, TurnEventKind, TurnSettings
from agent.vad import WINDOW_S, WINDOW_SAMPLES, GateSettings, SileroVAD
from bench import human_speech, turn_phrases
from media.frames import PCM, PIPELINE_RATE, FloatPCM

LEAD_S = 0.3
TAIL_S = 2.0
RECORD_SILENCE_MS = 10_000
"""Timer of the recording pass: long enough that no pause inside a clip ends its turn."""
PAUSE_RANGE_MS = (300.0, 600.0)
"""Internal pauses whose check is a "not done" sample."""
TRADE_OFF = (0.9, 0.95, 0.97, 0.98)
"""Complete thresholds whose held-out cost is printed besides the chosen one."""
COMPLETE_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)
INCOMPLETE_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
TEXT_COMPLETE_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.7)
TEXT_INCOMPLETE_GRID = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.03)
TEXT_TRADE_OFF = (0.1, 0.2, 0.3, 0.4)
"""The text model's scores are a next-token probability: small, spread over decades."""

_SENTENCE_MARK = re.compile(r"[.?!]")
_MARKUP = re.compile(r"[\[\]<>(){}]")


def log(message: str) -> None:
    """Progress on stderr (stdout keeps the summary)."""
    print(f"[end_of_turn {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ends_sentence(text: str) -> bool:
    """A transcript of whole sentences: no markup, the last one ends with . ? or !."""
    text = text.strip()
    return bool(text) and not _MARKUP.search(text) and text[-1] in ".?!" and not text.endswith("..")


def reference_words(text: str) -> list[tuple[str, bool]]:
    """The transcript's words, normalised, each with whether it ends a sentence."""
    out: list[tuple[str, bool]] = []
    for token in text.split():
        words = human_speech.normalize(token).split()
        for i, word in enumerate(words):
            out.append((word, i == len(words) - 1 and bool(_SENTENCE_MARK.search(token[-1:]))))
    return out


class SentenceAligner:
    """Which heard words end a sentence: Whisper word timestamps aligned to the transcript."""

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from agent.providers.whisper import default_model_path

        self._model = WhisperModel(str(default_model_path()), device="cpu", cpu_threads=1)

    def words(self, pcm: PCM, text: str) -> list[tuple[float, bool]]:
        """(start in seconds, ends a sentence) of each word Whisper heard in ``pcm``."""
        audio = pcm.astype(np.float32) / 32768.0
        segments, _ = self._model.transcribe(
            audio, language="en", beam_size=1, word_timestamps=True, vad_filter=False
        )
        heard: list[tuple[float, str]] = []
        for segment in segments:
            for word in segment.words or ():
                heard += [(word.start, w) for w in human_speech.normalize(word.word).split()]
        ref = reference_words(text)
        matcher = difflib.SequenceMatcher(a=[w for _, w in heard], b=[w for w, _ in ref])
        ends = [False] * len(heard)
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                ends[block.a + k] = ref[block.b + k][1]
        return [(start, end) for (start, _), end in zip(heard, ends, strict=True)]


@dataclass(slots=True)
class Case:
    """One clip as the detector hears it: audio, VAD probabilities, where speech really ends."""

    name: str
    audio: FloatPCM
    probs: list[float]
    words: list[tuple[float, bool]] = field(default_factory=list)
    """(stream time a word starts, whether it ends a sentence); empty: one sentence."""
    true_end: float = 0.0
    """Stream time where the VAD heard the last word end (set by the recording pass)."""
    pauses_ms: list[float] = field(default_factory=list)
    """Internal VAD pauses (speech end -> speech back)."""
    not_done: list[float] = field(default_factory=list)
    """Model scores at the checks inside 300-600 ms pauses."""
    done: float | None = None
    """Model score at the check after the last word."""
    agent_said: str = ""
    """What the agent said before this turn (the context a text model reads)."""


def make_case(name: str, pcm: PCM, vad: SileroVAD) -> Case:
    """``pcm`` with silence around it, and its Silero probabilities."""
    audio = np.concatenate(
        [
            np.zeros(round(LEAD_S * PIPELINE_RATE), np.float32),
            pcm.astype(np.float32) / 32768.0,
            np.zeros(round(TAIL_S * PIPELINE_RATE), np.float32),
        ]
    )
    n = audio.size // WINDOW_SAMPLES
    audio = audio[: n * WINDOW_SAMPLES]
    return Case(name, audio, vad.stream().process(audio))


class Scorer(abc.ABC):
    """A model with a cache: a check is scored once however many settings replay it."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, float, float], float] = {}

    def __call__(self, case: Case, event: TurnEvent, det: TurnDetector) -> float:
        key = (case.name, round(event.speech_start, 4), round(event.time, 4))
        score = self._cache.get(key)
        if score is None:
            score = self.score(case, det)
            self._cache[key] = score
        return score

    @abc.abstractmethod
    def score(self, case: Case, det: TurnDetector) -> float:
        """The model's score of ``det``'s utterance at a check (blocking)."""

    @abc.abstractmethod
    def score_audio(self, case: Case, audio: FloatPCM) -> float:
        """The model's score of ``audio`` (speech, then the silence so far)."""

    @abc.abstractmethod
    def cost_ms(self, audio: FloatPCM, runs: int = 30) -> list[float]:
        """Wall time of ``runs`` inferences on ``audio``, after one warm-up."""


def _timed(work: Callable[[], object], runs: int) -> list[float]:
    work()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        out.append((time.perf_counter() - t0) * 1000)
    return out


class AudioScorer(Scorer):
    """Smart Turn: hears the utterance with its silence so far."""

    def __init__(self, model: SmartTurn) -> None:
        super().__init__()
        self.model = model

    def score(self, case: Case, det: TurnDetector) -> float:
        return self.model.score(det.utterance_audio())

    def score_audio(self, case: Case, audio: FloatPCM) -> float:
        return self.model.score(audio)

    def cost_ms(self, audio: FloatPCM, runs: int = 30) -> list[float]:
        """Features + ONNX, one thread."""
        return _timed(lambda: self.model.score(audio), runs)


class TextScorer(Scorer):
    """The text model: Whisper transcribes the utterance up to the pause, the chat
    model reads the words after what the agent said."""

    def __init__(self, model: TextEndOfTurn) -> None:
        from agent.providers.whisper import WhisperSTT

        super().__init__()
        self.model = model
        self.stt = WhisperSTT()
        self.stt_ms: list[float] = []

    def _words(self, audio: FloatPCM) -> str:
        t0 = time.perf_counter()
        words = self.stt.transcribe_blocking(audio).text
        self.stt_ms.append((time.perf_counter() - t0) * 1000)
        return words

    def score(self, case: Case, det: TurnDetector) -> float:
        words = self._words(det.utterance_audio(until_speech_end=True))
        return self.model.score_text(words, case.agent_said)

    def score_audio(self, case: Case, audio: FloatPCM) -> float:
        return self.model.score_text(self._words(audio), case.agent_said)

    def cost_ms(self, audio: FloatPCM, runs: int = 30) -> list[float]:
        """The chat model on a transcript (the transcription is timed apart)."""
        words = self.stt.transcribe_blocking(audio).text or "what is the capital of france"
        return _timed(lambda: self.model.score_text(words, "How can I help you?"), runs)


def replay(
    case: Case,
    turn: TurnSettings,
    gate: GateSettings,
    scorer: Scorer,
    latency_windows: int,
) -> list[TurnEvent]:
    """Run the real detector over the clip; scores come back ``latency_windows`` later."""
    det = TurnDetector(turn, gate)
    events: list[TurnEvent] = []
    pending: tuple[int, float, float] | None = None  # (deliver at window, asked_at, score)
    for i, prob in enumerate(case.probs):
        if pending is not None and i >= pending[0]:
            events += det.end_of_turn_score(pending[2], asked_at=pending[1])
            pending = None
        window = case.audio[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
        for event in det.process(window, prob):
            events.append(event)
            if event.kind is TurnEventKind.END_OF_TURN_CHECK:
                score = scorer(case, event, det)
                pending = (i + 1 + latency_windows, event.time, score)
            elif event.kind in (TurnEventKind.SPEECH_RESUMED, TurnEventKind.TURN_ENDED):
                pending = None  # the listener cancels the inference
    return events


def record(case: Case, after_ms: int, gate: GateSettings, scorer: Scorer) -> None:
    """The recording pass: one turn over the whole clip; pauses, checks and their scores."""
    check = EndOfTurnCheck(after_ms=after_ms, incomplete_silence_ms=RECORD_SILENCE_MS)
    turn = TurnSettings(end_of_turn_silence_ms=RECORD_SILENCE_MS, check=check)
    det = TurnDetector(turn, gate)
    paused_at: float | None = None
    checks: list[tuple[float, float]] = []  # (speech_end, score)
    onset_back = gate.onset_windows * WINDOW_S
    for i, prob in enumerate(case.probs):
        window = case.audio[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
        for event in det.process(window, prob):
            if event.kind is TurnEventKind.SPEECH_PAUSED:
                paused_at = event.speech_end
            elif event.kind is TurnEventKind.SPEECH_RESUMED and paused_at is not None:
                length_ms = (event.time - onset_back - paused_at) * 1000
                before = [ends for start, ends in case.words if start < paused_at]
                if before and before[-1]:
                    continue  # a pause between sentences: neither "done" nor "not done"
                case.pauses_ms.append(length_ms)
                low, high = PAUSE_RANGE_MS
                for speech_end, score in checks:
                    if speech_end == paused_at and low <= length_ms <= high:
                        case.not_done.append(score)
            elif event.kind is TurnEventKind.END_OF_TURN_CHECK:
                assert event.speech_end is not None
                checks.append((event.speech_end, scorer(case, event, det)))
    if paused_at is not None:
        case.true_end = paused_at
        last = [score for speech_end, score in checks if speech_end == paused_at]
        case.done = last[0] if last else None


def arbitrary_cuts(cases: Iterable[Case], after_ms: int, scorer: Scorer) -> list[float]:
    """Scores of each clip cut 40-70 % into its speech (a fixed point per clip)."""
    scores: list[float] = []
    lead = round(LEAD_S * PIPELINE_RATE)
    for case in cases:
        end = round(case.true_end * PIPELINE_RATE)
        if end - lead < PIPELINE_RATE:  # under a second of speech
            continue
        fraction = 0.4 + 0.3 * hashlib.sha1(case.name.encode()).digest()[0] / 255
        cut = lead + round((end - lead) * fraction)
        silence = np.zeros(round(after_ms / 1000 * PIPELINE_RATE), np.float32)
        scores.append(scorer.score_audio(case, np.concatenate([case.audio[:cut], silence])))
    return scores


def auc(done: Sequence[float], not_done: Sequence[float]) -> float | None:
    """Probability that a "done" check scores above a "not done" one (ties count half)."""
    if not done or not not_done:
        return None
    wins = sum((d > n) + 0.5 * (d == n) for d in done for n in not_done)
    return wins / (len(done) * len(not_done))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the detector made of a set of clips under one setting."""

    clips: int
    cut_off: int
    delays_ms: tuple[float, ...]
    checks: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures."""
        d = sorted(self.delays_ms)
        return {
            "clips": self.clips,
            "early_cut_offs": self.cut_off,
            "delay_median_ms": round(statistics.median(d)) if d else None,
            "delay_p90_ms": round(d[min(len(d) - 1, math.ceil(0.9 * len(d)) - 1)]) if d else None,
            "delay_mean_ms": round(statistics.fmean(d)) if d else None,
            "model_checks": self.checks,
        }


def evaluate(
    cases: Iterable[Case],
    turn: TurnSettings,
    gate: GateSettings,
    scorer: Scorer,
    latency_windows: int,
) -> Outcome:
    """Early cut-offs and end-of-turn delays of ``cases`` under ``turn``."""
    clips = cut = checks = 0
    delays: list[float] = []
    for case in cases:
        if case.true_end <= 0:
            continue
        clips += 1
        events = replay(case, turn, gate, scorer, latency_windows)
        checks += sum(e.kind is TurnEventKind.END_OF_TURN_CHECK for e in events)
        ended = [e for e in events if e.kind is TurnEventKind.TURN_ENDED]
        if any(e.speech_end is not None and e.speech_end < case.true_end - 1e-6 for e in ended):
            cut += 1
            continue
        final = [e for e in ended if e.speech_end == case.true_end]
        if final:
            delays.append((final[0].time - case.true_end) * 1000)
    return Outcome(clips, cut, tuple(delays), checks)


def tune(
    cases: list[Case],
    base: TurnSettings,
    gate: GateSettings,
    scorer: Scorer,
    latency_windows: int,
    after_ms: int,
    incomplete_silence_ms: int,
    grids: tuple[Sequence[float], Sequence[float]] = (COMPLETE_GRID, INCOMPLETE_GRID),
) -> tuple[EndOfTurnCheck, Outcome]:
    """The thresholds with the fewest early cut-offs, then the lowest mean delay."""
    best: tuple[tuple[int, float], EndOfTurnCheck, Outcome] | None = None
    for high in grids[0]:
        for low in grids[1]:
            if low > high:
                continue
            check = EndOfTurnCheck(after_ms, high, low, incomplete_silence_ms)
            out = evaluate(cases, replace(base, check=check), gate, scorer, latency_windows)
            key = (out.cut_off, statistics.fmean(out.delays_ms) if out.delays_ms else math.inf)
            if best is None or key < best[0]:
                best = (key, check, out)
    assert best is not None
    return best[1], best[2]


def human_cases(vad: SileroVAD) -> tuple[list[Case], list[Case]]:
    """Asterisk prompts, split in a tuning and a held-out half by name hash."""
    clips = human_speech.load_clips(accept=ends_sentence)
    aligner = SentenceAligner()
    tune_set: list[Case] = []
    held_out: list[Case] = []
    for clip in clips:
        case = make_case(clip.name, clip.pcm, vad)
        if len(_SENTENCE_MARK.findall(clip.text)) > 1:
            case.words = [(t + LEAD_S, end) for t, end in aligner.words(clip.pcm, clip.text)]
        half = hashlib.sha1(f"eot|{clip.name}".encode()).digest()[0] % 2
        (tune_set if half == 0 else held_out).append(case)
    return tune_set, held_out


def piper_cases(vad: SileroVAD) -> list[Case]:
    """Piper's voice: each split question with a 300-600 ms pause, and each whole question."""
    from bench.wire.scenarios.turns import pauses
    from bench.wire.speech import PIPER_VOICE, QUESTIONS, SPLIT_QUESTIONS, silence, speech

    cases: list[Case] = []
    for (first, second), pause_ms in zip(
        SPLIT_QUESTIONS, pauses(len(SPLIT_QUESTIONS)), strict=True
    ):
        pcm = np.concatenate(
            [speech(first, PIPER_VOICE), silence(pause_ms / 1000), speech(second, PIPER_VOICE)]
        )
        cases.append(make_case(f"split:{first} ... {second}", pcm, vad))
    for question in QUESTIONS:
        cases.append(make_case(f"whole:{question}", speech(question, PIPER_VOICE), vad))
    return cases


LONG_PAUSE_S = (0.8, 1.0)
"""Thinking pauses longer than the 700 ms timer (the timer alone cuts every one)."""


def conversational_cases(
    vad: SileroVAD,
) -> tuple[list[Case], list[Case], list[Case], list[Case]]:
    """``bench.turn_phrases`` in Piper's voice, each line with a 300-600 ms pause and
    whole (a tuning half and a held-out half), then each line with a long pause
    (``LONG_PAUSE_S``, the same halves)."""
    from bench.wire.scenarios.turns import pauses
    from bench.wire.speech import PIPER_VOICE, silence, speech

    out: tuple[list[Case], list[Case], list[Case], list[Case]] = ([], [], [], [])
    for half, lines in enumerate(turn_phrases.split()):
        for i, ((agent_said, before, after), pause_ms) in enumerate(
            zip(lines, pauses(len(lines)), strict=True)
        ):
            first, second = speech(before, PIPER_VOICE), speech(after, PIPER_VOICE)
            long_s = LONG_PAUSE_S[i % len(LONG_PAUSE_S)]
            clips = (
                (half, f"split:{before} ... {after}", [first, silence(pause_ms / 1000), second]),
                (half, f"whole:{before} {after}", [speech(f"{before} {after}", PIPER_VOICE)]),
                (2 + half, f"long:{before} ... {after}", [first, silence(long_s), second]),
            )
            for index, name, parts in clips:
                case = make_case(name, np.concatenate(parts), vad)
                case.agent_said = agent_said
                out[index].append(case)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.end_of_turn", description=__doc__)
    p.add_argument("--model", choices=("smart_turn", "text"), default="smart_turn")
    p.add_argument(
        "--tune-on",
        choices=("human", "conversation"),
        default=None,
        help="the tuning set (default: human for smart_turn, conversation for text)",
    )
    p.add_argument("--after-ms", type=int, default=200, help="silence before the model is asked")
    p.add_argument("--incomplete-silence-ms", type=int, default=1200)
    p.add_argument("--json", type=Path, default=None, help="write the results here too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if not human_speech.available():
        print(human_speech.INSTALL_HINT, file=sys.stderr)
        return 2
    config = AgentConfig.load()
    gate = config.vad.to_settings()
    base = config.turn.to_settings(model=False)
    vad = SileroVAD()
    scorer: Scorer
    if args.model == "text":
        text_turn = config.turn.text_turn
        scorer = TextScorer(
            TextEndOfTurn(text_turn.model_path, context_chars=text_turn.context_chars)
        )
    else:
        scorer = AudioScorer(SmartTurn(config.turn.smart_turn.model_path))
    text = isinstance(scorer, TextScorer)
    tune_on = args.tune_on or ("conversation" if args.model == "text" else "human")

    log("loading speech and running the VAD")
    human_tune, human_held_out = human_cases(vad)
    conversation_tune, conversation_held_out, long_tune, long_held_out = conversational_cases(vad)
    piper = piper_cases(vad)
    sets = {
        "human_tune": human_tune,
        "human_held_out": human_held_out,
        "conversation_tune": conversation_tune,
        "conversation_held_out": conversation_held_out,
        "long_pause_tune": long_tune,
        "long_pause_held_out": long_held_out,
        "piper": piper,
    }
    tune_set = sets[f"{tune_on}_tune"]
    held_out = sets[f"{tune_on}_held_out"]
    if tune_on == "conversation":  # the long pauses' halves are tuned and held out with it
        tune_set = tune_set + long_tune
    sample = held_out[0].audio if held_out else np.zeros(PIPELINE_RATE, np.float32)
    costs = sorted(scorer.cost_ms(sample))
    cost_p50 = statistics.median(costs)

    log(f"recording pauses and scores: {sum(len(c) for c in sets.values())} clips")
    for cases in sets.values():
        for case in cases:
            record(case, args.after_ms, gate, scorer)
    answer_ms = cost_p50
    stt_p50 = None
    if isinstance(scorer, TextScorer) and scorer.stt_ms:
        # the speculative transcription starts when the VAD hears the pause (offset
        # windows after the speech end); what is left of it when the check comes delays
        # the answer
        stt_p50 = statistics.median(scorer.stt_ms)
        paused_ms = gate.offset_windows * WINDOW_S * 1000
        answer_ms += max(0.0, stt_p50 + paused_ms - args.after_ms)
    latency_windows = math.ceil(answer_ms / 1000 / WINDOW_S)
    log(f"inference {cost_p50:.1f} ms (p50) -> answers {latency_windows} windows after the check")

    def auc_of(cases: list[Case]) -> dict[str, Any]:
        done = [c.done for c in cases if c.done is not None]
        not_done = [s for c in cases for s in c.not_done]
        value = auc(done, not_done)
        return {
            "auc": None if value is None else round(value, 3),
            "done_checks": len(done),
            "not_done_checks": len(not_done),
            "done_score_median": round(statistics.median(done), 3) if done else None,
            "not_done_score_median": round(statistics.median(not_done), 3) if not_done else None,
        }

    log("tuning the thresholds")
    check, tuned = tune(
        tune_set,
        base,
        gate,
        scorer,
        latency_windows,
        args.after_ms,
        args.incomplete_silence_ms,
        (TEXT_COMPLETE_GRID, TEXT_INCOMPLETE_GRID) if text else (COMPLETE_GRID, INCOMPLETE_GRID),
    )
    with_model = replace(base, check=check)
    results: dict[str, Any] = {
        "model": args.model,
        "tuned_on": f"{tune_on}_tune",
        "inference_ms": {
            "p50": round(cost_p50, 1),
            "p90": round(costs[math.ceil(0.9 * len(costs)) - 1], 1),
            "runs": len(costs),
            "stt_p50": None if stt_p50 is None else round(stt_p50, 1),
        },
        "latency_windows": latency_windows,
        "end_of_turn_silence_ms": base.end_of_turn_silence_ms,
        "chosen": {
            "check_after_ms": check.after_ms,
            "complete_threshold": check.complete_threshold,
            "incomplete_threshold": check.incomplete_threshold,
            "incomplete_silence_ms": check.incomplete_silence_ms,
        },
        "sets": {},
    }
    for name, cases in sets.items():
        done = [c.done for c in cases if c.done is not None]
        results["sets"][name] = {
            **auc_of(cases),
            # finished turns the chosen threshold ends at the check, and those it stretches
            "done_ended_at_check": round(
                sum(d >= check.complete_threshold for d in done) / len(done), 3
            )
            if done
            else None,
            "done_stretched": sum(d < check.incomplete_threshold for d in done),
            "internal_pauses_ms": sorted(round(p) for c in cases for p in c.pauses_ms),
            "without_model": evaluate(cases, base, gate, scorer, latency_windows).summary(),
            "with_model": evaluate(cases, with_model, gate, scorer, latency_windows).summary(),
        }
    if tuned.clips:
        results["sets"][f"{tune_on}_tune"]["with_model_at_tuning"] = tuned.summary()
    results["held_out_trade_off"] = {
        str(high): {
            name: evaluate(
                cases,
                replace(base, check=replace(check, complete_threshold=high)),
                gate,
                scorer,
                latency_windows,
            ).summary()
            for name, cases in (
                ("human", human_held_out),
                ("conversation", conversation_held_out),
                ("long_pause", long_held_out),
                ("piper", piper),
            )
        }
        for high in (TEXT_TRADE_OFF if text else TRADE_OFF)
        if high >= check.incomplete_threshold
    }
    cuts = arbitrary_cuts(human_held_out, args.after_ms, scorer)
    ends = [c.done for c in human_held_out if c.done is not None]
    value = auc(ends, cuts)
    results["human_held_out_arbitrary_cuts"] = {
        "auc": None if value is None else round(value, 3),
        "cuts": len(cuts),
        "cut_score_median": round(statistics.median(cuts), 3) if cuts else None,
    }
    print_summary(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    return 0


def print_summary(results: dict[str, Any]) -> None:
    """The figures, one set per block."""
    chosen = results["chosen"]
    cost = results["inference_ms"]
    what = "chat model on the transcript" if results["model"] == "text" else "features + ONNX"
    print(f"inference: {cost['p50']} ms p50, {cost['p90']} ms p90 ({what}, 1 thread)")
    if cost.get("stt_p50") is not None:
        print(f"transcription of the utterance up to the pause: {cost['stt_p50']} ms p50")
    print(
        f"chosen on {results['tuned_on']}: complete >= {chosen['complete_threshold']}, "
        f"incomplete < {chosen['incomplete_threshold']} -> {chosen['incomplete_silence_ms']} ms; "
        f"asked at {chosen['check_after_ms']} ms; timer {results['end_of_turn_silence_ms']} ms"
    )
    cuts = results["human_held_out_arbitrary_cuts"]
    print(
        f"human_held_out, arbitrary cuts instead of pauses: AUC {cuts['auc']} "
        f"({cuts['cuts']} cuts, median score {cuts['cut_score_median']})"
    )
    for name, data in results["sets"].items():
        print(
            f"\n{name}: AUC {data['auc']} (done {data['done_checks']}, "
            f"not done {data['not_done_checks']}; median scores "
            f"{data['done_score_median']} / {data['not_done_score_median']}; finished turns "
            f"ended at the check {data['done_ended_at_check']}, stretched "
            f"{data['done_stretched']})"
        )
        for label in ("without_model", "with_model"):
            s = data[label]
            print(
                f"  {label:14} clips {s['clips']:3}  early cut-offs {s['early_cut_offs']:2}  "
                f"delay median {s['delay_median_ms']} ms  p90 {s['delay_p90_ms']} ms  "
                f"mean {s['delay_mean_ms']} ms"
            )
    print("\nheld-out cost of lower complete thresholds (incomplete as chosen):")
    for high, by_set in results["held_out_trade_off"].items():
        for name, s in by_set.items():
            print(
                f"  complete >= {high:5} {name:6} early cut-offs {s['early_cut_offs']:2}/"
                f"{s['clips']:3}  delay median {s['delay_median_ms']} ms  "
                f"p90 {s['delay_p90_ms']} ms"
            )


if __name__ == "__main__":
    raise SystemExit(main())
