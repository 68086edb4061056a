"""The agent's inbound jitter buffer (``media.jitter``): aiortc's, ours, and a real call."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from media import jitter
from media.caller import CallerPeer
from media.frames import float_to_int16
from media.jitter import InboundAudioBuffer, install
from media.webrtc import WebRtcTransport
from signaling.settings import ServerSettings

SAMPLES = 960
"""RTP timestamp step of one 20 ms Opus packet."""


def packet(seq: int) -> RtpPacket:
    """A depayloaded audio packet (as the receiver hands it to the buffer); wraps at 2^16."""
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=seq * SAMPLES % 2**32)
    p._data = seq.to_bytes(4, "big")  # type: ignore[attr-defined]
    return p


def feed(buffer: JitterBuffer | InboundAudioBuffer, order: Sequence[int]) -> list[int | None]:
    """For each packet of ``order``, the sequence number of the frame it released, if any."""
    out: list[int | None] = []
    for seq in order:
        _, frame = buffer.add(packet(seq))
        out.append(None if frame is None else int.from_bytes(frame.data, "big"))
    return out


def swapped(order: list[int], i: int) -> list[int]:
    out = list(order)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


STREAM = list(range(100, 140))


@pytest.mark.parametrize("prefetch", [1, 4])
def test_aiortc_holds_prefetch_packets_on_every_packet_not_only_the_start(prefetch: int) -> None:
    released = feed(JitterBuffer(16, prefetch=prefetch), STREAM)
    # packet k comes out when k + prefetch arrives, all along the stream
    assert released == [None] * prefetch + STREAM[:-prefetch]
    # prefetch 0 is prefetch 1: a frame is complete only once the next packet arrives
    assert feed(JitterBuffer(16, prefetch=0), STREAM) == feed(JitterBuffer(16, prefetch=1), STREAM)


def test_aiortc_lags_for_good_after_a_reordering_or_a_loss() -> None:
    # one swap: one arrival releases nothing, and each arrival after releases one frame
    released = feed(JitterBuffer(16, prefetch=1), swapped(STREAM, 5))
    lag = [arrived - out for arrived, out in zip(STREAM, released, strict=True) if out]
    assert lag[:4] == [1, 1, 1, 1] and set(lag[5:]) == {2}
    # one loss: nothing until the 16 slots are full, the frame before the gap is dropped
    # too, and the buffer stays 14 packets (280 ms) behind from then on
    lossy = [seq for seq in STREAM if seq != 110]
    released = feed(JitterBuffer(16, prefetch=1), lossy)
    out = [seq for seq in released if seq is not None]
    assert 109 not in out and 110 not in out and out[out.index(108) + 1] == 111
    assert released[10:24] == [None] * 14  # 111 to 124 arrive: 280 ms of nothing
    assert {a - r for a, r in zip(lossy, released, strict=True) if r and r > 110} == {14}


def test_no_prefetch_passes_each_packet_on_as_it_arrives() -> None:
    buffer = InboundAudioBuffer(0)
    assert feed(buffer, STREAM) == STREAM
    assert (buffer.packets, buffer.frames, buffer.late, buffer.waiting) == (40, 40, 0, 0)


def test_no_prefetch_drops_late_and_duplicate_packets_and_skips_losses() -> None:
    buffer = InboundAudioBuffer(0)
    order = [*swapped(STREAM[:10], 5), 109, *[s for s in STREAM[10:] if s != 120]]
    released = feed(buffer, order)
    # 106 before 105: 106 goes on, 105 is late; 109 twice: the second is a duplicate
    assert released[5:7] == [106, None] and released[10] is None
    # the loss of 120 costs that packet only: nothing waits, no lag after it
    assert [r for r in released if r is not None] == [s for s in STREAM if s not in (105, 120)]
    assert (buffer.late, buffer.waiting) == (2, 0)


def test_no_prefetch_follows_the_sequence_wrap_and_a_restarted_sender() -> None:
    buffer = InboundAudioBuffer(0)
    around = list(range(65530, 65542))  # wraps to 0 after 65535
    assert feed(buffer, around) == around  # (frames carry the unwrapped number)
    # a jump far backwards is a sender that restarted its numbering, not a late packet
    assert feed(buffer, [5000, 5001]) == [5000, 5001]
    assert buffer.late == 0


def test_prefetch_above_zero_is_aiortcs_buffer() -> None:
    assert feed(InboundAudioBuffer(4), STREAM) == feed(JitterBuffer(16, prefetch=4), STREAM)
    assert InboundAudioBuffer(4).prefetch == 4
    with pytest.raises(ValueError, match="prefetch"):
        InboundAudioBuffer(16)


def test_frames_are_aiortc_jitter_frames() -> None:
    _, frame = InboundAudioBuffer(0).add(packet(7))
    assert isinstance(frame, JitterFrame) and frame.timestamp == 7 * SAMPLES


async def test_install_logs_and_keeps_aiortcs_buffer_if_aiortc_renamed_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(jitter, "_warned", False)
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio").receiver
        monkeypatch.delattr(receiver, "_RTCRtpReceiver__jitter_buffer")
        with caplog.at_level(logging.ERROR, logger="media.jitter"):
            assert install(receiver, 0) is None
            assert install(receiver, 0) is None
        errors = [r for r in caplog.records if r.name == "media.jitter"]
        assert len(errors) == 1 and "keeps no JitterBuffer" in errors[0].getMessage()
    finally:
        await pc.close()


def test_the_server_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().webrtc_inbound_prefetch == jitter.INBOUND_PREFETCH == 0
    monkeypatch.setenv("PARLEY_WEBRTC_INBOUND_PREFETCH", "2")
    assert ServerSettings().webrtc_inbound_prefetch == 2
    monkeypatch.setenv("PARLEY_WEBRTC_INBOUND_PREFETCH", "16")
    with pytest.raises(ValueError, match="webrtc_inbound_prefetch"):
        ServerSettings()


TONES_HZ = (400, 800, 1200, 1600, 2000)
TONE_S = 0.1


def tones(rate: int) -> np.ndarray:
    t = np.arange(round(TONE_S * rate)) / rate
    return float_to_int16(np.concatenate([0.4 * np.sin(2 * np.pi * f * t) for f in TONES_HZ]))


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / pcm.size)


def nearest_tone(hz: float) -> int:
    return min(TONES_HZ, key=lambda f: abs(f - hz))


@pytest.mark.parametrize(("prefetch", "waiting"), [(0, 0), (1, 1), (4, 4)])
async def test_a_real_call_decodes_each_packet_after_prefetch_packets(
    prefetch: int, waiting: int
) -> None:
    """Over loopback: the server's receiver runs the installed buffer, which holds
    exactly ``prefetch`` packets (none by default, aiortc's 4 when asked), and the
    caller's audio arrives whole and in order."""
    pc = RTCPeerConnection()
    transport = WebRtcTransport(pc, 48_000, inbound_prefetch=prefetch)
    caller = CallerPeer()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(await caller.offer(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await caller.accept(pc.localDescription.sdp)
        buffer = transport.inbound_buffer
        assert buffer is not None and buffer.prefetch == prefetch
        clip = caller.track.play(tones(48_000), 48_000)
        heard: list[float] = []  # dominant frequency of each loud frame the agent decodes
        frames = quiet_after = 0
        async for frame in transport.inbound():
            mono = frame.to_mono().samples
            frames += 1
            if np.sqrt(np.mean(mono.astype(np.float64) ** 2)) > 1000:
                heard.append(dominant_hz(mono, frame.sample_rate))
            elif heard:
                quiet_after += 1
            if quiet_after == 10 or frames == 500:  # the clip is over (or a hang guard)
                break
        # checked between two packets: the buffer holds what its prefetch says
        assert buffer.packets > 0 and buffer.waiting == waiting and buffer.late == 0
        # whole (every frame of the clip; Opus's 6.5 ms delay spreads it over one more)
        # and in order (each tone after the one before)
        assert clip.frames <= len(heard) <= clip.frames + 1
        bins = [nearest_tone(hz) for hz in heard]
        assert bins == sorted(bins) and set(bins) == set(TONES_HZ)
    finally:
        await caller.close()
        await transport.close("test done")
