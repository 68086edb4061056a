"""The text end-of-turn model: the real chat model on words, and whole sessions.

Session tests run in lock-step (one 20 ms frame in, the pipeline settles,
the next frame), as in ``test_endofturn.py``: the end of a turn is the
stream time at which its final transcript appeared.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError, ModelLoadError
from agent.llm import ChatMessage
from agent.runtime import AgentModels
from agent.session import VoiceSession
from agent.textturn import TextEndOfTurn, normalize
from agent.warmup import warm_up
from media.frames import PIPELINE_RATE
from tests.fakes import FakeSTT, ScriptedLLM, fake_models, silence, tone
from tests.speech import compose
from tests.test_endofturn import Events, heard_under, hearing_parts, turn_ends, with_model, words

# what the caller has said at a pause inside the turn, and the whole turn
PAIRS = (
    ("what is the capital of", "what is the capital of France?"),
    ("I need to book a table for", "I need to book a table for four people."),
    ("my name is", "my name is John."),
    ("I would like to", "I would like to order a pizza."),
    ("set it for", "set it for seven thirty."),
    ("can you tell me how far", "can you tell me how far away the moon is?"),
)


@pytest.fixture(scope="module")
def text_model() -> Iterator[TextEndOfTurn]:
    model = TextEndOfTurn()
    yield model
    model.close()


# ------------------------------------------------------------------ the model


def test_unfinished_words_score_far_below_the_finished_turn(text_model: TextEndOfTurn) -> None:
    for unfinished, finished in PAIRS:
        low, high = text_model.score_text(unfinished), text_model.score_text(finished)
        assert 0.0 <= low < high <= 1.0, (unfinished, low, high)
        assert high > 3 * low, (unfinished, low, high)


def test_the_transcripts_punctuation_and_case_do_not_count(text_model: TextEndOfTurn) -> None:
    plain = text_model.score_text("what is the capital of france")
    assert text_model.score_text("What is the capital of France?") == pytest.approx(plain)
    assert text_model.score_text("What, is the capital of... France!") == pytest.approx(plain)
    assert normalize("It's  the THIRD of March, 1990.") == "it's the third of march 1990"


def test_a_transcript_heard_going_on_reads_unfinished(text_model: TextEndOfTurn) -> None:
    # Whisper ends a transcript with a comma or an ellipsis where the voice did not fall
    for said in ("press one for sales", "I need milk", "my name is Anna"):
        finished = text_model.score_text(said + ".")
        for going_on in (",", "...", " -", ";"):
            assert text_model.score_text(said + going_on) < finished / 10, (said, going_on)


def test_no_words_score_zero(text_model: TextEndOfTurn) -> None:
    assert text_model.score_text("") == 0.0
    assert text_model.score_text(" ... ?! ") == 0.0


def test_a_kept_prefix_scores_as_a_fresh_evaluation(text_model: TextEndOfTurn) -> None:
    said = "Which city are you calling from?"
    first = text_model.score_text("I am calling from Manchester", said)
    text_model.score_text("I am calling from", said)  # shares the context and three words
    text_model.score_text("something else entirely", "")  # shares nothing
    again = text_model.score_text("I am calling from Manchester", said)
    assert again == pytest.approx(first, rel=1e-3)
    fresh = TextEndOfTurn()
    try:
        assert fresh.score_text("I am calling from Manchester", said) == pytest.approx(
            first, rel=1e-3
        )
    finally:
        fresh.close()


def test_the_prompt_holds_the_agents_last_words_and_the_callers(
    text_model: TextEndOfTurn,
) -> None:
    said = "Welcome! " + "We are open every day. " * 20 + "What is your name?"
    prompt = text_model.prompt("My name is, um", said)
    assert prompt.endswith("<|im_start|>user\nmy name is um")
    context = prompt.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert context.endswith("we are open every day what is your name")
    assert len(context) <= text_model.context_chars
    assert not context.startswith(" ") and "welcome" not in context  # cut at a word
    assert text_model.prompt("hello", "").startswith("<|im_start|>user\n")


def test_a_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        TextEndOfTurn(tmp_path / "nope.gguf")


def test_text_needs_the_speculative_transcript(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("turn:\n  end_of_turn_model: text\n  speculative_stt: false\n")
    with pytest.raises(ConfigError, match="speculative_stt"):
        AgentConfig.load(path)
    path.write_text("turn:\n  end_of_turn_model: text\n  text_turn:\n    check_after_ms: 800\n")
    with pytest.raises(ConfigError, match=r"text_turn\.check_after_ms"):
        AgentConfig.load(path)


# ------------------------------------------------------------------ sessions, a fake model


class ScriptedTextTurn:
    """A ``TextEndOfTurnModel`` answering a fixed score; records what it read."""

    def __init__(self, score: float) -> None:
        self.score = score
        self.read: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def score_text(self, words: str, agent_said: str = "") -> float:
        self.read.append((words, agent_said))
        self.gate.wait(10.0)
        return self.score


def agent(model: str = "text", **text_turn: object) -> AgentConfig:
    """The default agent with the model and these tests' own knobs (asked at 200 ms,
    thresholds 0.5 / 0.01): they test the mechanism, not the tuned defaults."""
    base = AgentConfig.load()
    knobs = {
        "check_after_ms": 200,
        "complete_threshold": 0.5,
        "incomplete_threshold": 0.01,
        **text_turn,
    }
    turn = base.turn.model_copy(
        update={
            "end_of_turn_model": model,
            "end_of_turn_silence_ms": 700,
            "preemptive_reply": False,
            "text_turn": base.turn.text_turn.model_copy(update=knobs),
        }
    )
    return base.model_copy(
        update={
            "greeting": None,
            "turn": turn,
            "stt": base.stt.model_copy(update={"partials": False}),
        }
    )


async def run_fake(
    model: ScriptedTextTurn,
    stt: FakeSTT,
    pcm: np.ndarray[tuple[int], np.dtype[np.int16]],
    history: list[ChatMessage] | None = None,
) -> tuple[Events, list[float]]:
    """A session with fakes and ``model`` fed ``pcm`` in lock-step; its events and the
    stream times of its final transcripts."""
    events = Events()
    models = with_model(model, fake_models(stt=stt))
    try:
        async with VoiceSession(agent(), models, sinks=[events], history=history or []) as session:
            return events, await turn_ends(session, events, pcm)
    finally:
        models.close()


HISTORY = [
    ChatMessage("user", "hello"),
    ChatMessage("assistant", "Hi! Which city are you calling from?"),
]


async def test_fake_reads_the_pause_transcript_after_the_agents_words() -> None:
    model = ScriptedTextTurn(0.9)
    stt = FakeSTT(["Calling from Leeds."], delay=0.05)
    pcm = np.concatenate([silence(0.3), tone(1.0), silence(1.5)])
    events, [ended] = await run_fake(model, stt, pcm, HISTORY)
    assert model.read == [("Calling from Leeds.", "Hi! Which city are you calling from?")]
    assert events.finals() == ["Calling from Leeds."]
    # asked at 200 ms of silence; a finished turn ends there, not at the 700 ms timer
    assert ended - events.speech_end() == pytest.approx(0.2, abs=0.08)


async def test_fake_low_score_stretches_the_wait_past_the_timer() -> None:
    model = ScriptedTextTurn(0.001)
    pcm = np.concatenate([silence(0.3), tone(1.0), silence(1.8)])
    events, [ended] = await run_fake(model, FakeSTT(["I would like to"]), pcm)
    assert len(model.read) == 1
    assert ended - events.speech_end() == pytest.approx(1.2, abs=0.08)


async def test_fake_no_words_in_the_pause_leave_it_to_the_timer() -> None:
    model = ScriptedTextTurn(0.9)
    stt = FakeSTT([""])
    events, _ = await run_fake(model, stt, np.concatenate([silence(0.3), tone(1.0), silence(1.5)]))
    assert model.read == []  # never asked: nothing to read
    assert events.finals() == []  # a turn without words starts nothing
    assert [c.partial for c in stt.calls] == [False]  # the pause's transcript served the turn


async def test_fake_answer_about_a_pause_that_is_over_is_ignored() -> None:
    model = ScriptedTextTurn(0.95)
    stt = FakeSTT(["what time do you open on saturday"])
    events = Events()
    models = with_model(model, fake_models(stt=stt, llm=ScriptedLLM(["At nine."])))
    try:
        async with VoiceSession(agent(), models, sinks=[events]) as session:
            model.gate.clear()  # the model is slow: it answers after the caller goes on
            first = np.concatenate([silence(0.3), tone(0.8), silence(0.4), tone(0.6)])
            assert await turn_ends(session, events, first, transcripts=False) == []
            assert len(model.read) == 1  # asked in the first pause
            model.score = 0.3  # unsure about the second pause: the timer decides
            model.gate.set()  # "done!" about the first pause, which is over
            ends = await turn_ends(session, events, silence(1.5))
    finally:
        models.close()
    assert len(ends) == 1
    assert events.finals() == ["what time do you open on saturday"]
    assert len(model.read) == 2
    ended = first.size / PIPELINE_RATE + ends[0]  # the second feed starts at 0
    assert ended - events.speech_end() == pytest.approx(0.7, abs=0.08)


# ------------------------------------------------------------------ sessions, the real model


@pytest.fixture(scope="module")
def real_parts(models: AgentModels, text_model: TextEndOfTurn) -> Iterator[AgentModels]:
    """Silero VAD, Whisper and the text model; a scripted LLM and a fake voice."""
    yield from hearing_parts(models, text_model)


def real_agent(model: str) -> AgentConfig:
    """The shipped thresholds (tuned by bench/end_of_turn.py), not these tests' own."""
    base = AgentConfig.load()
    config = agent(model)
    return config.model_copy(
        update={"turn": config.turn.model_copy(update={"text_turn": base.turn.text_turn})}
    )


