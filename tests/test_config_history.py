"""Agent YAML config and the chat history."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.history import ChatHistory


def test_default_config_loads() -> None:
    config = AgentConfig.load()
    assert config.llm.threads == 1
    assert config.turn.to_settings().end_of_turn_silence_ms == config.turn.end_of_turn_silence_ms


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("llm: [1, 2", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("turn:\n  end_of_turn_silence_ms: 5\n", "end_of_turn_silence_ms"),
        ("vad:\n  onset_threshold: 0.3\n  offset_threshold: 0.6\n", "offset_threshold"),
        ("llm:\n  temprature: 0.3\n", "temprature"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        AgentConfig.load(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        AgentConfig.load(tmp_path / "none.yaml")


def test_history_bounds_merges_and_marks_interruptions() -> None:
    h = ChatHistory("be brief", max_turns=2)
    h.add_user("one")
    h.add_assistant("reply one")
    h.add_user("two")
    h.add_user("and more")  # unanswered user messages merge
    h.add_assistant("reply", interrupted=True)
    h.add_assistant("   ")  # nothing heard: not stored
    h.add_user("three")
    msgs = h.messages()
    assert [m.content for m in msgs] == ["two and more", "reply", "three"]
    ctx = h.context()
    assert ctx[0].role == "system" and ctx[0].content == "be brief"
    assert ctx[2].content == "reply..." and ctx[2].interrupted
