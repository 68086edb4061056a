"""``python -m agent``: bad input fails fast with one line; a real call end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from media.frames import AudioFrame
from media.wav import read_wav, wav_bytes, write_wav
from tests.speech import compose
from tests.textnorm import phrase_error

ROOT = Path(__file__).resolve().parent.parent


def run_agent(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"ID3\x03\x00\x00\x00" + b"\x00" * 100, "not a readable PCM WAV"),
        (b"", "not a readable PCM WAV"),
        (wav_bytes(AudioFrame(np.ones(1600, np.int16), 16000))[:-500], "truncated"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "in.wav"
    bad.write_bytes(content)
    proc = run_agent("call", str(bad), "--out", str(tmp_path / "out.wav"), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "out.wav").exists()


def test_missing_input(tmp_path: Path) -> None:
    proc = run_agent("call", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "o.wav"))
    assert proc.returncode == 2 and "cannot open" in proc.stderr


@pytest.mark.slow
def test_call_prints_events_and_writes_agent_audio(tmp_path: Path) -> None:
    # 44.1 kHz stereo input: the CLI converts any PCM WAV
    mono = compose(0.3, "What is the capital of France?", 2.5, rate=44100)
    stereo = np.repeat(mono, 2)
    write_wav(tmp_path / "in.wav", AudioFrame(stereo, 44100, channels=2))
    proc = run_agent("call", str(tmp_path / "in.wav"), "--out", str(tmp_path / "out.wav"), "--fast")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    types = {e["type"] for e in events}
    assert {"transcript", "reply", "state", "metrics"} <= types
    final = [e for e in events if e["type"] == "transcript" and e["final"]]
    # one misheard word of the four is tolerated; the wording around them is free
    assert phrase_error(final[0]["text"], "the capital of France") <= 0.25, final[0]["text"]
    assert next(e for e in events if e["type"] == "reply")["text"]
    metrics = next(e for e in events if e["type"] == "metrics")
    assert metrics["voice_to_voice_ms"] > 0
    out = read_wav(tmp_path / "out.wav")
    assert out.sample_rate == 16000 and np.abs(out.samples).max() > 3000
