"""WAV file helpers with clear errors for anything that is not 16-bit PCM WAV."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from media.errors import AudioFormatError
from media.frames import PCM, AudioFrame


def read_wav(source: str | Path | bytes) -> AudioFrame:
    """Read a whole PCM WAV file (8/16/24/32-bit integer) into one int16 frame.

    Raises ``AudioFormatError`` for missing, truncated, empty or non-WAV input.
    """
    try:
        handle: io.BufferedIOBase | io.BytesIO
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise AudioFormatError(f"cannot open WAV file: {exc.strerror or exc}") from exc
    with handle:
        try:
            with wave.open(handle, "rb") as wav:
                channels = wav.getnchannels()
                width = wav.getsampwidth()
                rate = wav.getframerate()
                n_frames = wav.getnframes()
                raw = wav.readframes(n_frames)
        except (wave.Error, EOFError) as exc:
            raise AudioFormatError(f"not a readable PCM WAV file: {exc}") from exc
    if channels not in (1, 2):
        raise AudioFormatError(f"WAV has {channels} channels; 1 or 2 are supported")
    frame_bytes = width * channels
    if n_frames * frame_bytes > len(raw):
        raise AudioFormatError(
            f"WAV file is truncated: header declares {n_frames} sample frames, "
            f"data holds {len(raw) // frame_bytes}"
        )
    if not raw:
        raise AudioFormatError("WAV file holds no audio")
    return AudioFrame(_to_int16(raw, width), rate, channels)


def _to_int16(raw: bytes, width: int) -> PCM:
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    if width == 1:
        return ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        return ((b[:, 2].astype(np.int8).astype(np.int16) << 8) | b[:, 1]).astype(np.int16)
    if width == 4:
        return (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int16)
    raise AudioFormatError(f"unsupported WAV sample width {width * 8} bits")


def write_wav(target: str | Path | io.BytesIO, frame: AudioFrame) -> None:
    """Write an int16 frame as a 16-bit PCM WAV file."""
    with wave.open(target if isinstance(target, io.BytesIO) else str(target), "wb") as wav:
        wav.setnchannels(frame.channels)
        wav.setsampwidth(2)
        wav.setframerate(frame.sample_rate)
        wav.writeframes(frame.samples.astype("<i2").tobytes())


def wav_bytes(frame: AudioFrame) -> bytes:
    """Encode an int16 frame as WAV file bytes."""
    buf = io.BytesIO()
    write_wav(buf, frame)
    return buf.getvalue()
