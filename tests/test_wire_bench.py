"""The wire benchmark's caller voices: the human-speech selection and how the report labels it.

No benchmark runs here: the human lines are the real Asterisk prompts (the
tests that read them skip, with the install hint, where the packages are
missing), and the report is fed results documents of the shape the
scenarios write.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import human_speech
from bench.wire import report
from bench.wire.cli import human_speech_record, parse_args
from bench.wire.speech import (
    HUMAN_INTERRUPTIONS,
    HUMAN_QUESTIONS,
    HUMAN_SPEECH_S,
    HUMAN_VOICE,
    INTERRUPTIONS,
    PEAK_DBFS,
    PIPER_VOICE,
    QUESTIONS,
    CallerVoice,
    fit_for_caller,
    human_lines,
    one_sentence,
    scenario_key,
    speech,
    speech_bounds,
    utterance,
)
from media.frames import PIPELINE_RATE
from media.wav import read_wav

needs_prompts = pytest.mark.skipif(
    not human_speech.available(),
    reason=f"the Asterisk prompts are not installed: {human_speech.INSTALL_HINT}",
)


@needs_prompts
def test_human_lines_are_a_fixed_selection_of_one_sentence_prompts() -> None:
    human = CallerVoice.human()
    assert (len(human.questions), len(human.interruptions)) == (
        HUMAN_QUESTIONS,
        HUMAN_INTERRUPTIONS,
    )
    assert human.voices == (HUMAN_VOICE,)
    # the prompts are all different, questions and interruptions never share one
    assert len(set(human.sources)) == len(human.sources) == HUMAN_QUESTIONS + HUMAN_INTERRUPTIONS
    assert not set(human.questions) & set(human.interruptions)
    # in the order of the prompts' name hashes: the same selection on every machine
    hashes = [hashlib.sha1(name.encode()).hexdigest() for name in human.sources]
    assert hashes == sorted(hashes)
    human_lines.cache_clear()
    assert CallerVoice.human() == human
    low, high = HUMAN_SPEECH_S
    peak = 32767 * 10 ** (PEAK_DBFS / 20)
    clips = {c.name: c for c in human_speech.load_clips(accept=fit_for_caller)}
    for line in human_lines():
        assert fit_for_caller(line.text) and one_sentence(line.text), line.text
        assert low <= line.speech_s <= high, (line.name, line.speech_s)
        # the 8 kHz recording, upsampled to the 16 kHz the caller sends, ...
        assert read_wav(human_speech.SOUNDS_DIR / f"{line.name}.wav").sample_rate == 8000
        # ... trimmed to its speech and scaled to the synthetic clips' peak
        upsampled = clips[line.name].pcm.astype(np.float64)
        start, end = speech_bounds(clips[line.name].pcm)
        assert line.pcm.size == end - start
        assert float(np.max(np.abs(line.pcm))) == pytest.approx(peak, abs=1)
        gain = peak / float(np.max(np.abs(upsampled[start:end])))
        assert np.allclose(line.pcm, upsampled[start:end] * gain, atol=1)


@needs_prompts
def test_the_scenarios_speak_the_human_lines_as_utterances() -> None:
    human = CallerVoice.human()
    lines = {line.text: line for line in human_lines()}
    text, voice = human.question(HUMAN_QUESTIONS + 2)  # the questions cycle
    assert (text, voice) == (human.questions[2], HUMAN_VOICE)
    clip = utterance(text, voice, lead_s=0.4)
    lead = round(0.4 * PIPELINE_RATE)
    assert (clip.speech_start, clip.speech_end) == (lead, lead + lines[text].pcm.size)
    assert np.array_equal(clip.pcm[lead:], lines[text].pcm)
    assert human.interruption(1) == (human.interruptions[1], HUMAN_VOICE)
    with pytest.raises(ValueError, match="no selected human line"):
        speech(QUESTIONS[0], HUMAN_VOICE)
    # the results name every prompt with its words and length
    record = human_speech_record()
    assert [q["prompt"] for q in record["questions"]] == list(human.sources[:HUMAN_QUESTIONS])
    assert [q["text"] for q in record["interruptions"]] == list(human.interruptions)
    low, high = HUMAN_SPEECH_S
    assert all(low <= q["speech_s"] <= high for q in record["questions"])


def test_the_synthetic_voices_ask_what_they_always_asked() -> None:
    names = [PIPER_VOICE, "espeak:en-us", "espeak:en-gb-x-rp"]
    synthetic = CallerVoice.of("synthetic", names)
    for n in range(45):
        assert synthetic.question(n) == (QUESTIONS[n % len(QUESTIONS)], names[n % len(names)])
        assert synthetic.interruption(n) == (
            INTERRUPTIONS[n % len(INTERRUPTIONS)],
            names[n % len(names)],
        )
    assert scenario_key("v2v", "synthetic") == "v2v"
    assert scenario_key("bargein", "human") == "bargein-human"
    with pytest.raises(ValueError, match="unknown caller voice"):
        CallerVoice.of("robot", names)


def test_caller_voices_option() -> None:
    assert parse_args([]).caller_voices == ["synthetic"]
    assert parse_args(["--caller-voices", "human,synthetic"]).caller_voices == [
        "synthetic",
        "human",
    ]
    assert parse_args(["--caller-voices", "human"]).caller_voices == ["human"]
    with pytest.raises(SystemExit):
        parse_args(["--caller-voices", "robot"])


def _summary(median: float) -> dict[str, float]:
    return {"n": 4, "min": median - 50, "median": median, "p90": median + 90, "p99": median + 99}


def _v2v(median: float, voices: list[str]) -> dict[str, Any]:
    return {
        "caller_voice": "human" if voices == [HUMAN_VOICE] else "synthetic",
        "questions": 4,
        "voices": voices,
        "v2v_ms": {**_summary(median), "max": median + 100},
        "stages": {},
        "unanswered": 0,
        "underruns": 0,
        "underrun_ms": 0,
        "reply_audio_s": 12.0,
    }


def _bargein(median: float, noises: int) -> dict[str, Any]:
    noise = {
        "trials": [{"ok": True}] * noises,
        "ok": noises,
        "paused": 0,
        "false_interruptions": 0,
        "longest_silence_ms": {},
    }
    return {
        "stop_ms": {**_summary(median), "max": median + 100},
        "stop_parts_ms": {},
        "not_stopped": 0,
        "min_speech_ms": 200,
        "false_interruption_timeout_ms": 1500,
        "coughs": noise,
        "backchannels": noise,
    }


def _doc(scenarios: dict[str, Any], human: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "date": "2026-01-01",
        "tag": "quick",
        "quick": True,
        "scenarios_run": ["v2v", "bargein"],
        "seconds": 60.0,
        "machine": {"cpus": 2, "cpu_model": "test", "loadavg_start": [1.0, 1.0, 1.0]},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "config": {"path": "embedded", "overrides": []},
        "voices": [PIPER_VOICE],
        "work_dir": "/tmp/work",
        "servers": {},
        "scenarios": scenarios,
    }
    doc["caller_voices"] = ["synthetic", "human"] if human else ["synthetic"]
    if human:
        prompt = {"prompt": "conf-full", "text": "That conference is full.", "speech_s": 1.5}
        doc["human_speech"] = {"questions": [prompt] * 4, "interruptions": [prompt] * 2}
    return doc


def _row(rows: list[tuple[str, str]], start: str) -> tuple[str, str]:
    found = [row for row in rows if row[0].startswith(start)]
    assert len(found) == 1, (start, [label for label, _ in rows])
    return found[0]


def test_a_run_without_human_speech_reports_as_before(tmp_path: Path) -> None:
    doc = _doc({"v2v": _v2v(900.0, [PIPER_VOICE]), "bargein": _bargein(300.0, 1)}, human=False)
    rows = report.figures(doc)
    label, value = _row(rows, "voice-to-voice")
    assert label == "voice-to-voice, 1 call (4 questions, 1 voices): min / median / p90 / p99 / max"
    assert "/ 900 /" in value
    assert _row(rows, "barge-in")[0].startswith("barge-in: caller onset")
    assert not any("human" in label or "synthetic" in label for label, _ in rows)
    text = report.markdown(doc, {}, tmp_path, None)
    assert "Caller voices: piper:joe.\n" in text
    assert "human speech" not in text.lower() and "Asterisk" not in text


def test_each_figure_says_the_voice_it_was_measured_on(tmp_path: Path) -> None:
    scenarios = {
        "v2v": _v2v(900.0, [PIPER_VOICE]),
        "v2v-human": _v2v(1300.0, [HUMAN_VOICE]),
        "bargein": _bargein(300.0, 1),
        "bargein-human": _bargein(450.0, 0),
    }
    doc = _doc(scenarios, human=True)
    rows = report.figures(doc)
    synthetic = _row(rows, "voice-to-voice on synthetic voices, 1 call (4 questions, 1 voices)")
    human = _row(rows, "voice-to-voice on human speech, 1 call (4 Asterisk prompts, one speaker)")
    assert "/ 900 /" in synthetic[1] and "/ 1300 /" in human[1]
    assert "/ 300 /" in _row(rows, "barge-in on synthetic voices: caller onset")[1]
    assert "/ 450 /" in _row(rows, "barge-in on human speech: caller onset")[1]
    # coughs and backchannels are synthetic: one row each, from the synthetic run
    _row(rows, "cough bursts")
    _row(rows, "backchannels")
    # the stage rows follow the figure they belong to
    labels = [label for label, _ in rows]
    assert labels.index(human[0]) > labels.index(synthetic[0])
    assert labels[labels.index(human[0]) + 1].startswith("  stage:")
    before = _doc({"v2v-human": _v2v(1500.0, [HUMAN_VOICE])}, human=True)
    text = report.markdown(doc, {}, tmp_path, before)
    assert "Caller voices: piper:joe (synthetic voices); figures 'on human speech'" in text
    assert "the first of 4 v2v and 2 barge-in lines" in text and "- On human speech:" in text
    assert "| human speech: v2v median ms | 1500 | 1300 |" in text


def test_a_failed_human_run_is_reported_as_such() -> None:
    scenarios = {
        "v2v": _v2v(900.0, [PIPER_VOICE]),
        "v2v-human": {"error": "HumanSpeechMissingError: run scripts/install_test_audio.sh"},
    }
    rows = report.figures(_doc(scenarios, human=False))
    _, value = _row(rows, "voice-to-voice on human speech")
    assert value.startswith("error: HumanSpeechMissingError")
    _row(rows, "voice-to-voice on synthetic voices")
