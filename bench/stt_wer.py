"""Word error rate and latency of the local Whisper STT: padded vs short encoder.

Run::

    .venv/bin/python -m bench.stt_wer [--n 200] [--json out.json]

Three measurements per encoder path:

* WER on human speech: Asterisk's English prompts (8 kHz telephone audio,
  one human speaker, see ``bench.human_speech``; ``--n 0`` uses every usable
  clip), with ``scripts/install_test_audio.sh`` installing them;
* WER on Piper-synthesized sentences (``tests.speech.speak``);
* STT wall time: median and p90 over the human clips, and the median of
  repeated runs on ~1, ~3 and ~6 s utterances.

WER is corpus-level (all errors over all reference words) on normalized text
(``bench.human_speech.normalize``). Prints JSON, then a plain table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from agent.providers.whisper import Encoder, WhisperSettings, WhisperStats, WhisperSTT
from bench.human_speech import INSTALL_HINT, Clip, HumanSpeechMissingError, load_clips, normalize
from media.frames import PCM, PIPELINE_RATE, int16_to_float

PIPER_SENTENCES = (
    "What time does the pharmacy open tomorrow morning?",
    "Please turn the music down a little bit.",
    "I would like to book a table for two people tonight.",
    "Can you tell me the weather forecast for this weekend?",
    "Yes, please.",
    "No, thank you.",
    "Cancel my appointment on Friday afternoon.",
    "How much does a return ticket to the airport cost?",
    "My order still has not arrived, and it is already three days late.",
    "Could you repeat that more slowly?",
    "I need to speak with someone about my bill.",
    "Set a reminder to call my sister at six in the evening.",
    "Where is the nearest train station?",
    "The package was left outside the wrong door.",
    "Hello, is anybody there?",
    "I'm sorry, I didn't catch the last part.",
    "Please send the receipt to my email address.",
    "Which platform does the next train to the city leave from?",
    "We are running about ten minutes late.",
    "That sounds great, let's do it.",
    "Is the restaurant open on public holidays?",
    "Can I change the delivery address for my order?",
    "Thanks, that's all I needed today.",
    "Please read me the last message again.",
)

TIMING_SENTENCES = {
    "1s": "Yes, please.",
    "3s": "Could you book a table for two people tonight, please?",
    "6s": (
        "I would like to change my delivery address, because I am moving to a new "
        "apartment next week, on Monday morning."
    ),
}


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER of normalized texts (an empty hypothesis counts as all deletions)."""
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        return float("nan")
    errors = 0
    words = 0
    for ref, hyp in pairs:
        out = jiwer.process_words(ref, hyp if hyp else "")
        errors += out.substitutions + out.deletions + out.insertions
        words += out.substitutions + out.deletions + out.hits
    return errors / words


def run_set(
    stt: WhisperSTT, items: Sequence[tuple[str, PCM, str]]
) -> tuple[list[dict[str, Any]], float, list[float]]:
    """Transcribe ``(name, pcm, reference)`` items; per-item rows, WER and times."""
    rows: list[dict[str, Any]] = []
    times: list[float] = []
    for name, pcm, ref in items:
        result = stt.transcribe_blocking(int16_to_float(pcm))
        times.append(result.processing_s)
        rows.append(
            {
                "name": name,
                "ref": normalize(ref),
                "hyp": normalize(result.text),
                "audio_s": round(result.audio_s, 3),
                "stt_s": round(result.processing_s, 4),
                "confidence": round(result.confidence, 3),
            }
        )
    score = wer([r["ref"] for r in rows], [r["hyp"] for r in rows])
    return rows, score, times


