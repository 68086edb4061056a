"""Frames, WAV files, resampling and the playout buffer."""

from __future__ import annotations

import asyncio
import io
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from media import playout
from media.errors import AudioFormatError
from media.frames import AudioFrame, float_to_int16, int16_to_float, rms_dbfs
from media.pacer import Pacer
from media.playout import PlayoutBuffer, heard_text
from media.resample import FrameNormalizer, StreamResampler, resample
from media.wav import read_wav, wav_bytes, write_wav


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return float_to_int16(amp * np.sin(2 * np.pi * freq * t))


def test_frame_validation_and_mono() -> None:
    with pytest.raises(AudioFormatError, match="int16"):
        AudioFrame(np.zeros(10, np.float32), 16000)
    with pytest.raises(AudioFormatError, match="channels"):
        AudioFrame(np.zeros(11, np.int16), 16000, channels=2)
    stereo = AudioFrame(np.array([100, 300, -100, -300], np.int16), 16000, channels=2)
    assert stereo.samples_per_channel == 2
    assert stereo.to_mono().samples.tolist() == [200, -200]
    f = int16_to_float(np.array([-32768, 0, 16384], np.int16))
    assert f.dtype == np.float32 and f[0] == -1.0 and f[2] == 0.5
    assert rms_dbfs(np.zeros(5, np.int16)) == float("-inf")
    assert -10.0 < rms_dbfs(tone(440, 0.1, 16000, 0.5)) < -8.0


