"""What the store keeps of a phone call: From URI and Call-ID, keypad digits, hang-up cause."""

from __future__ import annotations

from agent.config import AgentConfig
from agent.session import VoiceSession
from signaling.recorder import SessionRecorder
from store.store import Store
from tests.fakes import ScriptedLLM, fake_models, feed, silence

CALLER = {"from_uri": "sip:+15551230000@pbx.example", "call_id": "a84b4c76e66710@pbx"}


async def test_a_phone_call_is_recorded_with_its_caller_digits_and_cause(store: Store) -> None:
    config = AgentConfig.load().model_copy(update={"greeting": None})
    config = config.model_copy(update={"dtmf": config.dtmf.model_copy(update={"collect_ms": 0})})
    recorder = SessionRecorder(store, "ses_phone", "sip", CALLER)
    llm = ScriptedLLM(["Connecting you to sales."])
    session = VoiceSession(config, fake_models(llm=llm), sinks=[recorder], session_id="ses_phone")
    async with session:
        session.dtmf("1", 160)
        await feed(session, silence(1.0))
    recorder.ended("caller hung up (BYE)")
    assert await store.writer.flush()
    row = await store.sessions.get("ses_phone")
    assert row is not None
    assert row.transport == "sip" and row.attributes == CALLER
    assert row.end_reason == "caller hung up (BYE)" and row.ended_at is not None
    turns = await store.sessions.turns("ses_phone")
    assert [(t.role, t.text) for t in turns] == [
        ("dtmf", "1"),
        ("user", "The caller pressed 1 on the keypad."),
        ("assistant", "Connecting you to sales."),
    ]
    # the chat context rebuilt from SQL holds the conversation, not the key events
    await store.state.forget("ses_phone")
    assert [m["role"] for m in await store.state.load("ses_phone")] == ["user", "assistant"]
    # a second call of the session adds its attributes and its own end reason
    again = SessionRecorder(store, "ses_phone", "sip", {"call_id": "second@pbx"})
    again.ended("agent hung up")
    assert await store.writer.flush()
    row = await store.sessions.get("ses_phone")
    assert row is not None
    assert row.attributes == {**CALLER, "call_id": "second@pbx"}
    assert row.end_reason == "agent hung up"
