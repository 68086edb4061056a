"""The end-of-turn model: does the caller's audio so far sound like a finished turn?

``EndOfTurnModel`` is the protocol of a model that hears: ``score(audio)`` takes the current
utterance (16 kHz float audio, its trailing silence included: the model
weighs how long the caller has been quiet) and returns the probability
that the caller is done. It is blocking and stateless, so one instance is
shared by every call of the process and runs on an inference thread.

``SmartTurn`` is Smart Turn v3.2 (Pipecat's 8M-parameter Whisper-encoder
classifier, BSD-2), the ONNX file that ships inside the ``pipecat-ai`` wheel,
run through onnxruntime on one thread over ``agent.logmel`` features.

``TextEndOfTurnModel`` is the protocol of a model that reads the caller's
words instead (the pause's speculative transcript): ``agent.textturn``.

The turn detector (``agent.turns``) decides what a score means; the
listener runs the model off the event loop.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime

from agent.errors import ModelLoadError
from agent.logmel import N_FRAMES, N_MELS, log_mel
from media.frames import FloatPCM

SMART_TURN_FILE = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")
"""Where Smart Turn v3.2 lies inside the ``pipecat`` package."""

_PROVIDER = "smart-turn"


@runtime_checkable
class EndOfTurnModel(Protocol):
    """Scores whether an utterance is a finished turn (shared by every call)."""

    def score(self, audio: FloatPCM) -> float:
        """Probability in 0..1 that the caller has finished; blocking (run it on a thread)."""
        ...


@runtime_checkable
class TextEndOfTurnModel(Protocol):
    """Reads whether the caller's words so far are a finished turn (``agent.textturn``)."""

    def score_text(self, words: str, agent_said: str = "") -> float:
        """Probability in 0..1 that ``words`` end the caller's message, after the agent
        said ``agent_said``; blocking (run it on a thread)."""
        ...


def default_smart_turn_path() -> Path:
    """Smart Turn v3.2 inside the installed ``pipecat-ai`` wheel.

    Found through the package's import spec, without importing ``pipecat``
    (its ``__init__`` needs dependencies this project does not install).
    Raises ``ModelLoadError`` when the wheel is not installed.
    """
    spec = importlib.util.find_spec("pipecat")
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        candidate = Path(location).joinpath(*SMART_TURN_FILE)
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        _PROVIDER,
        "smart-turn-v3.2-cpu.onnx not found: install the pipecat-ai wheel (no deps), "
        "set turn.smart_turn.model_path, or set turn.end_of_turn_model: none",
    )


class SmartTurn:
    """Smart Turn v3.2 through onnxruntime, one intra-op thread.

    ``InferenceSession.run`` is thread-safe and the model keeps no state, so
    calls of different sessions may score concurrently.
    """

    def __init__(self, model_path: Path | None = None) -> None:
        path = model_path or default_smart_turn_path()
        if not path.is_file():
            raise ModelLoadError(_PROVIDER, f"model file missing at {path}")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(_PROVIDER, f"cannot load {path.name}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape)[1:] != [N_MELS, N_FRAMES]:
            shapes = [(i.name, i.shape) for i in inputs]
            raise ModelLoadError(_PROVIDER, f"unexpected model inputs {shapes}")
        self._input = inputs[0].name
        self.path = path

    def score(self, audio: FloatPCM) -> float:
        """Probability that ``audio`` (16 kHz float, the last 8 s count) ends a turn."""
        features = log_mel(audio)[np.newaxis]
        (probs,) = self._session.run(None, {self._input: features})
        return float(np.asarray(probs).reshape(-1)[0])