def test_wav_roundtrip(tmp_path: Path) -> None:
    pcm = tone(300, 0.25, 22050)
    path = tmp_path / "a.wav"
    write_wav(path, AudioFrame(pcm, 22050))
    back = read_wav(path)
    assert back.sample_rate == 22050 and back.channels == 1
    assert np.array_equal(back.samples, pcm)
    assert read_wav(wav_bytes(AudioFrame(pcm, 22050))).samples.size == pcm.size


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a readable"),
        (b"OggS" + b"\0" * 60, "not a readable"),
        (b"RIFF\x24\0\0\0WAVEfmt ", "not a readable"),
    ],
)
def test_bad_wav_bytes(data: bytes, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        read_wav(data)


def test_truncated_and_empty_wav(tmp_path: Path) -> None:
    full = wav_bytes(AudioFrame(tone(300, 0.1, 16000), 16000))
    with pytest.raises(AudioFormatError, match="truncated"):
        read_wav(full[:-400])
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(AudioFormatError, match="no audio"):
        read_wav(buf.getvalue())
    with pytest.raises(AudioFormatError, match="cannot open"):
        read_wav(tmp_path / "missing.wav")


def test_wav_other_widths() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<i", v)[:3] for v in (0, 0x400000, -0x400000)))
    assert read_wav(buf.getvalue()).samples.tolist() == [0, 0x4000, -0x4000]


def test_stream_resampler_matches_whole_signal() -> None:
    pcm = tone(440, 1.0, 48000)
    r = StreamResampler(48000, 16000)
    pieces = [r.process(pcm[i : i + 960]) for i in range(0, pcm.size, 960)]
    streamed = np.concatenate([*pieces, r.flush()])
    whole = resample(pcm, 48000, 16000)
    assert abs(streamed.size - whole.size) <= 2
    n = min(streamed.size, whole.size) - 200
    # No clicks at the 20 ms joins: the streamed signal equals the one-shot one.
    assert np.max(np.abs(streamed[200:n].astype(int) - whole[200:n].astype(int))) < 200


def test_frame_normalizer_stereo_48k() -> None:
    mono = tone(440, 0.2, 48000)
    stereo = np.repeat(mono, 2)
    norm = FrameNormalizer(16000)
    out = [norm.process(AudioFrame(stereo[i : i + 1920], 48000, 2)) for i in range(0, 19200, 1920)]
    assert all(f.sample_rate == 16000 and f.channels == 1 for f in out)
    # Inbound audio is latency-critical: the filter may withhold at most 2 ms
    # (32 samples) of what came in; soxr "HQ" holds back up to ~21 ms.
    assert 3200 - 32 <= sum(f.samples.size for f in out) <= 3200
    # the streamed signal is the one-shot resampled one (no clicks at the joins)
    streamed = np.concatenate([f.samples for f in out])
    whole = resample(mono, 48000, 16000)
    n = min(streamed.size, whole.size) - 100
    assert np.max(np.abs(streamed[100:n].astype(int) - whole[100:n].astype(int))) < 200
    # timestamps follow the output stream; 16 kHz mono passes through untouched
    assert out[1].timestamp == pytest.approx(out[0].samples.size / 16000)
    plain = FrameNormalizer(16000).process(AudioFrame(mono[:320], 16000))
    assert np.array_equal(plain.samples, mono[:320])


async def test_playout_pacing_accounting_and_clear() -> None:
    buf = PlayoutBuffer(16000, max_buffered_ms=1000)
    seg1 = buf.open_segment("u1", "Hello there.")
    seg2 = buf.open_segment("u1", "How are you doing today?")
    await buf.push(seg1, np.full(3200, 1000, np.int16))  # 200 ms
    buf.close_segment(seg1)
    await buf.push(seg2, np.full(6400, 1000, np.int16))  # 400 ms
    buf.close_segment(seg2)
    assert buf.buffered_ms == 600
    for _ in range(15):  # 300 ms: all of seg1, a quarter of seg2
        pcm, speech = buf.pull()
        assert speech and pcm.size == 320
    assert seg1.fraction_played == 1.0 and seg2.fraction_played == 0.25
    assert heard_text(buf.segments("u1")) == "Hello there. How"
    buf.clear("u1")
    assert buf.buffered_ms == 0 and buf.is_done("u1")
    pcm, speech = buf.pull()
    assert not speech and not pcm.any()
    assert heard_text(buf.segments("u1")) == "Hello there. How"


async def test_playout_backpressure_pause_resume_and_done() -> None:
    buf = PlayoutBuffer(16000, max_buffered_ms=100)
    seg = buf.open_segment("u", "x y z")
    push = asyncio.create_task(buf.push(seg, np.ones(4800, np.int16)))  # 300 ms > bound
    await asyncio.sleep(0.01)
    assert not push.done() and buf.buffered_ms == 100
    buf.pause()
    assert not buf.pull()[1]
    assert buf.buffered_ms == 100  # paused: nothing consumed
    buf.resume()
    for _ in range(10):
        buf.pull()
        await asyncio.sleep(0)
    await asyncio.wait_for(push, 1)
    buf.close_segment(seg)
    buf.finish_utterance("u")
    assert not buf.is_done("u")
    while buf.buffered_ms:
        buf.pull()
    await asyncio.wait_for(buf.wait_done("u"), 1)
    assert buf.first_audio_at("u") is not None


def test_pauses_have_reasons_and_clear_keeps_them() -> None:
    buf = PlayoutBuffer(16000)
    seg = buf.open_segment("u", "x")
    buf._enqueue(seg, np.ones(3200, np.int16))
    buf.pause("barge-in")
    buf.pause("hold")
    buf.resume("barge-in")
    assert buf.paused and not buf.pull()[1]  # still on hold
    buf.clear("u")
    assert buf.paused  # dropping audio does not take the call off hold
    buf.resume("hold")
    assert not buf.paused
    buf.resume("never-paused")  # releasing a reason that is not held changes nothing
    assert not buf.paused


class VirtualClock:
    """A clock that only moves when a pacer sleeps or a test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_pacer_deadlines_do_not_drift() -> None:
    clock = VirtualClock()
    pacer = Pacer(0.02, clock=clock, sleep=clock.sleep)
    await pacer.wait()  # the first frame is due at once and starts the clock
    assert clock.sleeps == [] and pacer.started_at == 0.0
    for _ in range(50):
        clock.now += 0.007  # the consumer's own work per frame
        await pacer.wait()
    # Each wait sleeps only what is left of the period: no drift after 50 frames.
    assert clock.sleeps == pytest.approx([0.013] * 50)
    assert clock.now == pytest.approx(50 * 0.02)
    assert pacer.frames == 51 and pacer.resyncs == 0


async def test_pacer_catches_up_a_short_stall_and_resyncs_after_a_long_one() -> None:
    clock = VirtualClock()
    pacer = Pacer(0.02, max_lag_frames=5, clock=clock, sleep=clock.sleep)
    await pacer.wait()
    clock.now += 0.07  # 3.5 frames late (within the 5-frame bound): catch up
    for _ in range(3):
        await pacer.wait()
    assert clock.sleeps == []  # the three overdue frames go out at once
    await pacer.wait()  # the fourth is due at 80 ms: back on the original grid
    assert clock.sleeps == pytest.approx([0.01]) and clock.now == pytest.approx(4 * 0.02)
    assert pacer.resyncs == 0

    clock.sleeps.clear()
    clock.now += 0.5  # a stalled loop: 25 frames late
    await pacer.wait()
    assert pacer.resyncs == 1 and clock.sleeps == []  # due now, no burst of 25
    stalled_at = clock.now
    await pacer.wait()
    assert clock.sleeps == pytest.approx([0.02]) and clock.now == pytest.approx(stalled_at + 0.02)
    assert pacer.frames == 7


def test_pacer_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="period"):
        Pacer(0)
    with pytest.raises(ValueError, match="max_lag_frames"):
        Pacer(0.02, max_lag_frames=0)


async def test_playout_frames_are_paced_in_stream_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """``frames()`` yields 20 ms frames in order, one per pacer deadline.

    On a virtual clock: the real-time figures (period, jitter) are
    ``python -m bench.pacing``'s, not a wall-clock assert here.
    """
    clock = VirtualClock()

    def virtual_pacer(period_s: float) -> Pacer:
        return Pacer(period_s, clock=clock, sleep=clock.sleep)

    monkeypatch.setattr(playout, "Pacer", virtual_pacer)
    buf = PlayoutBuffer(16000)
    seg = buf.open_segment("u", "Hello there.")
    speech_pcm = np.arange(1, 1 + 3 * 320, dtype=np.int16)  # 60 ms, every sample distinct
    await buf.push(seg, speech_pcm)
    buf.close_segment(seg)
    buf.finish_utterance("u")
    got: list[tuple[float, float, bool, np.ndarray]] = []
    frames = buf.frames()
    for _ in range(10):
        frame, speech = await anext(frames)
        got.append((clock.now, frame.timestamp, speech, frame.samples))
    assert [at for at, *_ in got] == pytest.approx([0.02 * n for n in range(10)])
    assert [ts for _, ts, *_ in got] == pytest.approx([0.02 * n for n in range(10)])
    assert [speech for *_, speech, _ in got] == [True] * 3 + [False] * 7
    assert all(f.size == 320 and f.dtype == np.int16 for *_, f in got)
    assert np.array_equal(np.concatenate([f for *_, f in got[:3]]), speech_pcm)
    assert not np.concatenate([f for *_, f in got[3:]]).any()  # silence when idle
    assert seg.fraction_played == 1.0 and buf.is_done("u")


async def test_forgotten_utterance_never_reopens() -> None:
    """A late producer of a cancelled reply cannot queue audio again (barge-in regression)."""
    buf = PlayoutBuffer(16000)
    seg = buf.open_segment("u", "first")
    await buf.push(seg, np.ones(3200, np.int16))
    buf.clear("u")
    buf.forget("u")
    late = buf.open_segment("u", "a later sentence")
    await buf.push(late, np.ones(3200, np.int16))
    assert buf.buffered_ms == 0 and not buf.pull()[1]
    assert buf.segments("u") == []
    await asyncio.wait_for(buf.wait_done("u"), 1)
