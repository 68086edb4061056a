"""Phone audio codecs for RTP: G.711 (mu-law, A-law) by numpy tables and G.722 through PyAV.

Every codec has the same small shape (``Codec``): it turns one frame of
mono int16 PCM at its audio ``sample_rate`` into one RTP payload and back.
Two rates are in play and must not be confused:

- ``sample_rate`` is the audio's rate: 8000 for G.711, 16000 for G.722;
- ``clock_rate`` is the RTP timestamp rate: 8000 for all three (RFC 3551
  keeps G.722 at 8000 "for historical reasons", so a 20 ms packet advances
  the timestamp by 160 whatever the codec).

G.711 follows the ITU-T G.711 reference (the CCITT/Sun ``g711.c`` every
telephony stack descends from): encoding truncates into the segment's
quantisation step, decoding returns the step's midpoint. Both directions are
one table lookup per sample (65 536 entries to encode, 256 to decode).

G.722 is stateful (ADPCM): one ``G722Codec`` per stream, whose encoder and
decoder contexts keep their predictor state from packet to packet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

import av
import numpy as np
import numpy.typing as npt

from media.errors import AudioFormatError
from media.frames import FRAME_MS, PCM

if TYPE_CHECKING:
    from media.sip.sdp import Negotiated

RTP_CLOCK_RATE: Final = 8000
"""RTP timestamp rate of PCMU, PCMA and G.722 (RFC 3551)."""

PT_PCMU: Final = 0
PT_PCMA: Final = 8
PT_G722: Final = 9


class Codec(Protocol):
    """One RTP audio codec instance (stateful codecs: one per stream)."""

    name: str
    """Encoding name as written in SDP (``PCMU``, ``PCMA``, ``G722``)."""
    payload_type: int
    """RTP payload type negotiated for this call."""
    sample_rate: int
    """Rate of the PCM that ``encode`` takes and ``decode`` returns."""
    clock_rate: int
    """RTP timestamp rate."""
    samples_per_frame: int
    """PCM samples in one 20 ms frame at ``sample_rate``."""

    def encode(self, pcm: PCM) -> bytes:
        """One RTP payload from mono int16 PCM at ``sample_rate``."""
        ...

    def decode(self, payload: bytes) -> PCM:
        """Mono int16 PCM at ``sample_rate`` from one RTP payload."""
        ...


# --------------------------------------------------------------------- G.711


def _check_pcm(pcm: PCM) -> None:
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
        raise AudioFormatError("G.711/G.722 encoders expect flat mono int16 PCM")


def _build_ulaw_tables() -> tuple[npt.NDArray[np.uint8], PCM]:
    linear = np.arange(-32768, 32768, dtype=np.int32)
    # ITU reference: 14-bit magnitude, bias 33, clip at 8159, segment by leading bit
    value = linear >> 2
    negative = value < 0
    magnitude = np.minimum(np.where(negative, -value, value), 8159) + 0x21
    segment = np.searchsorted(
        np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), magnitude
    )
    code = np.where(
        segment >= 8, 0x7F, (segment << 4) | ((magnitude >> np.minimum(segment + 1, 8)) & 0x0F)
    )
    encode = (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)

    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    decode = np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)
    return encode, decode


def _build_alaw_tables() -> tuple[npt.NDArray[np.uint8], PCM]:
    linear = np.arange(-32768, 32768, dtype=np.int32)
    # ITU reference: 13-bit magnitude (one's complement for negatives), even bits inverted
    value = linear >> 3
    negative = value < 0
    magnitude = np.where(negative, -value - 1, value)
    segment = np.searchsorted(
        np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), magnitude
    )
    mantissa = np.where(segment < 2, magnitude >> 1, magnitude >> np.maximum(segment, 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    encode = (code ^ np.where(negative, 0x55, 0xD5)).astype(np.uint8)

    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + np.where(seg == 0, 8, 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    decode = np.where(a & 0x80, t, -t).astype(np.int16)
    return encode, decode


_ULAW_ENCODE, _ULAW_DECODE = _build_ulaw_tables()
_ALAW_ENCODE, _ALAW_DECODE = _build_alaw_tables()


def ulaw_encode(pcm: PCM) -> bytes:
    """G.711 mu-law codes of int16 PCM (one byte per sample)."""
    _check_pcm(pcm)
    return _ULAW_ENCODE[pcm.astype(np.int32) + 32768].tobytes()


def ulaw_decode(payload: bytes) -> PCM:
    """int16 PCM of G.711 mu-law codes."""
    out: PCM = _ULAW_DECODE[np.frombuffer(payload, np.uint8)]
    return out


def alaw_encode(pcm: PCM) -> bytes:
    """G.711 A-law codes of int16 PCM (one byte per sample)."""
    _check_pcm(pcm)
    return _ALAW_ENCODE[pcm.astype(np.int32) + 32768].tobytes()


def alaw_decode(payload: bytes) -> PCM:
    """int16 PCM of G.711 A-law codes."""
    out: PCM = _ALAW_DECODE[np.frombuffer(payload, np.uint8)]
    return out


class G711Codec:
    """PCMU or PCMA at 8 kHz: stateless, one byte per sample."""

    sample_rate = 8000
    clock_rate = RTP_CLOCK_RATE
    samples_per_frame = 8000 * FRAME_MS // 1000

    def __init__(self, name: str, payload_type: int | None = None) -> None:
        upper = name.upper()
        if upper == "PCMU":
            self._encode, self._decode = ulaw_encode, ulaw_decode
            default_pt = PT_PCMU
        elif upper == "PCMA":
            self._encode, self._decode = alaw_encode, alaw_decode
            default_pt = PT_PCMA
        else:
            raise ValueError(f"G.711 is PCMU or PCMA, not {name!r}")
        self.name = upper
        self.payload_type = default_pt if payload_type is None else payload_type

    def encode(self, pcm: PCM) -> bytes:
        """One byte per sample."""
        return self._encode(pcm)

    def decode(self, payload: bytes) -> PCM:
        """One sample per byte."""
        return self._decode(payload)

    def __repr__(self) -> str:
        return f"G711Codec({self.name!r}, payload_type={self.payload_type})"


# --------------------------------------------------------------------- G.722


class G722Codec:
    """G.722 (64 kbit/s ADPCM, 16 kHz audio) through PyAV's FFmpeg codec.

    Stateful: keep one instance per RTP stream. ``encode`` takes whole
    20 ms frames (a multiple of 320 samples: FFmpeg's encoder frame) and
    returns 80 bytes per 10 ms; ``decode`` takes any payload and returns two
    samples per byte.
    """

    name = "G722"
    sample_rate = 16_000
    clock_rate = RTP_CLOCK_RATE
    samples_per_frame = 16_000 * FRAME_MS // 1000

    def __init__(self, payload_type: int = PT_G722) -> None:
        self.payload_type = payload_type
        self._encoder = av.CodecContext.create("g722", "w")
        self._encoder.sample_rate = self.sample_rate
        self._encoder.format = "s16"
        self._encoder.layout = "mono"
        self._encoder.open()
        self._decoder = av.CodecContext.create("g722", "r")
        self._decoder.sample_rate = self.sample_rate
        self._decoder.layout = "mono"
        self._decoder.open()
        self._frame_samples: int = self._encoder.frame_size or self.samples_per_frame
        self._pts = 0

    def encode(self, pcm: PCM) -> bytes:
        """Encode whole encoder frames (20 ms each) of 16 kHz PCM."""
        _check_pcm(pcm)
        if pcm.size == 0 or pcm.size % self._frame_samples:
            raise AudioFormatError(
                f"G.722 encodes whole {self._frame_samples}-sample (20 ms at 16 kHz) "
                f"frames, got {pcm.size} samples"
            )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += pcm.size
        return b"".join(bytes(packet) for packet in self._encoder.encode(frame))

    def decode(self, payload: bytes) -> PCM:
        """Decode a payload to 16 kHz PCM (two samples per byte)."""
        if not payload:
            return np.zeros(0, np.int16)
        chunks = [
            frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            for frame in self._decoder.decode(av.Packet(payload))
        ]
        if not chunks:
            return np.zeros(0, np.int16)
        out: PCM = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return out

    def __repr__(self) -> str:
        return f"G722Codec(payload_type={self.payload_type})"


def codec_for(negotiated: Negotiated) -> Codec:
    """A fresh codec instance for the negotiated audio format."""
    name = negotiated.codec.upper()
    if name == "G722":
        return G722Codec(negotiated.payload_type)
    if name in ("PCMU", "PCMA"):
        return G711Codec(name, negotiated.payload_type)
    raise ValueError(f"no codec for {negotiated.codec!r}")
