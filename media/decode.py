"""Decode uploaded audio files (WAV, OGG/Opus, MP3, WebM, ...) with PyAV."""

from __future__ import annotations

import io

import av
import numpy as np

from media.errors import AudioFormatError
from media.frames import PCM, PIPELINE_RATE


def decode_audio(data: bytes, rate: int = PIPELINE_RATE, max_seconds: float = 300.0) -> PCM:
    """Decode the first audio stream of a file to mono int16 at ``rate``.

    Raises ``AudioFormatError`` when the bytes are not a decodable audio file
    or hold more than ``max_seconds`` of audio.
    """
    if not data:
        raise AudioFormatError("empty audio upload")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError) as exc:
        raise AudioFormatError("not a decodable audio file") from exc
    with container:
        if not container.streams.audio:
            raise AudioFormatError("the file has no audio stream")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        parts: list[PCM] = []
        total = 0
        limit = int(max_seconds * rate)
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    parts.append(pcm)
                    total += pcm.size
                    if total > limit:
                        raise AudioFormatError(f"audio is longer than {max_seconds:.0f} s")
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        except av.FFmpegError as exc:
            raise AudioFormatError("the audio stream cannot be decoded") from exc
    if not parts or sum(p.size for p in parts) == 0:
        raise AudioFormatError("the file holds no audio")
    return np.concatenate(parts)
