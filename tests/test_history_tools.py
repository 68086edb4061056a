"""Chat history with tool calls: pairs stay together through trimming, restore and the store."""

from __future__ import annotations

import pytest

from agent.history import ChatHistory
from agent.llm import ChatMessage, ToolCall, ToolCallAssembler, ToolCallDelta
from signaling.recorder import messages_from_json, messages_to_json

PLAY = ToolCall("call_1", "play", '{"title": "Shape of You"}')


def test_trimming_drops_whole_turns_with_their_tool_pairs() -> None:
    h = ChatHistory("sys", max_turns=2)
    h.add_user("play shape of you")
    h.add_tool_exchange([PLAY], {"call_1": "playing"})
    h.add_assistant("Playing Shape of You.")
    h.add_user("pause")
    h.add_assistant("Paused.")
    h.add_user("louder")
    roles = [m.role for m in h.messages()]
    # the first turn went whole: no orphan tool result or call is left at the front
    assert roles == ["user", "assistant", "user"]
    assert h.messages()[0].content == "pause"


def test_tool_exchange_needs_every_result() -> None:
    h = ChatHistory("sys")
    h.add_user("play")
    with pytest.raises(ValueError, match="call_1"):
        h.add_tool_exchange([PLAY], {})
    assert [m.role for m in h.messages()] == ["user"]


def test_restore_drops_unpaired_calls_and_results() -> None:
    orphan_result = ChatMessage("tool", "done", tool_call_id="call_9", name="pause")
    unanswered = ChatMessage("assistant", "", tool_calls=(ToolCall("call_2", "like"),))
    h = ChatHistory("sys")
    h.restore(
        [
            orphan_result,
            ChatMessage("user", "play shape of you"),
            ChatMessage("assistant", "", tool_calls=(PLAY,)),
            ChatMessage("tool", "playing", tool_call_id="call_1", name="play"),
            ChatMessage("assistant", "Playing it."),
            ChatMessage("user", "like it"),
            unanswered,
        ]
    )
    roles = [(m.role, m.tool_call_id or "") for m in h.messages()]
    assert roles == [
        ("user", ""),
        ("assistant", ""),
        ("tool", "call_1"),
        ("assistant", ""),
        ("user", ""),
    ]
    assert h.messages()[1].tool_calls == (PLAY,)


def test_store_json_round_trip_keeps_tool_calls() -> None:
    h = ChatHistory("sys")
    h.add_user("play shape of you")
    h.add_tool_exchange([PLAY], {"call_1": "playing"}, text="One moment.")
    h.add_assistant("Playing.", interrupted=True)
    data = messages_to_json(h.messages())
    back = messages_from_json(data)
    assert back == h.messages()
    # malformed entries from an older or tampered store are skipped, not fatal
    assert messages_from_json([{"role": "tool", "content": "x"}, {"role": "x"}, "junk"]) == []  # type: ignore[list-item]


def test_tool_call_deltas_assemble_in_index_order() -> None:
    calls = ToolCallAssembler()
    assert not calls
    calls.feed(ToolCallDelta(1, id="b", name="pause"))
    calls.feed(ToolCallDelta(0, id="a", name="play", arguments='{"title": '))
    calls.feed(ToolCallDelta(0, arguments='"Hello"}'))
    out = calls.calls()
    assert [c.name for c in out] == ["play", "pause"]
    assert out[0].parsed_arguments() == {"title": "Hello"}
    assert out[1].parsed_arguments() == {}
    nameless = ToolCallAssembler()
    nameless.feed(ToolCallDelta(0, arguments="{}"))
    with pytest.raises(ValueError, match="no name"):
        nameless.calls()
    with pytest.raises(ValueError, match="not JSON"):
        ToolCall("x", "play", "{oops").parsed_arguments()


def test_a_reserved_slot_takes_a_late_exchange_before_the_words_that_followed() -> None:
    h = ChatHistory("sys")
    h.add_user("play hello")
    h.add_assistant("Sure,", interrupted=True)
    slot = h.reserve()  # the reply was cut while its action still ran
    assert slot.open and [m.role for m in h.messages()] == ["user", "assistant"]
    h.add_user("what time is it")
    h.add_tool_exchange([PLAY], {"call_1": "playing"}, at=slot)
    assert not slot.open
    assert [(m.role, m.content) for m in h.context()] == [
        ("system", "sys"),
        ("user", "play hello"),
        ("assistant", "Sure,..."),
        ("assistant", ""),
        ("tool", "playing"),
        ("user", "what time is it"),
    ]
    h.add_tool_exchange([PLAY], {"call_1": "again"}, at=slot)  # used up: nothing more goes in
    assert [m.content for m in h.messages() if m.role == "tool"] == ["playing"]


def test_an_open_slot_keeps_the_turns_apart_and_a_released_one_joins_them() -> None:
    h = ChatHistory("sys")
    h.add_user("play hello")
    slot = h.reserve()  # the reply said nothing before its call
    h.add_user("actually stop")
    # while the action runs, the caller's new words are a turn of their own ...
    assert [m.content for m in h.messages()] == ["play hello", "actually stop"]
    h.release(slot)  # ... and when nothing completed, the slot was never there
    assert [(m.role, m.content) for m in h.messages()] == [("user", "play hello actually stop")]
    h.release(slot)  # idempotent
    h.add_tool_exchange([PLAY], {"call_1": "late"}, at=slot)
    assert [m.role for m in h.messages()] == ["user"]


def test_a_slot_trimmed_with_its_turn_takes_nothing() -> None:
    h = ChatHistory("sys", max_turns=1)
    h.add_user("play hello")
    slot = h.reserve()
    h.add_user("pause")  # the first turn is trimmed, the slot with it
    assert not slot.open
    h.add_tool_exchange([PLAY], {"call_1": "playing"}, at=slot)
    assert [(m.role, m.content) for m in h.messages()] == [("user", "pause")]
