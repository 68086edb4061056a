"""The history as a stable prompt prefix: block trims and the request of a held reply."""

from __future__ import annotations

import pytest

from agent.config import LLMConfig
from agent.history import ChatHistory


def conversation(history: ChatHistory, turns: range) -> None:
    for i in turns:
        history.add_user(f"question {i}")
        history.add_assistant(f"answer {i}")


def test_block_trim_drops_several_turns_at_once_and_keeps_the_prefix_between() -> None:
    h = ChatHistory("sys", max_turns=4, trim_turns=2)
    conversation(h, range(4))
    h.add_user("question 4")  # a fifth turn: the two oldest go
    assert [m.content for m in h.messages() if m.role == "user"] == [
        "question 2",
        "question 3",
        "question 4",
    ]
    before = h.context()
    h.add_assistant("answer 4")
    h.add_user("question 5")  # within the bound again: nothing dropped, the prefix stays
    after = h.context()
    assert after[: len(before)] == before
    h.add_assistant("answer 5")
    h.add_user("question 6")  # the next trim
    assert [m.content for m in h.messages() if m.role == "user"] == [
        "question 4",
        "question 5",
        "question 6",
    ]


def test_trim_of_one_keeps_the_last_turns() -> None:
    h = ChatHistory("sys", max_turns=2)
    conversation(h, range(3))
    h.add_user("question 3")
    assert [m.content for m in h.messages() if m.role == "user"] == ["question 2", "question 3"]


def test_context_with_user_is_the_next_context_without_changing_the_history() -> None:
    h = ChatHistory("sys", max_turns=2, trim_turns=1)
    conversation(h, range(2))
    h.add_user("unanswered")  # a reply the caller heard nothing of: the next words merge
    stored = h.messages()
    ahead = h.context_with_user("and more")
    assert h.messages() == stored
    h.add_user("and more")
    assert ahead == h.context()
    assert ahead[-1].content == "unanswered and more"
    assert [m.content for m in ahead[1:3]] == ["question 1", "answer 1"]  # trimmed alike


def test_trim_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="trim_turns"):
        ChatHistory("sys", max_turns=2, trim_turns=3)
    with pytest.raises(ValueError, match="history_trim_turns"):
        LLMConfig(max_history_turns=2, history_trim_turns=3)
