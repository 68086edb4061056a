"""The end-of-turn model: features and scores against Pipecat's reference, and whole sessions.

The reference is the code that ships with the model in the ``pipecat-ai``
wheel: ``_whisper_features.py`` (numpy only) is loaded by path, and
``LocalSmartTurnAnalyzerV3._predict_endpoint``'s few steps (keep the last
8 s, zero-pad at the start, features, ONNX) are repeated here, since its
module needs packages this project does not install.

Session tests run in lock-step (one 20 ms frame in, the pipeline settles,
the next frame), so the model's answer lands at the stream time it was asked
and timings are exact in stream time. They measure the end of a turn as the
stream time at which the final transcript event appeared.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime
import pytest

from agent.config import AgentConfig
from agent.endofturn import (
    EndOfTurnModel,
    SmartTurn,
    TextEndOfTurnModel,
    default_smart_turn_path,
)
from agent.errors import ConfigError, ModelLoadError
from agent.events import AgentEvent, TranscriptEvent, VadEvent
from agent.logmel import N_FRAMES, N_MELS, WINDOW_SAMPLES, log_mel
from agent.runtime import AgentModels
from agent.session import VoiceSession
from media.frames import PCM, PIPELINE_RATE, AudioFrame, FloatPCM
from tests.fakes import FRAME, FakeSTT, FakeTTS, ScriptedLLM, fake_models, silence, tone
from tests.speech import compose, speak
from tests.textnorm import normalize

# ------------------------------------------------------------------ the reference


def _reference_features() -> ModuleType:
    path = default_smart_turn_path().parent.parent / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("smart_turn_reference_features", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    """Pipecat's vendored Whisper feature extractor, loaded by path."""
    return _reference_features()


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    return SmartTurn()


def reference_probability(reference: ModuleType, audio: FloatPCM) -> float:
    """What ``LocalSmartTurnAnalyzerV3._predict_endpoint`` computes for 16 kHz audio."""
    session = onnxruntime.InferenceSession(
        str(default_smart_turn_path()), providers=["CPUExecutionProvider"]
    )
    x = audio[-WINDOW_SAMPLES:]
    if x.size < WINDOW_SAMPLES:
        x = np.pad(x, (WINDOW_SAMPLES - x.size, 0))
    features = reference.compute_whisper_log_mel_features(x, do_normalize=True)
    (probs,) = session.run(None, {"input_features": features[np.newaxis]})
    return float(np.asarray(probs).reshape(-1)[0])


def clips() -> Iterator[tuple[str, FloatPCM]]:
    """Short and long speech (longer than the model's 8 s window), and quiet noise."""
    question = (speak("What is the capital of France?") / 32768).astype(np.float32)
    story = np.concatenate(
        [
            speak(
                "Once upon a time there was a little library by the sea, and every morning "
                "the librarian opened the windows to let the salty air in."
            ),
            speak("Then she sat down and read until the first visitor came."),
        ]
    )
    yield "question", question
    yield "question + 250 ms", np.concatenate([question, np.zeros(4000, np.float32)])
    yield "story (> 8 s)", (story / 32768).astype(np.float32)
    yield "noise", np.random.default_rng(3).normal(0, 0.01, 3 * PIPELINE_RATE).astype(np.float32)


@pytest.mark.parametrize(("name", "audio"), list(clips()), ids=[n for n, _ in clips()])
def test_features_match_the_reference(reference: ModuleType, name: str, audio: FloatPCM) -> None:
    ours = log_mel(audio)
    x = audio[-WINDOW_SAMPLES:]
    theirs = reference.compute_whisper_log_mel_features(
        np.pad(x, (WINDOW_SAMPLES - x.size, 0)), do_normalize=True
    )
    assert ours.shape == theirs.shape == (N_MELS, N_FRAMES)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "audio"), list(clips()), ids=[n for n, _ in clips()])
def test_score_matches_the_reference(
    reference: ModuleType, smart_turn: SmartTurn, name: str, audio: FloatPCM
) -> None:
    ours = smart_turn.score(audio)
    assert 0.0 <= ours <= 1.0
    assert ours == pytest.approx(reference_probability(reference, audio), abs=1e-4)