def timing(stt: WhisperSTT, speech: dict[str, PCM], repeats: int) -> dict[str, dict[str, float]]:
    """Median STT time of each fixed utterance over ``repeats`` runs."""
    out: dict[str, dict[str, float]] = {}
    for label, pcm in speech.items():
        audio = int16_to_float(pcm)
        runs = [stt.transcribe_blocking(audio).processing_s for _ in range(repeats)]
        out[label] = {
            "audio_s": round(audio.size / stt.sample_rate, 2),
            "median_s": round(statistics.median(runs), 4),
        }
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings to typed ``WhisperSettings`` overrides."""
    defaults = WhisperSettings()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not hasattr(defaults, key) or key == "model_path":
            raise SystemExit(f"--set expects FIELD=VALUE with a WhisperSettings field: {item!r}")
        current = getattr(defaults, key)
        value: Any
        if raw.lower() == "none":
            value = None
        elif isinstance(current, bool):
            value = raw.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            value = int(raw)
        elif isinstance(current, float) or current is None:
            value = float(raw)
        else:
            value = raw
        out[key] = value
    return out


def trim_silence(pcm: PCM, floor_dbfs: float = -40.0, margin_s: float = 0.05) -> PCM:
    """Cut leading and trailing 10 ms blocks quieter than ``floor_dbfs`` (keeps a margin)."""
    block = PIPELINE_RATE // 100
    n = pcm.size // block
    if n == 0:
        return pcm
    blocks = pcm[: n * block].astype(np.float64).reshape(n, block)
    level = 20 * np.log10(np.sqrt(np.mean(blocks**2, axis=1)) / 32768.0 + 1e-12)
    loud = np.flatnonzero(level > floor_dbfs)
    if loud.size == 0:
        return pcm
    margin = int(margin_s * PIPELINE_RATE)
    start = max(0, int(loud[0]) * block - margin)
    end = min(pcm.size, (int(loud[-1]) + 1) * block + margin)
    return pcm[start:end]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def bench_encoder(
    settings: WhisperSettings,
    human: Sequence[Clip],
    piper: Sequence[tuple[str, PCM, str]],
    timing_speech: dict[str, PCM],
    *,
    repeats: int,
) -> dict[str, Any]:
    """All figures for one configuration of the STT."""
    t0 = time.perf_counter()
    stt = WhisperSTT(settings)
    load_s = time.perf_counter() - t0
    try:
        stt.transcribe_blocking(int16_to_float(piper[0][1]))  # warm-up
        stt.stats = WhisperStats()
        human_rows, human_wer, human_times = run_set(stt, [(c.name, c.pcm, c.text) for c in human])
        piper_rows, piper_wer, piper_times = run_set(stt, piper)
        fixed = timing(stt, timing_speech, repeats)
        stats = asdict(stt.stats)
    finally:
        stt.close()
    return {
        "encoder": settings.encoder,
        "settings": {k: str(v) for k, v in asdict(settings).items() if k != "model_path"},
        "load_s": round(load_s, 3),
        "human": {
            "clips": len(human_rows),
            "words": sum(len(r["ref"].split()) for r in human_rows),
            "wer": round(human_wer, 4),
            "median_s": round(statistics.median(human_times), 4) if human_times else None,
            "p90_s": round(percentile(human_times, 90), 4),
            "empty": sum(1 for r in human_rows if not r["hyp"]),
        },
        "piper": {
            "clips": len(piper_rows),
            "wer": round(piper_wer, 4),
            "median_s": round(statistics.median(piper_times), 4),
            "p90_s": round(percentile(piper_times, 90), 4),
        },
        "utterances": fixed,
        "stats": stats,
        "rows": {"human": human_rows, "piper": piper_rows},
    }


def table(results: Sequence[dict[str, Any]]) -> str:
    """A plain-text summary table of ``bench_encoder`` results."""
    labels = list(TIMING_SENTENCES)
    head = (
        f"{'encoder':8} {'human WER':>9} {'med s':>6} {'p90 s':>6} "
        f"{'piper WER':>9} {'med s':>6} "
        + " ".join(f"{lab + ' s':>6}" for lab in labels)
        + "  short kept / fallbacks"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        h, p, u, st = res["human"], res["piper"], res["utterances"], res["stats"]
        fb = ", ".join(f"{k}={v}" for k, v in sorted(st["fallbacks"].items())) or "-"
        lines.append(
            f"{res['encoder']:8} {100 * h['wer']:8.1f}% {h['median_s']:6.3f} {h['p90_s']:6.3f} "
            f"{100 * p['wer']:8.1f}% {p['median_s']:6.3f} "
            + " ".join(f"{u[lab]['median_s']:6.3f}" for lab in labels)
            + f"  {st['short']} / {fb}"
        )
    lines.append(
        f"human: {results[0]['human']['clips']} clips, {results[0]['human']['words']} words; "
        f"piper: {results[0]['piper']['clips']} sentences; utterances: "
        + ", ".join(f"{lab}={results[0]['utterances'][lab]['audio_s']}s" for lab in labels)
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="human clips (0: all usable)")
    parser.add_argument("--min-words", type=int, default=1, help="skip shorter references")
    parser.add_argument("--encoders", default="padded,short", help="comma-separated paths")
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="runs per fixed utterance")
    parser.add_argument("--beam", type=int, default=None, help="beam size of finals")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a WhisperSettings field (repeatable), e.g. short_pad_s=0.5",
    )
    parser.add_argument(
        "--trim-silence",
        action="store_true",
        help="cut the human clips' leading/trailing silence (tight VAD-like cuts)",
    )
    parser.add_argument("--json", type=Path, help="also write the full results here")
    parser.add_argument("--rows", action="store_true", help="include per-clip rows in stdout")
    args = parser.parse_args(argv)

    try:
        human = load_clips(args.n or None, min_words=args.min_words)
    except HumanSpeechMissingError:
        print(f"human speech is missing: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from tests.speech import speak

    piper = [(f"piper-{i:02d}", speak(text), text) for i, text in enumerate(PIPER_SENTENCES)]
    timing_speech = {label: speak(text) for label, text in TIMING_SENTENCES.items()}

    if args.trim_silence:
        human = [replace(c, pcm=trim_silence(c.pcm)) for c in human]
    overrides = parse_overrides(args.set)
    if args.beam is not None:
        overrides["beam_size"] = args.beam
    results: list[dict[str, Any]] = []
    for name in args.encoders.split(","):
        encoder: Encoder = "short" if name.strip() == "short" else "padded"
        settings = replace(WhisperSettings(encoder=encoder, cpu_threads=args.threads), **overrides)
        results.append(bench_encoder(settings, human, piper, timing_speech, repeats=args.repeats))
    summary = [{k: v for k, v in res.items() if k != "rows" or args.rows} for res in results]
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