@pytest.mark.slow
async def test_real_model_ends_a_finished_request_sooner_than_the_timer(
    real_parts: AgentModels,
) -> None:
    pcm = compose(0.3, "Could you book a table for two people tonight?", 1.5)
    runs = await heard_under(real_parts, pcm, {m: real_agent(m) for m in ("text", "none")})
    delays = {}
    for model, (events, [ended]) in runs.items():
        assert {"table", "tonight"} <= words(events.finals()[0])
        delays[model] = ended - events.speech_end()
    assert delays["none"] >= 0.65
    assert delays["text"] <= delays["none"] - 0.3


@pytest.mark.slow
async def test_real_model_keeps_a_pause_after_an_unfinished_phrase_inside_the_turn(
    real_parts: AgentModels,
) -> None:
    # a pause the 700 ms timer alone cuts: the words so far read unfinished
    pcm = compose(0.3, "I would like to order", 0.8, "a large pizza with mushrooms.", 2.0)
    runs = await heard_under(real_parts, pcm, {m: real_agent(m) for m in ("text", "none")})
    finals = {model: events.finals() for model, (events, _) in runs.items()}
    assert len(finals["none"]) == 2
    [whole] = finals["text"]
    assert {"order", "pizza"} <= words(whole)  # words of both halves in one turn


async def test_the_configured_text_model_loads_warms_up_and_closes() -> None:
    base = AgentConfig.load()
    config = base.model_copy(
        update={"turn": base.turn.model_copy(update={"end_of_turn_model": "text"})}
    )
    models = AgentModels.load(config)
    try:
        assert isinstance(models.end_of_turn, TextEndOfTurn)
        assert models.end_of_turn_executor is not None
        timings = await warm_up(models, config)
        assert "end_of_turn" in timings
        score = await models.end_of_turn_executor.run(
            models.end_of_turn.score_text, "what is the capital of", ""
        )
        assert 0.0 <= score < config.turn.text_turn.incomplete_threshold
    finally:
        await models.aclose()