def test_model_file_is_found_without_importing_pipecat(tmp_path: Path) -> None:
    path = default_smart_turn_path()
    assert path.name == "smart-turn-v3.2-cpu.onnx" and path.is_file()
    assert "pipecat" not in sys.modules  # its __init__ needs packages we do not install
    with pytest.raises(ModelLoadError, match="missing"):
        SmartTurn(tmp_path / "absent.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        SmartTurn(tmp_path / "broken.onnx")


def test_config_names_the_model_and_checks_the_knobs(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "turn:\n  end_of_turn_model: smart_turn\n  smart_turn:\n    check_after_ms: 150\n"
    )
    turn = AgentConfig.load(path).turn
    settings = turn.to_settings()
    assert settings.check is not None and settings.check.after_ms == 150
    assert turn.to_settings(model=False).check is None
    for bad in (
        "turn:\n  end_of_turn_model: maybe\n",
        "turn:\n  end_of_turn_model: smart_turn\n  smart_turn:\n    check_after_ms: 800\n",
        "turn:\n  smart_turn:\n    complete_threshold: 0.2\n    incomplete_threshold: 0.5\n",
        "turn:\n  end_of_turn_model: smart_turn\n  smart_turn:\n    incomplete_silence_ms: 300\n",
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            AgentConfig.load(path)


# ------------------------------------------------------------------ sessions, a fake model


class ScriptedEndOfTurn:
    """An ``EndOfTurnModel`` answering scripted scores; ``gate`` holds each answer.

    It runs on the session's inference thread, so the gate is a thread event.
    """

    def __init__(self, scores: Sequence[float]) -> None:
        self.scores = list(scores)
        self.gate = threading.Event()
        self.gate.set()
        self.heard_s: list[float] = []

    def score(self, audio: FloatPCM) -> float:
        self.heard_s.append(audio.size / PIPELINE_RATE)
        self.gate.wait(10.0)
        return self.scores[min(len(self.heard_s), len(self.scores)) - 1]


class Events:
    def __init__(self) -> None:
        self.all: list[AgentEvent] = []

    def __call__(self, event: AgentEvent) -> None:
        self.all.append(event)

    def finals(self) -> list[str]:
        return [e.text for e in self.all if isinstance(e, TranscriptEvent) and e.final]

    def speech_end(self) -> float:
        """Stream time of the last end of speech the VAD reported."""
        ends = [e.stream_time for e in self.all if isinstance(e, VadEvent) and not e.speaking]
        return ends[-1]


def agent(model: str = "smart_turn", **smart_turn: object) -> AgentConfig:
    """The default agent with the model on and thresholds of these tests' own (0.9 / 0.2):
    they test the mechanism with the real model, not the tuned defaults."""
    base = AgentConfig.load()
    knobs = {"complete_threshold": 0.9, "incomplete_threshold": 0.2, **smart_turn}
    turn = base.turn.model_copy(
        update={
            "end_of_turn_model": model,
            "end_of_turn_silence_ms": 700,
            "smart_turn": base.turn.smart_turn.model_copy(update=knobs),
        }
    )
    return base.model_copy(
        update={
            "greeting": None,
            "turn": turn,
            "stt": base.stt.model_copy(update={"partials": False}),
        }
    )


async def turn_ends(
    session: VoiceSession, events: Events, pcm: PCM, *, transcripts: bool = True
) -> list[float]:
    """Feed ``pcm`` in lock-step; the stream times at which final transcripts appeared."""
    times: list[float] = []
    seen = 0
    for i in range(0, pcm.size, FRAME):
        session.push_audio(AudioFrame(pcm[i : i + FRAME], PIPELINE_RATE))
        await session.wait_settled(transcripts=transcripts)
        session.playout.pull()
        finals = events.finals()
        times += [(i + FRAME) / PIPELINE_RATE] * (len(finals) - seen)
        seen = len(finals)
    return times


def with_model(
    model: EndOfTurnModel | TextEndOfTurnModel, models: AgentModels | None = None
) -> AgentModels:
    """``models`` (fakes by default) with ``model`` as the end-of-turn model."""
    return dataclasses.replace(
        models or fake_models(), end_of_turn=model, end_of_turn_executor=None
    )


async def test_fake_high_score_ends_the_turn_at_the_check() -> None:
    scorer = ScriptedEndOfTurn([0.95])
    events = Events()
    models = with_model(scorer)
    pcm = np.concatenate([silence(0.3), tone(1.0), silence(1.5)])
    try:
        async with VoiceSession(agent(), models, sinks=[events]) as session:
            [ended] = await turn_ends(session, events, pcm)
    finally:
        models.close()
    assert len(scorer.heard_s) == 1
    # the model heard the utterance with its pre-roll and ~200 ms of the pause
    assert scorer.heard_s[0] == pytest.approx(1.0 + 0.2 + 0.2, abs=0.12)
    assert ended - events.speech_end() == pytest.approx(0.2, abs=0.08)


async def test_fake_low_score_waits_out_a_pause_the_timer_would_cut() -> None:
    pcm = np.concatenate([silence(0.3), tone(0.8), silence(0.95), tone(0.8), silence(2.0)])
    events = Events()
    models = with_model(ScriptedEndOfTurn([0.05, 0.05]))
    try:
        async with VoiceSession(agent(), models, sinks=[events]) as session:
            ends = await turn_ends(session, events, pcm)
    finally:
        models.close()
    assert len(ends) == 1
    assert ends[0] - events.speech_end() == pytest.approx(1.2, abs=0.08)
    plain = Events()
    async with VoiceSession(agent("none"), fake_models(), sinks=[plain]) as session:
        assert len(await turn_ends(session, plain, pcm)) == 2  # the timer alone cuts it


async def test_fake_answer_that_comes_after_the_caller_resumed_is_ignored() -> None:
    scorer = ScriptedEndOfTurn([0.99, 0.5])
    stt = FakeSTT(["what time do you open on saturday"])
    events = Events()
    models = with_model(scorer, fake_models(stt=stt, llm=ScriptedLLM(["At nine."]), tts=FakeTTS()))
    try:
        async with VoiceSession(agent(), models, sinks=[events]) as session:
            scorer.gate.clear()  # the model is slow: it answers after the caller goes on
            first = np.concatenate([silence(0.3), tone(0.8), silence(0.4), tone(0.6)])
            assert await turn_ends(session, events, first, transcripts=False) == []
            assert len(scorer.heard_s) == 1  # asked in the pause
            scorer.gate.set()  # "done!", about a pause that is over
            ends = await turn_ends(session, events, silence(1.5))
    finally:
        models.close()
    assert len(ends) == 1
    assert events.finals() == ["what time do you open on saturday"]
    assert len(scorer.heard_s) == 2  # asked again in the second pause: unsure, the timer ended it
    ended = first.size / PIPELINE_RATE + ends[0]  # the second feed starts at 0
    assert ended - events.speech_end() == pytest.approx(0.7, abs=0.08)


# ------------------------------------------------------------------ sessions, the real model


def hearing_parts(
    models: AgentModels, model: EndOfTurnModel | TextEndOfTurnModel
) -> Iterator[AgentModels]:
    """For a module fixture: the real Silero VAD and Whisper of ``models`` with ``model``
    as the end-of-turn model; a scripted LLM and a fake voice (not measured)."""
    parts = AgentModels(vad=models.vad, stt=models.stt, llm=ScriptedLLM(["Sure."]), tts=FakeTTS())
    parts = with_model(model, parts)
    yield parts
    parts.vad_executor.shutdown()
    assert parts.end_of_turn_executor is not None
    parts.end_of_turn_executor.shutdown()


async def heard_under(
    parts: AgentModels, pcm: PCM, configs: Mapping[str, AgentConfig]
) -> dict[str, tuple[Events, list[float]]]:
    """``pcm`` fed to one session per config: each one's events and turn-end times."""
    out = {}
    for name, config in configs.items():
        events = Events()
        async with VoiceSession(config, parts, sinks=[events]) as session:
            out[name] = (events, await turn_ends(session, events, pcm))
    return out


@pytest.fixture(scope="module")
def real_parts(models: AgentModels, smart_turn: SmartTurn) -> Iterator[AgentModels]:
    """Silero VAD, Whisper and Smart Turn; a scripted LLM and a fake voice (not measured)."""
    yield from hearing_parts(models, smart_turn)


def words(text: str) -> set[str]:
    return set(normalize(text).split())


@pytest.mark.slow
async def test_real_model_ends_a_finished_question_sooner_than_the_timer(
    real_parts: AgentModels,
) -> None:
    pcm = compose(0.3, "What is the capital of France?", 1.5)
    runs = await heard_under(real_parts, pcm, {m: agent(m) for m in ("smart_turn", "none")})
    delays = {}
    for model, (events, [ended]) in runs.items():
        assert {"capital", "france"} <= words(events.finals()[0])
        delays[model] = ended - events.speech_end()
    assert delays["none"] >= 0.65
    assert delays["smart_turn"] <= delays["none"] - 0.3


@pytest.mark.slow
async def test_real_model_keeps_a_hesitation_pause_inside_the_turn(
    real_parts: AgentModels,
) -> None:
    # a pause the 700 ms timer alone cuts: the model hears the "um" and waits longer
    pcm = compose(0.3, "My favourite colour is, um,", 0.75, "dark blue.", 2.0)
    runs = await heard_under(real_parts, pcm, {m: agent(m) for m in ("smart_turn", "none")})
    finals = {model: events.finals() for model, (events, _) in runs.items()}
    assert len(finals["none"]) == 2
    [whole] = finals["smart_turn"]
    assert {"my", "blue"} <= words(whole)  # words of both halves in one turn
