"""The wire benchmark's voice-to-voice stages: the network stage split into its two ways."""

from __future__ import annotations

from bench.wire.scenarios.common import Turn, stage_summary


def turn(metrics_at: float | None) -> Turn:
    """A turn asked at t=100 s, heard 900 ms later; the server counted 800 ms of it."""
    t = Turn("q", "voice", "call", 0, 1.0, asked_at=100.0, v2v_ms=900.0)
    t.server = {
        "voice_to_voice_ms": 800.0,
        "end_of_turn_ms": 300.0,
        "stt_wait_ms": 100.0,
        "llm_first_token_ms": 200.0,
        "tts_first_audio_ms": 100.0,
        "marks_ms": {"emitted": 5000.0},  # 5 s after the speech end the server saw
    }
    t.server_at = metrics_at
    return t


def test_network_splits_into_in_and_out_by_the_server_speech_end() -> None:
    # the server saw the speech end 20 ms after it was sent
    stages = turn(metrics_at=100.0 + 0.020 + 5.0).stages()
    assert stages is not None
    assert stages["network_ms"] == 100.0
    assert (stages["network_in_ms"], stages["network_out_ms"]) == (20.0, 80.0)
    assert stage_summary([turn(105.02)])["network_in_ms"]["median"] == 20.0


def test_without_the_metrics_arrival_the_network_stays_whole() -> None:
    stages = turn(metrics_at=None).stages()
    assert stages is not None and stages["network_ms"] == 100.0
    assert "network_in_ms" not in stages and "network_out_ms" not in stages
    assert stage_summary([turn(None)])["network_in_ms"] == {}
    assert "server_at" not in turn(105.0).to_json()
