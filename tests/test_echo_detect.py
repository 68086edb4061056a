"""Echo detection: does the caller's line play the agent back, and should its audio be cancelled?

Piper speech is the agent's voice (the reference) and the caller's; the line
returns the agent -15 dB and some delay later over low noise, or not at all
(a handset). The detector must find the echo and its delay, clear a quiet
handset and a caller talking over the agent, and the ``EchoFilter`` must
hand a clear line's audio through untouched while AEC3 would have cut it.
"""

from __future__ import annotations

import numpy as np
import pytest

from media.echo import EchoFilter
from media.echo_detect import DetectorSettings, EchoDetector, EchoVerdict
from media.frames import PCM, AudioFrame
from media.playout import PlayoutBuffer
from tests.speech import speak
from tests.test_echo import GREETING, NOISE_DBFS, level_db

RATE = 16000
FRAME = RATE // 50


def _noise(n: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n) * 32768 * 10 ** (NOISE_DBFS / 20)


def _line(agent: PCM, delay_ms: int | None, caller: PCM | None = None) -> PCM:
    """What the phone sends while ``agent`` plays: echo (None: none), noise, the caller."""
    out = _noise(agent.size)
    if delay_ms is not None:
        d = RATE * delay_ms // 1000
        out[d:] += agent[: agent.size - d].astype(np.float64) * 10 ** (-15 / 20)
    if caller is not None:
        n = min(caller.size, out.size)
        out[:n] += caller[:n]
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def _run(detector: EchoDetector, agent: PCM, mic: PCM) -> list[EchoVerdict]:
    verdicts = []
    for at in range(0, agent.size - FRAME + 1, FRAME):
        verdicts.append(detector.feed(mic[at : at + FRAME], agent[at : at + FRAME]))
    return verdicts


@pytest.fixture(scope="module")
def agent_voice() -> PCM:
    return speak(GREETING, RATE)[: RATE * 6]


@pytest.mark.parametrize("delay_ms", [40, 80, 200, 450])
def test_an_echo_is_found_with_its_delay(agent_voice: PCM, delay_ms: int) -> None:
    detector = EchoDetector()
    verdicts = _run(detector, agent_voice, _line(agent_voice, delay_ms))
    assert detector.verdict is EchoVerdict.ECHO
    assert EchoVerdict.CLEAR not in verdicts  # never judged clear on the way
    assert detector.delay_ms is not None and abs(detector.delay_ms - delay_ms) <= 20
    # judged within the first two seconds of the agent speaking
    assert verdicts.index(EchoVerdict.ECHO) < 100


def test_a_quiet_handset_is_clear(agent_voice: PCM) -> None:
    detector = EchoDetector()
    verdicts = _run(detector, agent_voice, _line(agent_voice, None))
    assert detector.verdict is EchoVerdict.CLEAR
    assert verdicts.index(EchoVerdict.CLEAR) < 100


def test_a_caller_talking_over_the_agent_is_not_echo(agent_voice: PCM) -> None:
    caller = speak("Stop, I have a question about my library card and the late fees.", RATE)
    detector = EchoDetector()
    verdicts = _run(detector, agent_voice, _line(agent_voice, None, caller))
    assert EchoVerdict.ECHO not in verdicts
    assert detector.verdict is EchoVerdict.CLEAR


def test_an_echo_that_stops_is_released_after_agent_speech_without_it(agent_voice: PCM) -> None:
    detector = EchoDetector(DetectorSettings(release_ms=2000))
    on = _run(detector, agent_voice, _line(agent_voice, 80))
    off = _run(detector, agent_voice, _line(agent_voice, None))  # off speakerphone
    again = _run(detector, agent_voice, _line(agent_voice, 80))  # back on it
    assert (on[-1], off[-1], again[-1]) == (EchoVerdict.ECHO, EchoVerdict.CLEAR, EchoVerdict.ECHO)
    assert detector.changes == 3


def test_nothing_is_judged_while_the_agent_is_silent() -> None:
    detector = EchoDetector()
    caller = speak("Hello, is anybody there?", RATE)
    for at in range(0, caller.size - FRAME + 1, FRAME):
        detector.feed(caller[at : at + FRAME], None)
    assert detector.verdict is EchoVerdict.UNKNOWN


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="echo_r"):
        DetectorSettings(echo_r=1.5)
    with pytest.raises(ValueError, match="min_active_ms"):
        DetectorSettings(window_ms=500, min_active_ms=800)


async def test_a_clear_line_passes_the_caller_untouched_where_aec3_cuts_them() -> None:
    """A handset caller talking over the agent: with the detector their voice comes
    through as sent; AEC3 alone (nothing to learn) takes much of it away.

    The caller speaks at another pace than the agent (a person does): in the agent's own
    voice and pace, the loudness envelopes of the two correlate by chance about half of
    the times Piper synthesizes them (its output is not deterministic), past the
    detector's threshold; at 1.25x the agent's length, 12 syntheses of 12 read clear."""
    caller = speak(
        "Stop, I have a question about my library card and the late fees.",
        RATE,
        length_scale=1.25,
    )
    start = RATE * 2  # the caller starts 2 s into the agent's speech
    outputs: dict[bool, PCM] = {}
    for detect in (True, False):
        playout = PlayoutBuffer(RATE)
        seg = playout.open_segment("u", GREETING)
        await playout.push(seg, speak(GREETING, RATE)[: RATE * 7])
        echo = EchoFilter.for_playout(playout, detector=EchoDetector() if detect else None)
        voice = np.concatenate([np.zeros(start, np.int16), caller])
        out, mics = [], []
        for k in range(voice.size // FRAME):
            mic = _line(np.zeros(FRAME, np.int16), None, voice[k * FRAME : (k + 1) * FRAME])
            mics.append(mic)
            out.append(echo.process(AudioFrame(mic, RATE)).samples)
            playout.pull()
        echo.close()
        outputs[detect] = np.concatenate(out)
        if detect:
            assert echo.verdict is EchoVerdict.CLEAR
    sent = np.concatenate(mics)
    span = slice(start, start + caller.size)
    # With the detector (once the line is judged clear) the caller passes sample for sample.
    assert np.array_equal(outputs[True][span], sent[span])
    # AEC3 alone, with nothing to learn, reworks it during the agent's speech (how much
    # level it takes depends on the build and the CPU: 2.6 to 9 dB measured; the
    # waveform's correlation with what was sent falls to about 0.1).
    assert not np.array_equal(outputs[False][span], sent[span])
    assert np.corrcoef(outputs[False][span], sent[span])[0, 1] < 0.9
    assert level_db(outputs[False][span]) < level_db(caller) - 1.0
